"""Ends a search: the report, the export of the trial `Experiment.select` chooses among the
leaderboard's top trials (their serving cost measured first), its one evaluation on test/.

Everything the report is built from is stored in OUT (see `search.report`), so
`python -m search.report OUT` rebuilds the same report later without Ray or training.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from ray import tune

from search.best import export
from search.best.calibration import calibrate, choose_tta, softmax
from search.best.candidates import Trial, earlier_graphs, measure_model, measure_others, measure_top
from search.best.combine import ENSEMBLE_ID, Member, Tried, try_ensemble
from search.best.select import TOP_K, Candidate, Selection, choose
from search.experiment.space import hparams, recipe_points
from search.experiment.spec import Experiment
from search.report import stored, table
from search.report.page import build
from search.state.names import BEST_DIR, META_FILE, REPORT_HTML, STATE_FILE, STUDY_FILE, TRAIN_DIR
from search.state.storage import Output, load_state
from search.trial.checkpoints import checkpoint_key, kept_checkpoints
from trainables.data import ArrayData
from trainables.loop import default_device, predict_logits, with_mirror
from trainables.state import restore_model


def _trial_id_and_number(result: tune.Result) -> tuple[str, int]:
    # Tune names a trial's folder "<trainable>_<trial id>_<creation index>_<params>_<time>",
    # here "run_trial_<id>_<n>_...": the only place that keeps the creation order.
    parts = Path(result.path).name.split("_")
    return parts[2], int(parts[3])


def _epochs(result: tune.Result) -> pd.DataFrame | None:
    """Every epoch a trial reported, once each. A trial Tune restores without a Tune checkpoint
    (ours are Train's) has its result.json started afresh, so the epochs before a resume live
    only in its progress.csv: both are read, the later report of an epoch kept."""
    frames = []
    try:
        with result.filesystem.open_input_stream(f"{result.path}/progress.csv") as stream:
            frames.append(pd.read_csv(io.BytesIO(stream.read())))
    except (OSError, ValueError):  # no progress.csv, or an empty one
        pass
    if result.metrics_dataframe is not None:
        frames.append(result.metrics_dataframe)
    frames = [f for f in frames if len(f) and "epoch" in f]
    if not frames:
        return None
    merged = pd.concat(frames, ignore_index=True).drop_duplicates("epoch", keep="last")
    return merged.sort_values("epoch", kind="stable").reset_index(drop=True)


def records(grids: list[tune.ResultGrid], finished: set[str] | None = None,
            budget_stopped: set[str] = frozenset()) -> tuple[list[stored.TrialRecord], pd.DataFrame]:
    """Every trial of a search's rounds as stored for the report, and all their epochs, numbered
    in the order they were created across rounds. `finished` (after an interruption): the trials
    that ended; the others are marked unfinished. `budget_stopped`: those the time budget stopped."""
    trials, histories, offset = [], {}, 0
    for grid in grids:
        numbers = []
        for result in grid:
            trial_id, number = _trial_id_and_number(result)
            numbers.append(number)
            trials.append(stored.TrialRecord(trial_id, offset + number, dict(result.config or {}),
                                             None if result.error is None else str(result.error),
                                             unfinished=finished is not None and trial_id not in finished,
                                             budget_stopped=trial_id in budget_stopped))
            histories[trial_id] = _epochs(result)
        offset += max(numbers, default=0)
    return trials, stored.history_frame(histories)


def facts(experiment: Experiment, classes: tuple[str, ...], concurrency: int = 0,
          search_wall_s: float = 0.0, ended_by: str | None = None) -> stored.SearchFacts:
    """What the report needs of the experiment (and of how the search ran)."""
    budget = experiment.budget
    return stored.SearchFacts(
        name=experiment.name, objective=experiment.objective, mode=experiment.mode, max_epochs=budget.max_epochs,
        trials=budget.trials, grace_period_epochs=budget.grace_period_epochs,
        reduction_factor=budget.reduction_factor, recipe_points=recipe_points(experiment), classes=list(classes),
        image_size_px=experiment.image_size_px, study_file=STUDY_FILE, concurrency=concurrency,
        search_wall_s=round(search_wall_s, 2), ended_by=ended_by)


def _evaluate_on_test(model: torch.nn.Module, arrays: ArrayData,
                      tta: str) -> tuple[pd.DataFrame, float, dict[str, Any], dict[str, Any]]:
    """Every test image's prediction and calibrated probabilities, the test loss (test/ holds at
    least two images per class: `trainables.data.prepare` checks), the calibration (the
    temperature fitted on the val split, and its effect on test) and the test-time
    augmentation chosen on the val split (`tta`: "auto" measures it, "none" does not)."""
    device = default_device()
    model = model.to(device)
    val = predict_logits(model, arrays.val.images, device)
    chosen: dict[str, Any] = {"mode": None}
    if tta == "auto":
        flipped = with_mirror(model, arrays.val.images, device, val)  # the plain logits are computed once
        chosen = choose_tta(val, flipped, arrays.val.labels)
        val = flipped if chosen["mode"] else val
    logits = predict_logits(model, arrays.test.images, device, tta=chosen["mode"])
    loss = F.cross_entropy(logits, torch.as_tensor(arrays.test.labels)).item()
    calibrated = calibrate(val, arrays.val.labels, logits, arrays.test.labels)
    probabilities = softmax(logits, calibrated["temperature"])
    frame = table.predictions_frame(arrays.test.paths, arrays.test.labels, probabilities, arrays.classes)
    return frame, loss, calibrated, chosen


def finish(grids: list[tune.ResultGrid], experiment: Experiment, arrays: ArrayData, output: Output,
           finished: set[str] | None = None, concurrency: int = 0, search_wall_s: float = 0.0,
           ended_by: str | None = None, budget_stopped: set[str] = frozenset()) -> dict[str, Any]:
    """Write the report, export the best model, evaluate it once on test/; returns a summary.

    Files go to the local working folder of `output` (the caller uploads them).
    """
    out = output.local
    trials, history = records(grids, finished, budget_stopped)
    run = stored.StoredRun(facts(experiment, arrays.classes, concurrency, search_wall_s, ended_by), trials, history)
    frame = table.trial_table(trials, history, run.facts)
    table.save(frame, out)  # the table first: it survives whatever fails below
    print("\n" + table.render(frame), flush=True)
    summary: dict[str, Any] = {"trials": len(frame), "status": frame["status"].value_counts().to_dict(),
                               "time": table.time_split(frame, run.facts)}
    if ended_by:
        summary["ended_by"] = ended_by
    usable = frame[(frame["status"] != "error") & frame["checkpoint_path"].notna()]
    # Where the table's best epoch of a trial is not the study's (its history cut short by a full
    # disk), the checkpoint it names may have been freed as out of reach (search/driver/retention.py).
    kept = kept_checkpoints(output.filesystem, f"{output.path}/{TRAIN_DIR}")
    exportable = [checkpoint_key(path) in kept for path in usable["checkpoint_path"]]
    if not any(exportable):
        print("No trial produced a model: see the error column of report.csv.", flush=True)
    else:
        top, loaded = usable[exportable].head(TOP_K), {}
        tried = _try_ensemble(top, len(usable), run, experiment, arrays, output, loaded)
        chosen, chosen_by = _select(usable, exportable, run, experiment, len(arrays.classes), out, tried)
        run, best_text = _export_best(chosen, run, experiment, arrays, output, chosen_by, tried, loaded)
        summary.update(best_trial=run.best["trial_id"], best=run.best["metrics"])
        if run.best.get("ensemble"):  # what the notebook's result and summary.json say of it
            summary["ensemble"] = {k: run.best["ensemble"][k] for k in ("kept", "exported", "reason", "members")}
        print(best_text, flush=True)
    stored.store(out, run)
    page = build(out, run)
    summary["report"] = str(page)
    print(f"Report: {output.display(REPORT_HTML)} (rebuild it with python -m search.report {out})", flush=True)
    return summary


def _checkpoint_state(output: Output, path: str, loaded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The state a reported checkpoint holds, read once per finish (`loaded`, by path): the
    ensemble's candidates and the exported trial share it."""
    if path not in loaded:
        loaded[path] = load_state(output, output.checkpoint(path), STATE_FILE)
    return loaded[path]


