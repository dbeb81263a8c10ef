"""The report page of a search: `report.md` and a self-contained `report.html` in OUT.

It opens with the winner and why it won, then the leaderboard, the learning curves, where
ASHA stopped trials, parameter importance, and the winner once on test/. The plots are PNGs
in `OUT/plots/`; the HTML carries them inline (data URIs), so it is one file to send.
Both pages are written from one list of blocks, so they always say the same.
"""

from __future__ import annotations

import base64
import html
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search.report import plots, table as report
from search.report.table import SearchFacts, StoredRun

SHOWN_TRIALS = 30
SHOWN_ERROR_CHARS = 80
MIN_SHOWN_IMPORTANCE = 0.005  # smaller bars are invisible; they are named in the caption
# Shown on the page; report.csv has every column (train_acc, train_loss, startup_s, ...).
METRICS = ("val_acc", "val_loss")


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Para:
    text: str  # may hold **bold** and `code`


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # cells already formatted as text
    highlight: int | None = None  # the row to mark (the winner)


@dataclass(frozen=True)
class Picture:
    path: Path
    caption: str


@dataclass(frozen=True)
class Verdict:
    title: str
    items: list[str]


Block = Heading | Para | Table | Picture | Verdict


def _fmt(value: object, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}"
    return str(value)


def classification(true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Confusion matrix (rows true, columns predicted) and per-class precision, recall, F1 and
    support, with macro and support-weighted averages; a class never predicted scores 0."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    hits = np.diag(confusion).astype(float)
    support, called = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = np.divide(hits, called, out=np.zeros(n), where=called > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
    frame = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support})
    weights = support / support.sum() if support.sum() else np.zeros(n)
    averages = pd.DataFrame({"class": ["macro avg", "weighted avg"],
                             "precision": [precision.mean(), precision @ weights],
                             "recall": [recall.mean(), recall @ weights], "f1": [f1.mean(), f1 @ weights],
                             "support": [support.sum()] * 2})
    return confusion, pd.concat([frame, averages], ignore_index=True)


