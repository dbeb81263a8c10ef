"""The content of a search's report page, written to `report.md` and a self-contained `report.html`.

It opens with the winner and why it won, then the leaderboard, the learning curves, where
ASHA stopped trials, parameter importance, and the winner once on test/. The plots are PNGs
in `OUT/plots/`; the HTML carries them inline (data URIs), so it is one file to send.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.report import plots
from search.report.latency import chosen_over_best, latency_blocks, leaderboard_columns, selection_text
from search.report.metrics import classification, param_importances
from search.report.render import Block, Heading, Para, Picture, Table, Verdict, to_html, to_markdown
from search.report.stored import SearchFacts, StoredRun, trial_history
from search.report.table import param_columns, save, time_split, trial_table, with_serving
from search.state.names import BEST_DIR, PLOTS_DIR, PREDICTIONS_FILE, REPORT_CSV, REPORT_HTML, REPORT_MD, REPORT_PARQUET
from trainables.archs import ARCHS

SHOWN_TRIALS = 30
SHOWN_ERROR_CHARS = 80
MIN_SHOWN_IMPORTANCE = 0.005  # smaller bars are invisible; they are named in the caption
# Shown on the page; report.csv has every column (train_acc, train_loss, startup_s, ...).
METRICS = ("val_acc", "val_loss")
FREEZE_WORDS = {"all": "frozen", "partial": "partly unfrozen", "none": "trained whole"}
WEIGHTS_WORDS = {"imagenet": "ImageNet weights", "none": "random initial weights"}


def _fmt(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}"
    return str(value)


def _asha_rungs(facts: SearchFacts) -> list[int]:
    # ASHA compares trials at grace_period * reduction_factor**k epochs, below max_epochs.
    rungs, epoch = [], facts.grace_period_epochs
    while epoch < facts.max_epochs:
        rungs.append(epoch)
        epoch *= max(2, facts.reduction_factor)
    return rungs


def describe_arch(hparams: dict[str, Any]) -> str:
    """The trained architecture in words, from the table of architectures: "small_cnn (from
    scratch)", "resnet50_frozen (resnet50 backbone, frozen, ImageNet weights)"."""
    name, weights = hparams.get("arch"), WEIGHTS_WORDS.get(hparams.get("weights"))
    arch = ARCHS.get(name)
    if arch is None:  # an older run's architecture, no longer in the table
        return f"{name} ({weights})" if weights else str(name)
    if not arch.pretrained:
        return f"{name} (from scratch)"
    trained = FREEZE_WORDS[arch.freeze]
    if arch.freeze == "partial" and hparams.get("unfrozen_blocks") is not None:
        trained = f"top {hparams['unfrozen_blocks']} of {arch.blocks} blocks trained"
    return f"{name} ({', '.join(p for p in (f'{arch.family} backbone', trained, weights) if p)})"


def _params_text(hparams: dict[str, object]) -> str:
    # The architecture and its weights are named by describe_arch.
    return ", ".join(f"{name} `{_fmt(value)}`" for name, value in hparams.items()
                     if value is not None and name not in ("arch", "weights"))


