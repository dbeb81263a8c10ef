"""The results table, what the report is built from, and `python -m search.report OUT`.

The table has one row per trial, sorted by the objective (`report.csv`, `report.parquet`).
A finished search also stores everything its report needs, so the report can be rebuilt
without Ray and without training again:

- `report_inputs.json`: the experiment's facts, each trial's id, number, config and error,
  and the best model's metrics;
- `history.parquet`: every trial's epochs (the metrics each epoch reported);
- `test_predictions.csv` and `test_grid.npz`: the best model on test/ (every image's
  probabilities; the images the report shows);
- `optuna.db`: the Optuna study (written by the search itself).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.files import GRID_FILE, HISTORY_FILE, INPUTS_FILE, PREDICTIONS_FILE, REPORT_CSV, REPORT_PARQUET, write_json
from search.space import hparams
from trainables.hparams import SEARCHED

EXIT_USAGE = 2
COLUMNS = ("trial_id", "trial_number", "recipe", "status", "epochs", "val_acc", "val_loss", "train_acc", "train_loss",
           "train_time_s", "startup_s", "error")


# What each epoch's report keeps in history.parquet; Tune adds many more columns of its own.
HISTORY_COLUMNS = ("epoch", "train_images", "train_loss", "train_acc", "val_loss", "val_acc", "train_time_s",
                   "startup_s", "checkpoint_path")


def _status(error: Any, epochs: int, max_epochs: int) -> str:
    if error is not None:
        return "error"
    return "completed" if epochs >= max_epochs else "early_stopped"


def recipe_index(config: dict[str, Any], points: list[dict[str, Any]]) -> int | None:
    """1-based index of the recipe this trial's config is, or None."""
    for i, point in enumerate(points, start=1):
        if all(config.get(k) == v for k, v in point.items()):
            return i
    return None


def trial_row(trial_id: str, trial_number: int, config: dict[str, Any], history: pd.DataFrame, error: Any,
              objective: str, mode: str, max_epochs: int, points: list[dict[str, Any]]) -> dict[str, Any]:
    """One trial's row: the metrics of its best epoch, how far it ran, and its parameters.

    `trial_number` is the order Tune created trials in; `recipe` says which of the
    experiment's recipes (evaluated first) a trial ran, if any.
    """
    row: dict[str, Any] = {name: math.nan for name in COLUMNS}
    row.update(trial_id=trial_id, trial_number=trial_number, recipe=recipe_index(config, points), epochs=0, error=None if error is None else str(error).strip().splitlines()[-1][:500],
               checkpoint_path=None)
    if history is not None and objective in history and history[objective].notna().any():
        # On ties the latest epoch wins: Ray Train keeps the latest checkpoint, not the first.
        best = history.dropna(subset=[objective]).sort_values(
            [objective, "epoch"], ascending=[mode == "max", True], kind="stable").iloc[-1]
        row.update({k: best.get(k) for k in ("val_acc", "val_loss", "train_acc", "train_loss")})
        row.update(epochs=int(history["epoch"].max()), train_time_s=float(history["train_time_s"].max()),
                   startup_s=float(history["startup_s"].iloc[0]), checkpoint_path=best.get("checkpoint_path"))
    row["status"] = _status(error, row["epochs"], max_epochs)
    # The backbone's weights are the experiment's, not a searched column: any value resolves the rest.
    params = hparams(config, weights="none").to_dict() if "optimizer" in config else {}
    for name in SEARCHED:
        row[f"param.{name}"] = params.get(name)
    return row


def table(rows: list[dict[str, Any]], objective: str, mode: str) -> pd.DataFrame:
    """Rows sorted best first (errors last), with a clean index."""
    frame = pd.DataFrame(rows)
    frame["epochs"] = frame["epochs"].astype("int64")
    frame["recipe"] = frame["recipe"].astype("Int64")
    # Ties go to the earlier trial: the order does not depend on the order Tune lists results in.
    return frame.sort_values([objective, "trial_number"], ascending=[mode == "min", True], na_position="last",
                             kind="stable").reset_index(drop=True)