def _try_ensemble(top: pd.DataFrame, produced: int, run: stored.StoredRun, experiment: Experiment,
                  arrays: ArrayData, output: Output, loaded: dict[str, dict[str, Any]]) -> Tried | None:
    """The ensemble of the leaderboard's `top` trials (kept checkpoints, the best first; `produced`
    trials produced a model), or None when `Experiment.ensemble` is "off". `loaded`: see
    `_checkpoint_state`."""
    if experiment.ensemble == "off":
        return None
    if len(top) < 2:  # retention freed the others: greedy selection on their val logits weighed none of them
        why = ("only one trial produced a model" if produced < 2 else
               "no other top trial's checkpoint is kept: during the search, greedy selection on the ended top "
               "trials' val logits gave no other trial a weight")
        return Tried(list(top["trial_id"]), error=f"not kept: {why}")
    configs = {t.trial_id: t.config for t in run.trials}
    try:
        members = [Member(row["trial_id"], hparams(configs[row["trial_id"]], experiment.weights),
                          _checkpoint_state(output, row["checkpoint_path"], loaded))
                   for _, row in top.iterrows()]
    except Exception as err:  # noqa: BLE001 (a member's checkpoint unreadable: the single trial goes out)
        return Tried(list(top["trial_id"]), error=f"not tried: {type(err).__name__}: {err}"[:300])
    print(f"Trying an ensemble of the top {len(members)} trials on the val split ...", flush=True)
    return try_ensemble(members, arrays, experiment.seed)