def _verdict(frame: pd.DataFrame, run: StoredRun, importances: dict[str, float] | None) -> Verdict:
    facts, objective = run.facts, run.facts.objective
    counts = frame["status"].value_counts()
    ran = (f"{len(frame)} trials ran: {counts.get('completed', 0)} completed all {facts.max_epochs} epochs, "
           f"{counts.get('early_stopped', 0)} stopped early by ASHA, {counts.get('error', 0)} errored.")
    if run.best is None:
        return Verdict("No trial produced a model", [ran, f"See the error column of the leaderboard ({REPORT_CSV})."])
    best, metrics = run.best, run.best["metrics"]
    position = int(np.flatnonzero(frame["trial_id"] == best["trial_id"])[0])
    word = "highest" if facts.mode == "max" else "lowest"
    why = f"**{objective} {metrics[objective]:.4g}** at epoch {best['epoch']}"
    others = frame.drop(index=position)[objective].dropna()
    if (best.get("ensemble") or {}).get("exported"):  # the ensemble's item says what it is made of
        why = f"**{objective} {metrics[objective]:.4g}** on val for the ensemble."
    elif chosen_over_best(best):  # select= exported a faster trial: the next item says why
        why += "."
    else:
        why += f": the {word} {objective} of all {len(frame)} trials"
        if len(others):
            runner_up = frame.loc[others.index[0]]
            name = f"trial `{runner_up['trial_id']}` (#{runner_up['trial_number']})"
            margin = metrics[objective] - runner_up[objective]
            why += (f"; tied with {name}, and ties go to the earlier trial." if margin == 0 else
                    f"; runner-up {name} had {runner_up[objective]:.4g} ({margin:+.3g}).")
    items = [why,
             f"Test accuracy **{metrics['test_acc']:.4g}** on {best['test_images']} test images (test/ was used once, "
             "for this model only; it never steered the search).",
             f"Parameters: {_params_text(best['hparams'])}.", ran]
    if selection_text(best):
        items.insert(1, selection_text(best))
    if ensemble_text(best, objective):
        items.insert(1, ensemble_text(best, objective))
    if importances:
        top = ", ".join(f"{name} ({value:.2f})" for name, value in list(importances.items())[:3])
        items.append(f"Parameters that mattered most (Optuna importance): {top}.")
    items.append(f"Exported to `{BEST_DIR}/`; load it with "
                 "`from search import load_best; load_best(OUT).predict(paths)`.")
    recipe = frame.at[position, "recipe"]
    label = f", recipe {recipe}" if pd.notna(recipe) else ""
    ensemble = best.get("ensemble") or {}
    if ensemble.get("exported"):
        members = len(ensemble["members"])
        return Verdict(f"Winner: an ensemble of {members} trials led by trial {best['trial_id']} "
                       f"(#{best['trial_number']}{label}), {describe_arch(best['hparams'])}", items)
    title = "Chosen" if chosen_over_best(best) else "Winner"
    return Verdict(f"{title}: trial {best['trial_id']} (#{best['trial_number']}{label}), "
                   f"{describe_arch(best['hparams'])}", items)


def ensemble_text(best: dict[str, Any], objective: str) -> str | None:
    """What the ensemble of the top trials gave (`search.best.combine`): its members and weights
    and its val figures beside the best trial's, or why it was not kept; None when not tried."""
    ensemble = best.get("ensemble")
    if not ensemble:
        return None
    if not ensemble.get("kept") or ensemble.get("val_loss") is None:
        return f"An ensemble of the top {len(ensemble['candidates'])} trials: {ensemble['reason']}."
    members = ", ".join(f"`{m['trial_id']}` ({m['weight']:.2g})" for m in ensemble["members"])
    held = (f"on held-out val folds, loss {ensemble['held_out_loss']:.4g} against "
            f"{ensemble['single_held_out_loss']:.4g} and accuracy {ensemble['held_out_acc']:.4g} against "
            f"{ensemble['single_held_out_acc']:.4g}")
    figures = (f"val loss {ensemble['val_loss']:.4g} against the best trial's {ensemble['single_val_loss']:.4g} "
               f"(both calibrated), val accuracy {ensemble['val_acc']:.4g} against {ensemble['single_val_acc']:.4g}; "
               f"{held}")
    single = next((row.get("batch1_p50_ms") for row in best.get("serving_top_k") or []
                   if row.get("trial_id") == ensemble["candidates"][0]), None)
    mine = ((best.get("serving") or {}).get("onnxruntime_cpu") or {}).get("batch1_p50_ms") if ensemble.get(
        "exported") else (ensemble.get("serving") or {}).get("batch1_p50_ms")
    cost = f"; batch-1 p50 {mine:.3g} ms against the best trial's {single:.3g} ms" if mine and single else ""
    if ensemble.get("exported"):
        return f"**Exported: the ensemble** of trials {members} (weights chosen on val): {figures}{cost}."
    return (f"The ensemble of trials {members} beat the best trial ({figures}{cost}) but was not exported: "
            f"the select rule chose a faster model.")


