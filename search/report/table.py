"""The search's tables: its trials best first (`report.csv`, `report.parquet`), the winner's test predictions.

A trial's row holds the metrics of its best epoch, how far it ran, which recipe it was and
its parameters (`param.*`). The predictions hold every test image's probabilities.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search.experiment.space import hparams
from search.report.stored import SearchFacts, TrialRecord, trial_history
from search.state.names import REPORT_CSV, REPORT_PARQUET
from trainables.hparams import SEARCHED

COLUMNS = ("trial_id", "trial_number", "recipe", "status", "epochs", "val_acc", "val_loss", "train_acc", "train_loss",
           "train_time_s", "startup_s", "features_s", "features_shared", "error", "note")


def _status(error: Any, epochs: int, max_epochs: int, unfinished: bool, budget_stopped: bool = False) -> str:
    if error is not None:
        return "error"
    if unfinished:
        return "unfinished"
    if epochs >= max_epochs:
        return "completed"
    return "budget_stopped" if budget_stopped else "early_stopped"


def recipe_index(config: dict[str, Any], points: list[dict[str, Any]]) -> int | None:
    """1-based index of the recipe this trial's config is, or None."""
    for i, point in enumerate(points, start=1):
        if all(config.get(k) == v for k, v in point.items()):
            return i
    return None


def trial_note(history: pd.DataFrame | None) -> str | None:
    """What the trial's epochs say about how it ran (an out-of-memory retry with half the batch
    size, `search.trial.settings.trial_batch`): the latest note, or None."""
    if history is None or "note" not in history:
        return None
    notes = [n for n in history["note"] if isinstance(n, str) and n]
    return notes[-1] if notes else None


def trial_row(trial_id: str, trial_number: int, config: dict[str, Any], history: pd.DataFrame, error: Any,
              objective: str, mode: str, max_epochs: int, points: list[dict[str, Any]],
              unfinished: bool = False, budget_stopped: bool = False) -> dict[str, Any]:
    """One trial's row: the metrics of its best epoch, how far it ran, and its parameters.

    `trial_number` is the order Tune created trials in; `recipe` says which of the
    experiment's recipes (evaluated first) a trial ran, if any.
    """
    row: dict[str, Any] = {name: math.nan for name in COLUMNS}
    row.update(trial_id=trial_id, trial_number=trial_number, recipe=recipe_index(config, points), epochs=0,
               error=None if error is None else (str(error).strip().splitlines() or ["(no message)"])[-1][:500],
               note=trial_note(history), checkpoint_path=None)
    if history is not None and objective in history and history[objective].notna().any():
        # On ties the latest epoch wins: Ray Train keeps the latest checkpoint, not the first.
        best = history.dropna(subset=[objective]).sort_values(
            [objective, "epoch"], ascending=[mode == "max", True], kind="stable").iloc[-1]
        row.update({k: best.get(k) for k in ("val_acc", "val_loss", "train_acc", "train_loss")})
        row.update(epochs=int(history["epoch"].max()), train_time_s=float(history["train_time_s"].max()),
                   startup_s=float(history["startup_s"].iloc[0]), checkpoint_path=best.get("checkpoint_path"))
        # A frozen backbone's features: seconds to compute them, or to fetch another trial's.
        for column in ("features_s", "features_shared"):
            if column in history and history[column].notna().any():
                row[column] = history[column].dropna().iloc[0]
    row["status"] = _status(error, row["epochs"], max_epochs, unfinished, budget_stopped)
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


def trial_table(trials: list[TrialRecord], history: pd.DataFrame, facts: SearchFacts) -> pd.DataFrame:
    """The report table of a search from its stored trials and history, best trial first."""
    rows = [trial_row(t.trial_id, t.trial_number, t.config, trial_history(history, t.trial_id), t.error,
                      facts.objective, facts.mode, facts.max_epochs, facts.recipe_points, t.unfinished,
                      t.budget_stopped) for t in trials]
    return table(rows, facts.objective, facts.mode)


def with_serving(frame: pd.DataFrame, measured: list[dict[str, Any]] | None) -> pd.DataFrame:
    """`frame` with the measured trials' serving cost as `serving.*` columns (`search.best.candidates`:
    parameters, ONNX bytes, onnxruntime CPU latency and throughput, or why it is missing); empty
    for the trials not measured. No columns for a run stored before they were measured."""
    if not measured:
        return frame
    by_trial = {row["trial_id"]: row for row in measured}
    names = dict.fromkeys(name for row in measured for name in row
                          if name not in ("trial_id", "trial_number", "objective", "arch"))
    frame = frame.copy()
    for name in names:
        values = [by_trial.get(t, {}).get(name) for t in frame["trial_id"]]
        # A Series infers float64 (NaN where not measured) for the numbers, object for the errors.
        column = pd.Series(values, index=frame.index)
        whole = all(isinstance(v, int) for v in values if v is not None)
        frame[f"serving.{name}"] = column.astype("Int64") if whole else column
    return frame


def time_split(frame: pd.DataFrame, facts: SearchFacts) -> dict[str, float] | None:
    """Where the search's slot time went: its wall time x the trials it ran at once, split into
    the trials' training (`train_time_s`: epochs, validation), their start-up (`startup_s`) and
    the rest (report hand-overs, checkpoints, teardown, waiting); None for an older run."""
    if not (facts.search_wall_s > 0 and facts.concurrency > 0):
        return None
    slot_s = facts.search_wall_s * facts.concurrency
    train_s, startup_s = float(frame["train_time_s"].fillna(0).sum()), float(frame["startup_s"].fillna(0).sum())
    trials = max(1, len(frame))
    return {"slot_s": slot_s, "train_s": train_s, "startup_s": startup_s, "rest_s": slot_s - train_s - startup_s,
            "useful_fraction": train_s / slot_s, "overhead_per_trial_s": (slot_s - train_s) / trials}


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
    shown = [c for c in ("trial_id", "trial_number", "recipe", "status", "epochs", "val_acc", "val_loss",
                         "train_time_s") if c in frame]
    shown += [c for c in ("note",) if c in frame and frame[c].notna().any()]
    params = [c for c in frame.columns if c.startswith("param.") and frame[c].notna().any()]
    view = frame[shown + params].rename(columns=lambda c: c.removeprefix("param."))
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")


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