def _select(usable: pd.DataFrame, exportable: list[bool], run: stored.StoredRun, experiment: Experiment,
            num_classes: int, out: Path, tried: Tried | None = None) -> tuple[pd.Series, dict[str, Any]]:
    """The trial `experiment.select` exports, from the leaderboard's top trials whose checkpoint
    is kept (`exportable`, row by row of `usable`) and their measured serving cost; and what
    meta.json and the report keep of it (the figures, the rule's outcome). The other trials are
    measured for the plot only. Graphs an earlier finish in `out` measured (a resumed or extended
    search) are not measured again. A kept ensemble (`tried`) is exported with `select="accuracy"`;
    with "fastest_within=D" it is one more candidate, measured like the trials."""
    configs = {t.trial_id: t.config for t in run.trials}
    trials = [Trial(row["trial_id"], int(row["trial_number"]), float(row[experiment.objective]),
                    hparams(configs[row["trial_id"]], experiment.weights)) for _, row in usable.iterrows()]
    top_ids = set(usable[exportable]["trial_id"].head(TOP_K))
    top, rest = [t for t in trials if t.trial_id in top_ids], [t for t in trials if t.trial_id not in top_ids]
    by_graph = earlier_graphs(stored.earlier_inputs(out), {t.trial_id: t.hp for t in trials}, num_classes,
                              experiment.image_size_px)
    figures, seconds = measure_top(top, num_classes, experiment.image_size_px, by_graph)
    candidates = [Candidate(f["trial_id"], f["trial_number"], f["objective"], f.get("batch1_p50_ms")) for f in figures]
    selection = choose(candidates, experiment.select, experiment.tolerance, experiment.objective, experiment.mode)
    if tried is not None and tried.kept and tried.decision is not None:
        objective = getattr(tried.decision, experiment.objective)
        if experiment.tolerance is None:
            ensemble = Candidate(ENSEMBLE_ID, 0, objective, None)
            selection = Selection(experiment.select, None, selection.best, ensemble, None,
                                  f"select={experiment.select!r}: the ensemble of the top trials is exported "
                                  f"({tried.decision.reason}).")
        else:
            started = time.perf_counter()
            tried.figures = measure_model(tried.model, experiment.image_size_px)
            seconds += round(time.perf_counter() - started, 2)
            ensemble = Candidate(ENSEMBLE_ID, 0, objective, tried.figures.get("batch1_p50_ms"))
            selection = choose([ensemble, *candidates], experiment.select, experiment.tolerance,
                               experiment.objective, experiment.mode)
    # An exported ensemble is led by its best-ranked member (greedy selection may leave the best trial out).
    lead = tried.members[0]["trial_id"] if selection.chosen.trial_id == ENSEMBLE_ID else selection.chosen.trial_id
    chosen = usable[usable["trial_id"] == lead].iloc[0]
    others = measure_others(rest, num_classes, experiment.image_size_px, by_graph)
    return chosen, {"selection": {**selection.to_dict(), "measure_s": seconds}, "serving_top_k": figures,
                    "serving_others": others, "serving_unmeasured": len(rest) - len(others)}