def _leaderboard(frame: pd.DataFrame, objective: str) -> pd.DataFrame:
    shown = frame.head(SHOWN_TRIALS)
    metrics = [objective, *[m for m in METRICS if m != objective]]
    params = param_columns(frame, varied=True)
    view = pd.DataFrame({"rank": range(1, len(shown) + 1), "trial": shown["trial_id"], "#": shown["trial_number"],
                         "recipe": shown["recipe"], "status": shown["status"], "epochs": shown["epochs"]})
    for column in [*metrics, "train_time_s"]:
        view[column] = shown[column].map(_fmt)
    for column in params:  # 3 digits: enough to tell trials apart, and the table fits a screen
        view[column.removeprefix("param.")] = shown[column].map(lambda v: _fmt(v, 3))
    for label, values in leaderboard_columns(shown).items():
        view[label] = values
    for column in ("error", "note"):
        view[column] = shown.get(column, pd.Series(None, index=shown.index)).map(
            lambda e: e[:SHOWN_ERROR_CHARS] if isinstance(e, str) else None)
    # Columns empty on every shown row (no recipes, no errors, no notes) only take room.
    return view.drop(columns=[c for c in ("recipe", "error", "note") if view[c].isna().all()]).map(_fmt)


def _constant_params(frame: pd.DataFrame) -> list[Block]:
    shared = param_columns(frame, varied=False)
    if not shared:
        return []
    values = ", ".join(f"{c.removeprefix('param.')} `{_fmt(frame[c].iloc[0])}`" for c in shared)
    return [Para(f"The same in every trial (not shown above): {values}.")]


def _test_blocks(run: StoredRun, plots_dir: Path) -> list[Block]:
    classes = run.facts.classes
    predictions = run.predictions
    index = {name: i for i, name in enumerate(classes)}
    true = predictions["true"].map(index).to_numpy()
    predicted = predictions["predicted"].map(index).to_numpy()
    confusion, per_class = classification(true, predicted, classes)
    right = int((true == predicted).sum())
    blocks: list[Block] = [
        Heading("The winner on test/"),
        Para(f"Accuracy **{run.best['metrics']['test_acc']:.4g}** ({right} of {len(predictions)} test images right; "
             f"test loss {run.best['metrics']['test_loss']:.4g}). Every image's probabilities are in "
             f"`{PREDICTIONS_FILE}`."),
        Picture(plots.confusion_heatmap(confusion, classes, plots_dir / "confusion_matrix.png"),
                "Confusion matrix: rows are the true classes, columns the predictions."),
        Table(per_class.assign(support=per_class["support"].astype(int)).map(_fmt)),
        *_calibration_blocks(run, plots_dir),
        *_serving_blocks(run),
    ]
    if run.grid is not None and len(run.grid[0]):
        indices, images = run.grid
        rows = predictions.iloc[indices]
        blocks.append(Picture(
            plots.image_grid(images, list(rows["true"]), list(rows["predicted"]), list(rows["probability"]),
                             plots_dir / "test_images.png"),
            f"{len(indices)} of the {len(predictions)} test images, in test-set order: mistakes (red title and "
            "frame; up to half of those shown) and correct ones from every class, each with its true class, the "
            "prediction and the prediction's probability."))
    return blocks


def _serving_blocks(run: StoredRun) -> list[Block]:
    serving = (run.best or {}).get("serving")
    if not serving:
        return []  # a run stored before the serving cost was measured
    cpu = serving.get("onnxruntime_cpu", {})
    sizes = f"{serving['parameters']:,} parameters, `model.pt` {serving['model_pt_bytes'] / 1e6:.1f} MB"
    if "onnx_bytes" in serving:
        sizes += f", `model.onnx` {serving['onnx_bytes'] / 1e6:.1f} MB"
    if "error" in cpu:
        return [Para(f"Serving cost: {sizes}; no onnxruntime timing ({cpu['error']}).")]
    return [Para(f"Serving cost: {sizes}. With onnxruntime on this machine's CPU ({cpu['cpus']} CPUs, "
                 f"{cpu['cpu']}): batch 1 in **{cpu['batch1_p50_ms']:.1f} ms** (p50; p95 {cpu['batch1_p95_ms']:.1f} "
                 f"ms), batch 32 at **{cpu['batch32_images_per_s']:,.0f} images/s** (in `best/meta.json`, `serving`).")]