def param_columns(frame: pd.DataFrame, varied: bool) -> list[str]:
    """The `param.*` columns whose value differs between trials (`varied`), or that every trial
    shares (not `varied`); a parameter some trials did not use counts as varied."""
    columns = [c for c in frame.columns if c.startswith("param.") and frame[c].notna().any()]
    return [c for c in columns if (frame[c].isna().any() or frame[c].astype(str).nunique() > 1) == varied]


def save(frame: pd.DataFrame, out: Path) -> None:
    """Write `report.csv` and `report.parquet` into `out` (without internal columns)."""
    public = frame.drop(columns=["checkpoint_path"], errors="ignore")
    public.to_csv(out / REPORT_CSV, index=False)
    # Parquet wants one type per column; parameters mix None with numbers or strings.
    public.astype({c: "string" for c in public.columns if public[c].dtype == object}).to_parquet(
        out / REPORT_PARQUET, index=False)


def render(frame: pd.DataFrame) -> str:
    """A compact text table for the console."""
    shown = [c for c in ("trial_id", "trial_number", "recipe", "status", "epochs", "val_acc", "val_loss", "train_time_s") if c in frame]
    params = [c for c in frame.columns if c.startswith("param.") and frame[c].notna().any()]
    view = frame[shown + params].rename(columns=lambda c: c.removeprefix("param."))
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")


@dataclass(frozen=True)
class SearchFacts:
    """What the report needs to know of the experiment, stored with the run."""

    name: str
    objective: str
    mode: str
    max_epochs: int
    trials: int
    grace_period_epochs: int
    reduction_factor: int
    recipe_points: list[dict[str, Any]]
    classes: list[str]
    image_size_px: int
    study_file: str


@dataclass(frozen=True)
class TrialRecord:
    """One trial as Tune ended it: its id, creation order, config and error (if it failed)."""

    trial_id: str
    trial_number: int
    config: dict[str, Any]
    error: str | None


@dataclass(frozen=True)
class StoredRun:
    """Everything the report is built from; `best`, `predictions` and `grid` are None when no
    trial produced a model. `grid` is (indices into test/, their images)."""

    facts: SearchFacts
    trials: list[TrialRecord]
    history: pd.DataFrame
    best: dict[str, Any] | None = None
    predictions: pd.DataFrame | None = None
    grid: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


class MissingRun(ValueError):
    """OUT holds no stored search; the message names the path and what is missing."""


def history_frame(histories: dict[str, pd.DataFrame | None]) -> pd.DataFrame:
    """Every trial's epochs in one frame (`trial_id` first), keeping only HISTORY_COLUMNS."""
    parts = [frame[[c for c in HISTORY_COLUMNS if c in frame]].assign(trial_id=trial_id)
             for trial_id, frame in histories.items() if frame is not None and len(frame)]
    if not parts:
        return pd.DataFrame(columns=["trial_id", *HISTORY_COLUMNS])
    frame = pd.concat(parts, ignore_index=True)
    return frame[["trial_id", *[c for c in frame.columns if c != "trial_id"]]]


def trial_history(history: pd.DataFrame, trial_id: str) -> pd.DataFrame:
    """One trial's epochs, in the order they were reported."""
    return history[history["trial_id"] == trial_id].drop(columns="trial_id").reset_index(drop=True)


def trial_table(trials: list[TrialRecord], history: pd.DataFrame, facts: SearchFacts) -> pd.DataFrame:
    """The report table of a search from its stored trials and history, best trial first."""
    rows = [trial_row(t.trial_id, t.trial_number, t.config, trial_history(history, t.trial_id), t.error,
                      facts.objective, facts.mode, facts.max_epochs, facts.recipe_points) for t in trials]
    return table(rows, facts.objective, facts.mode)