def _export_best(best: pd.Series, run: stored.StoredRun, experiment: Experiment, arrays: ArrayData,
                 output: Output, chosen_by: dict[str, Any], tried: Tried | None,
                 loaded: dict[str, dict[str, Any]]) -> tuple[stored.StoredRun, str]:
    """Export the chosen trial's model, or the ensemble of the top trials that `best` leads
    (`chosen_by`: why, see `_select`; `tried`: the ensemble; `loaded`: see `_checkpoint_state`),
    evaluate it on test/; the run with its results, and what to print."""
    config = next(t.config for t in run.trials if t.trial_id == best["trial_id"])
    hp = hparams(config, experiment.weights)
    metrics = {k: float(best[k]) for k in ("val_acc", "val_loss", "train_acc", "train_loss")}
    metrics["epochs_run"] = int(best["epochs"])
    state = _checkpoint_state(output, best["checkpoint_path"], loaded)
    as_ensemble = chosen_by["selection"]["chosen"]["trial_id"] == ENSEMBLE_ID and tried is not None and tried.kept
    if as_ensemble:
        model, members = tried.model, tried.members
        # What the ensemble reaches on val (in-sample), in place of its best member's figures.
        metrics.update(val_acc=tried.decision.val_acc, val_loss=tried.decision.val_loss)
    else:
        # The checkpoint holds what training changed; the frozen backbone comes back from its weights file or seed.
        model, members = restore_model(len(arrays.classes), hp, state), None
    # test/ is used once, here, for the chosen model only: it never steers the search.
    predictions, test_loss, calibrated, tta = _evaluate_on_test(model, arrays, experiment.test_time_augmentation)
    test_acc = float((predictions["true"] == predictions["predicted"]).mean())
    metrics.update(test_acc=test_acc, test_loss=test_loss, test_ece=calibrated["test_ece_before"],
                   test_ece_calibrated=calibrated["test_ece_after"])
    exported = export.export_best(output.local, {"epoch": state["epoch"], "model": model.cpu().state_dict()},
                                  arrays.classes, hp, metrics, best["trial_id"], experiment.image_size_px,
                                  temperature=calibrated["temperature"], tta=tta,
                                  extra={**{k: chosen_by[k] for k in ("selection", "serving_top_k")},
                                         **({"ensemble": tried.to_dict()} if tried else {})},
                                  members=members)
    serving = json.loads((exported / META_FILE).read_text()).get("serving")
    shown = table.grid_indices(predictions)
    run = stored.StoredRun(
        run.facts, run.trials, run.history, predictions=predictions, grid=(shown, arrays.test.images[shown]),
        best={"trial_id": best["trial_id"], "trial_number": int(best["trial_number"]), "epoch": int(state["epoch"]),
              "hparams": hp.to_dict(), "metrics": metrics, "test_images": len(predictions),
              "calibration": calibrated, "tta": tta, "serving": serving, **chosen_by,
              **({"ensemble": {**tried.to_dict(), "exported": as_ensemble}} if tried else {})})
    selection = chosen_by["selection"]
    word = "Best" if selection["chosen"] == selection["best"] else "Chosen"
    what = (f"ensemble of {len(members)} trials led by trial {best['trial_id']} ({hp.arch})" if as_ensemble
            else f"trial {best['trial_id']} ({hp.arch})")
    text = (f"\n{word} {what}: val_acc {metrics['val_acc']:.3f}, "
            f"test_acc {test_acc:.3f} on {len(predictions)} test images.\n"
            + (f"{selection['reason']}\n" if selection["tolerance"] is not None else "")
            + (f"Ensemble of the top {len(tried.candidates)} trials: {tried.to_dict()['reason']}.\n" if tried else "")
            + f"Serving cost of the top {len(chosen_by['serving_top_k'])} trials measured in "
            f"{selection['measure_s']:.1f} s (in the report and best/{META_FILE}).\n"
            f"Exported to {output.display(BEST_DIR)}. Use it: from search import load_best; "
            f"load_best({output.display()!r}).predict(paths)")
    return run, text