def param_importances(out: Path, facts: SearchFacts) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances of the stored study, or None and the reason why not."""
    path = out / facts.study_file
    if not path.is_file():
        return None, f"this run kept no Optuna study ({facts.study_file} is missing)"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=facts.name, storage=f"sqlite:///{path}")
    except KeyError:
        return None, f"{facts.study_file} holds no study named {facts.name!r}"
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(finished) < 2:
        return None, f"the study has {len(finished)} finished trial(s); importance needs at least 2"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study)
        except Exception as err:  # degenerate studies fail in several ways inside Optuna
            return None, f"Optuna could not compute it ({type(err).__name__}: {err})"
    notes = sorted({str(w.message) for w in caught})
    if not importances or not any(importances.values()) or any("will be equal" in n for n in notes):
        return None, "too little variation among the trials to tell parameters apart" + \
            (f" (Optuna: {' '.join(notes)})" if notes else "")
    return importances, " ".join(notes)


def _asha_rungs(facts: SearchFacts) -> list[int]:
    # ASHA compares trials at grace_period * reduction_factor**k epochs, below max_epochs.
    rungs, epoch = [], facts.grace_period_epochs
    while epoch < facts.max_epochs:
        rungs.append(epoch)
        epoch *= max(2, facts.reduction_factor)
    return rungs


def _params_text(hparams: dict[str, object]) -> str:
    return ", ".join(f"{name} `{_fmt(value)}`" for name, value in hparams.items()
                     if value is not None and name != "arch")


def _verdict(frame: pd.DataFrame, run: StoredRun, importances: dict[str, float] | None) -> Verdict:
    facts, objective = run.facts, run.facts.objective
    counts = frame["status"].value_counts()
    ran = (f"{len(frame)} trials ran: {counts.get('completed', 0)} completed all {facts.max_epochs} epochs, "
           f"{counts.get('early_stopped', 0)} stopped early by ASHA, {counts.get('error', 0)} errored.")
    if run.best is None:
        return Verdict("No trial produced a model", [ran, "See the error column of the leaderboard (report.csv)."])
    best, metrics = run.best, run.best["metrics"]
    position = int(np.flatnonzero(frame["trial_id"] == best["trial_id"])[0])
    word = "highest" if facts.mode == "max" else "lowest"
    why = f"**{objective} {metrics[objective]:.4g}** at epoch {best['epoch']}: the {word} {objective} of all {len(frame)} trials"
    others = frame.drop(index=position)[objective].dropna()
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
    if importances:
        top = ", ".join(f"{name} ({value:.2f})" for name, value in list(importances.items())[:3])
        items.append(f"Parameters that mattered most (Optuna importance): {top}.")
    items.append("Exported to `best/`; load it with `from search import load_best; load_best(OUT).predict(paths)`.")
    recipe = frame.at[position, "recipe"]
    label = f", recipe {recipe}" if pd.notna(recipe) else ""
    return Verdict(f"Winner: trial {best['trial_id']} (#{best['trial_number']}{label}), "
                   f"{best['hparams']['arch']}", items)


def _leaderboard(frame: pd.DataFrame, objective: str) -> pd.DataFrame:
    shown = frame.head(SHOWN_TRIALS)
    metrics = [objective, *[m for m in METRICS if m != objective]]
    params = report.param_columns(frame, varied=True)
    view = pd.DataFrame({"rank": range(1, len(shown) + 1), "trial": shown["trial_id"], "#": shown["trial_number"],
                         "recipe": shown["recipe"], "status": shown["status"], "epochs": shown["epochs"]})
    for column in [*metrics, "train_time_s"]:
        view[column] = shown[column].map(_fmt)
    for column in params:  # 3 digits: enough to tell trials apart, and the table fits a screen
        view[column.removeprefix("param.")] = shown[column].map(lambda v: _fmt(v, 3))
    view["error"] = shown["error"].map(lambda e: e[:SHOWN_ERROR_CHARS] if isinstance(e, str) else None)
    # Columns empty on every shown row (no recipes, no errors) only take room.
    return view.drop(columns=[c for c in ("recipe", "error") if view[c].isna().all()]).map(_fmt)


def _constant_params(frame: pd.DataFrame) -> list[Block]:
    shared = report.param_columns(frame, varied=False)
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
             f"`{report.PREDICTIONS_FILE}`."),
        Picture(plots.confusion_heatmap(confusion, classes, plots_dir / "confusion_matrix.png"),
                "Confusion matrix: rows are the true classes, columns the predictions."),
        Table(per_class.assign(support=per_class["support"].astype(int)).map(_fmt)),
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


def _search_blocks(frame: pd.DataFrame, run: StoredRun, out: Path, plots_dir: Path,
                   importances: dict[str, float] | None, importance_note: str) -> list[Block]:
    facts, objective = run.facts, run.facts.objective
    best_id = run.best["trial_id"] if run.best else None
    blocks: list[Block] = []
    if best_id is not None:
        history = report.trial_history(run.history, best_id)
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


def _blocks(frame: pd.DataFrame, run: StoredRun, out: Path, plots_dir: Path) -> list[Block]:
    importances, importance_note = param_importances(out, run.facts)
    best_id = run.best["trial_id"] if run.best else None
    board = _leaderboard(frame, run.facts.objective)
    highlight = next((i for i, t in enumerate(board["trial"]) if t == best_id), None)
    more = f" The first {SHOWN_TRIALS} are shown; all {len(frame)} are" if len(frame) > SHOWN_TRIALS else " All are"
    blocks: list[Block] = [
        Heading(f"Search report: {run.facts.name}"),
        _verdict(frame, run, importances),
        Heading("Leaderboard"),
        Para(f"Trials sorted by their best {run.facts.objective} ({run.facts.mode}); the winner is highlighted; "
             "metrics are those of each trial's best epoch. `#` is the order Tune created trials in"
             + ("; `recipe` marks the experiment's recipes, run first" if "recipe" in board else "")
             + f"; `train_time_s` is seconds of training.{more} in `report.csv` / `report.parquet`, "
             "with more columns."),
        Table(board, highlight),
        *_constant_params(frame),
        *_search_blocks(frame, run, out, plots_dir, importances, importance_note),
    ]
    if run.best is not None and run.predictions is not None:
        blocks += _test_blocks(run, plots_dir)
    return blocks


def _markdown_table(frame: pd.DataFrame, highlight: int | None) -> str:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    lines = [cells(list(frame.columns)), cells(["---"] * len(frame.columns))]
    for i, row in enumerate(frame.itertuples(index=False)):
        values = [str(v) for v in row]
        if i == highlight:
            values = [f"**{v}**" if v else v for v in values]
        lines.append(cells(values))
    return "\n".join(lines)


def to_markdown(blocks: list[Block], out: Path) -> str:
    """The page as Markdown; pictures are linked relative to OUT."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(("# " if not parts else "## ") + block.text)
        elif isinstance(block, Para):
            parts.append(block.text)
        elif isinstance(block, Verdict):
            parts.append(f"> **{block.title}**\n>\n" + "\n".join(f"> - {item}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(_markdown_table(block.frame, block.highlight))
        elif isinstance(block, Picture):
            parts.append(f"![{block.path.stem}]({block.path.relative_to(out).as_posix()})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html_table(frame: pd.DataFrame, highlight: int | None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f'<tr class="best">{cells}</tr>' if i == highlight else f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; background: #f3f4f6;
       color: #1f2328; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 12px; }
h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
.verdict { border-left: 6px solid #2e7d32; background: #eef7ee; padding: 10px 20px 6px; margin: 12px 0 8px; }
.verdict h2 { border: none; margin: 4px 0; font-size: 21px; color: #1b5e20; }
.verdict li { margin: 3px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 8px 0; }
th { background: #f6f8fa; text-align: left; position: sticky; top: 0; }
th, td { padding: 4px 7px; border-bottom: 1px solid #e5e7eb; white-space: nowrap; }
tr.best td { background: #fff4c2; font-weight: 600; }
code { background: #f3f4f6; padding: 1px 4px; border-radius: 3px; font-size: 90%; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; }
figcaption { color: #57606a; font-size: 13px; max-width: 900px; }
"""


def to_html(blocks: list[Block], title: str) -> str:
    """The page as one self-contained HTML file: styles inline, pictures as data URIs."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h1>{_inline(block.text)}</h1>" if not parts else f"<h2>{_inline(block.text)}</h2>")
        elif isinstance(block, Para):
            parts.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Verdict):
            items = "".join(f"<li>{_inline(i)}</li>" for i in block.items)
            parts.append(f'<section class="verdict"><h2>{_inline(block.title)}</h2><ul>{items}</ul></section>')
        elif isinstance(block, Table):
            parts.append(_html_table(block.frame, block.highlight))
        elif isinstance(block, Picture):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.path.stem)}">'
                         f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n")


def build(out: Path, run: StoredRun) -> Path:
    """Write report.csv/.parquet, the plots, report.md and report.html into `out`; returns the HTML's path."""
    frame = report.trial_table(run.trials, run.history, run.facts)
    report.save(frame, out)
    plots_dir = out / PLOTS_DIR
    shutil.rmtree(plots_dir, ignore_errors=True)  # ours alone: a plot not made this time must not linger
    blocks = _blocks(frame, run, out, plots_dir)
    (out / REPORT_MD).write_text(to_markdown(blocks, out))
    page = out / REPORT_HTML
    page.write_text(to_html(blocks, f"Search report: {run.facts.name}"))
    return page