def predictions_frame(paths: list[str] | tuple[str, ...], labels: np.ndarray, probabilities: np.ndarray,
                      classes: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """One row per test image: path, true and predicted class, the prediction's probability,
    and `prob.<class>` for every class."""
    frame = pd.DataFrame({"path": list(paths), "true": [classes[i] for i in labels],
                          "predicted": [classes[i] for i in probabilities.argmax(axis=1)],
                          "probability": probabilities.max(axis=1)})
    for i, name in enumerate(classes):
        frame[f"prob.{name}"] = probabilities[:, i]
    return frame


def grid_indices(predictions: pd.DataFrame, count: int = 25) -> np.ndarray:
    """The test images the report shows: mistakes first (up to half), then correct ones
    taken round-robin across classes, so both kinds and every class are seen."""
    wrong = list(np.flatnonzero(predictions["true"] != predictions["predicted"]))
    by_class = [list(np.flatnonzero((predictions["true"] == name) & (predictions["predicted"] == name)))
                for name in dict.fromkeys(predictions["true"])]
    right = [group[i] for i in range(max(map(len, by_class), default=0)) for group in by_class if i < len(group)]
    shown_wrong = wrong[:max(count // 2, count - len(right))]
    chosen = shown_wrong + right[:count - len(shown_wrong)]
    return np.asarray(sorted(chosen), dtype=np.int64)


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for NumPy scalars (metrics and configs hold them)."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def store(out: Path, run: StoredRun) -> None:
    """Write what `load` reads back into `out` (see the module docstring for the files)."""
    run.history.to_parquet(out / HISTORY_FILE, index=False)
    inputs = {"facts": asdict(run.facts), "trials": [asdict(t) for t in run.trials], "best": run.best}
    write_json(out / INPUTS_FILE, inputs)
    for stale in (PREDICTIONS_FILE, GRID_FILE):  # a resumed search may end without a model
        (out / stale).unlink(missing_ok=True)
    if run.predictions is not None:
        run.predictions.to_csv(out / PREDICTIONS_FILE, index=False)
    if run.grid is not None:
        np.savez_compressed(out / GRID_FILE, indices=run.grid[0], images=run.grid[1])


def load(out: Path) -> StoredRun:
    """Read a search stored in `out`; `MissingRun` when there is none."""
    inputs_path = out / INPUTS_FILE
    if not out.is_dir():
        raise MissingRun(f"{out}: no such folder; give the --out folder of a finished search")
    for path in (inputs_path, out / HISTORY_FILE):
        if not path.is_file():
            raise MissingRun(f"{out}: no finished search stored here ({path.name} missing); "
                             "run python -m search.run EXPERIMENT --out with this folder first")
    try:
        inputs = json.loads(inputs_path.read_text())
        facts, trials = SearchFacts(**inputs["facts"]), [TrialRecord(**t) for t in inputs["trials"]]
    except (ValueError, KeyError, TypeError) as err:
        raise MissingRun(f"{inputs_path}: not what a search writes ({type(err).__name__}: {err})") from None
    predictions = grid = None
    if (out / PREDICTIONS_FILE).is_file():
        predictions = pd.read_csv(out / PREDICTIONS_FILE)
    if (out / GRID_FILE).is_file():
        with np.load(out / GRID_FILE, allow_pickle=False) as z:
            grid = (z["indices"], z["images"])
    return StoredRun(facts, trials, pd.read_parquet(out / HISTORY_FILE), inputs.get("best"), predictions, grid)


def main(argv: list[str] | None = None) -> int:
    """`python -m search.report OUT`: rebuild the report of the search stored in OUT."""
    parser = argparse.ArgumentParser(prog="python -m search.report",
                                     description="Rebuild the report (md, html, plots, csv/parquet) of a finished "
                                                 "search from what it stored, without training again.")
    parser.add_argument("out", help="the search's --out folder")
    args = parser.parse_args(argv)
    try:
        run = load(Path(args.out))
    except MissingRun as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from search.report.page import build  # the page imports this module's table

    page = build(Path(args.out), run)
    print(f"Report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