def _calibration_blocks(run: StoredRun, plots_dir: Path) -> list[Block]:
    calibration = (run.best or {}).get("calibration")
    if not calibration:
        return []  # a run stored before calibration
    return [Para(f"Probabilities are calibrated: the logits are divided by a temperature of "
                 f"**{calibration['temperature']:.3g}**, fitted on the val split (in `best/meta.json`; "
                 f"`load_best` and `search.predict` apply it). Expected calibration error on test/: "
                 f"{calibration['test_ece_before']:.3f} before, **{calibration['test_ece_after']:.3f}** after."
                 + _tta_text((run.best or {}).get("tta"))),
            Picture(plots.reliability_diagram(calibration["reliability_before"], calibration["reliability_after"],
                                              plots_dir / "reliability.png"),
                    "Reliability on test/: accuracy against confidence, per bin, before and after the temperature.")]


def _tta_text(tta: dict[str, Any] | None) -> str:
    if not tta or "val_loss_plain" not in tta:
        return ""
    verdict = "kept: predictions average each image with its mirror" if tta["mode"] else "not kept"
    return (f" Test-time augmentation by mirroring: val loss {tta['val_loss_plain']:.4g} without, "
            f"{tta['val_loss_flip']:.4g} with; {verdict}.")


def _search_blocks(frame: pd.DataFrame, run: StoredRun, out: Path, plots_dir: Path,
                   importances: dict[str, float] | None, importance_note: str) -> list[Block]:
    facts, objective = run.facts, run.facts.objective
    best_id = run.best["trial_id"] if run.best else None
    blocks: list[Block] = []
    if best_id is not None:
        history = trial_history(run.history, best_id)
        blocks += [Heading("Learning curves of the winner"),
                   Picture(plots.learning_curves(history, f"trial {best_id}: accuracy and loss per epoch",
                                                 plots_dir / "best_learning_curves.png"),
                           "Training (dashed) and validation (solid) accuracy and loss per epoch. Training "
                           "metrics are averaged over the epoch's batches (augmented when `augment` > 0); "
                           "validation is measured after each epoch, never augmented.")]
    if not run.history.empty:
        blocks += [Heading("Every trial, and where ASHA stopped it"),
                   Picture(plots.trial_curves(run.history, frame, objective, run.best, _asha_rungs(facts),
                                              facts.max_epochs, plots_dir / "trial_curves.png"),
                           f"{objective} per epoch of every trial. A line ends where its trial ended: a circle "
                           "if it ran all epochs, a cross where ASHA stopped it, a square on an error; the star is the "
                           "winner's best epoch, the model exported. ASHA "
                           "compares trials at the dotted epochs and stops the weaker ones.")]
    blocks.append(Heading("Which parameters mattered"))
    if importances:
        shown = {name: value for name, value in importances.items() if value >= MIN_SHOWN_IMPORTANCE}
        small = [name for name in importances if name not in shown]
        notes = (f" Below {MIN_SHOWN_IMPORTANCE}: {', '.join(small)}." if small else "") + \
            (f" {importance_note}" if importance_note else "")
        blocks.append(Picture(plots.importance_bars(shown, plots_dir / "param_importance.png"),
                              "Optuna's parameter importance (its default evaluator) over the study's finished "
                              f"trials, on each trial's best {objective} (the value Optuna learns from). "
                              "Names are Optuna's: one learning rate per optimizer (`lr_adam`, ...)." + notes))
    else:
        blocks.append(Para(f"Parameter importance: not computed: {importance_note}."))
    if frame[objective].notna().any():
        blocks.append(Picture(plots.parallel_coordinates(frame, objective, facts.mode, best_id,
                                                         plots_dir / "parallel_coordinates.png"),
                              f"Each trial is a line through the parameters that varied and its best {objective} "
                              "(darker is better)."))
    if (out / facts.study_file).is_file():
        blocks.append(Para(f"The Optuna study `{facts.name}` is in `{facts.study_file}`: "
                           f"`optuna-dashboard sqlite:///{out / facts.study_file}` opens it."))
    return blocks


