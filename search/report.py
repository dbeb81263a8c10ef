"""The results table: one row per trial, sorted by the objective, saved as CSV and Parquet."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from search.space import HPARAM_NAMES, hparams

COLUMNS = ("trial_id", "trial_number", "recipe", "status", "epochs", "val_acc", "val_loss", "train_acc", "train_loss",
           "train_time_s", "startup_s", "error")


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
    params = hparams(config) if "optimizer" in config else {}
    for name in HPARAM_NAMES:
        row[f"param.{name}"] = params.get(name)
    return row


def table(rows: list[dict[str, Any]], objective: str, mode: str) -> pd.DataFrame:
    """Rows sorted best first (errors last), with a clean index."""
    frame = pd.DataFrame(rows)
    frame["epochs"] = frame["epochs"].astype("int64")
    frame["recipe"] = frame["recipe"].astype("Int64")
    return frame.sort_values(objective, ascending=mode == "min", na_position="last", kind="stable").reset_index(drop=True)


def save(frame: pd.DataFrame, out: Path) -> None:
    """Write `report.csv` and `report.parquet` into `out` (without internal columns)."""
    public = frame.drop(columns=["checkpoint_path"], errors="ignore")
    public.to_csv(out / "report.csv", index=False)
    # Parquet wants one type per column; parameters mix None with numbers or strings.
    public.astype({c: "string" for c in public.columns if public[c].dtype == object}).to_parquet(
        out / "report.parquet", index=False)


def render(frame: pd.DataFrame) -> str:
    """A compact text table for the console."""
    shown = [c for c in ("trial_id", "trial_number", "recipe", "status", "epochs", "val_acc", "val_loss", "train_time_s") if c in frame]
    params = [c for c in frame.columns if c.startswith("param.") and frame[c].notna().any()]
    view = frame[shown + params].rename(columns=lambda c: c.removeprefix("param."))
    return view.to_string(index=False, float_format=lambda v: f"{v:.4g}")
