"""What a finished search stores so its report can be rebuilt without Ray or training again.

- `report_inputs.json`: the experiment's facts, each trial's id, number, config and error,
  and the exported model's metrics, with the top trials' measured serving cost and why that
  model was selected (`best["serving_top_k"]`, `best["selection"]`; the other finished
  trials' figures for the plot, `best["serving_others"]`);
- `history.parquet`: every trial's epochs (the metrics each epoch reported);
- `test_predictions.csv` and `test_grid.npz`: the best model on test/ (every image's
  probabilities; the images the report shows);
- `optuna.db`: the Optuna study (written by the search itself).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.state.names import GRID_FILE, HISTORY_FILE, INPUTS_FILE, PREDICTIONS_FILE, write_json

# What each epoch's report keeps in history.parquet; Tune adds many more columns of its own.
HISTORY_COLUMNS = ("epoch", "train_images", "train_loss", "train_acc", "val_loss", "val_acc", "train_time_s",
                   "startup_s", "features_s", "features_shared", "note", "checkpoint_path")


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
    concurrency: int = 0  # trials at once; 0: not recorded (an older run)
    search_wall_s: float = 0.0  # the search's wall time, report and export excluded; 0: not recorded
    ended_by: str | None = None  # why the search ended before its trials ran out (a time budget, a stall)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as Tune left it: its id, creation order, config, error (if it failed), and
    whether an interrupted search left it unfinished (never started, or stopped mid-run), and
    whether the search's time budget stopped it."""

    trial_id: str
    trial_number: int
    config: dict[str, Any]
    error: str | None
    unfinished: bool = False
    budget_stopped: bool = False


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


def earlier_inputs(out: Path) -> dict[str, Any] | None:
    """The report_inputs.json an earlier finish of the search in `out` wrote, as stored; None
    when there is none or it cannot be read (whoever uses it checks what it needs)."""
    try:
        return json.loads((out / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return None


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