def _time_blocks(frame: pd.DataFrame, run: StoredRun) -> list[Block]:
    split = time_split(frame, run.facts)
    if split is None:
        return []
    slot, facts = split["slot_s"], run.facts

    def share(seconds: float) -> str:
        return f"{seconds:.0f} s ({seconds / slot:.0%})"

    return [Heading("Where the time went"),
            Para(f"{slot:.0f} slot-seconds ({facts.search_wall_s:.0f} s of search x {facts.concurrency} trials at "
                 f"once): training and validation {share(split['train_s'])}, trial start-up "
                 f"{share(split['startup_s'])}, the rest (report hand-overs, checkpoints, teardown, waiting) "
                 f"{share(split['rest_s'])}. Useful fraction **{split['useful_fraction']:.2f}**; "
                 f"{split['overhead_per_trial_s']:.1f} s of overhead per trial."),
            *_feature_blocks(frame)]


def _feature_blocks(frame: pd.DataFrame) -> list[Block]:
    """How often a frozen backbone's features were computed, and how often another trial's were reused."""
    if "features_s" not in frame or frame["features_s"].isna().all():
        return []
    rows = frame[frame["features_s"].notna()]
    shared = rows["features_shared"].fillna(0).astype(bool) if "features_shared" in rows else rows["features_s"].isna()
    computed, fetched = rows[~shared], rows[shared]
    # Trials that waited for the same features computed their parts side by side: all count as computing.
    return [Para(f"Frozen-backbone features (`features_s`): computed by {len(computed)} trial(s) in "
                 f"{computed['features_s'].sum():.1f} s, reused by {len(fetched)} in "
                 f"{fetched['features_s'].sum():.1f} s.")]


def _blocks(frame: pd.DataFrame, run: StoredRun, out: Path, plots_dir: Path) -> list[Block]:
    importances, importance_note = param_importances(out, run.facts)
    best_id = run.best["trial_id"] if run.best else None
    board = _leaderboard(frame, run.facts.objective)
    highlight = next((i for i, t in enumerate(board["trial"]) if t == best_id), None)
    more = f" The first {SHOWN_TRIALS} are shown; all {len(frame)} are" if len(frame) > SHOWN_TRIALS else " All are"
    blocks: list[Block] = [
        Heading(f"Search report: {run.facts.name}"),
        _verdict(frame, run, importances),
        *([Para(f"The search ended before its {run.facts.trials} trials ran out: {run.facts.ended_by} "
                f"({len(frame)} ran; `budget_stopped` trials were stopped by the time budget after "
                "an epoch, their checkpoint kept).")] if run.facts.ended_by else []),
        Heading("Leaderboard"),
        Para(f"Trials sorted by their best {run.facts.objective} ({run.facts.mode}); the winner is highlighted; "
             "metrics are those of each trial's best epoch. `#` is the order Tune created trials in"
             + ("; `recipe` marks the experiment's recipes, run first" if "recipe" in board else "")
             + "; `train_time_s` is seconds of training"
             + ("; `p50_ms`, `p95_ms` (batch 1) and `img_per_s_b32` (batch 32) are the serving cost with "
                "onnxruntime on this machine's CPU, `params_M` and `onnx_MB` its size, measured for the top "
                "trials only" if "p50_ms" in board else "")
             + f".{more} in `{REPORT_CSV}` / `{REPORT_PARQUET}`, with more columns."),
        Table(board, highlight),
        *_time_blocks(frame, run),
        *_constant_params(frame),
        *latency_blocks(run, plots_dir),
        *_search_blocks(frame, run, out, plots_dir, importances, importance_note),
    ]
    if run.best is not None and run.predictions is not None:
        blocks += _test_blocks(run, plots_dir)
    return blocks


def build(out: Path, run: StoredRun) -> Path:
    """Write report.csv/.parquet, the plots, report.md and report.html into `out`; returns the HTML's path."""
    frame = with_serving(trial_table(run.trials, run.history, run.facts), (run.best or {}).get("serving_top_k"))
    save(frame, out)
    plots_dir = out / PLOTS_DIR
    shutil.rmtree(plots_dir, ignore_errors=True)  # ours alone: a plot not made this time must not linger
    blocks = _blocks(frame, run, out, plots_dir)
    (out / REPORT_MD).write_text(to_markdown(blocks, out))
    page = out / REPORT_HTML
    page.write_text(to_html(blocks, f"Search report: {run.facts.name}"))
    return page
