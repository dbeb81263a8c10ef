"""The name of every file and folder a search writes into OUT, in one place.

    OUT/
      manifest.json         what search OUT holds (fingerprints) and where it stands
      .lock                 held by the search running in OUT (search.state.manifest)
      experiment.txt        the experiment as run (its repr)
      data_report.csv       every data file's fate: used, skipped, ignored, leakage
      optuna.db             the Optuna study (optuna-dashboard sqlite:///OUT/optuna.db)
      tune/                 Ray Tune's experiment state (what --resume restores)
      train/                every trial's Ray Train checkpoints (STATE_FILE in each)
      report.csv, report.parquet, report.md, report.html, plots/
      report_inputs.json, history.parquet, test_predictions.csv, test_grid.npz
                            what `python -m search.report OUT` rebuilds the report from
      summary.json          the run's outcome in numbers
      mlflow.json           where the search is tracked in MLflow, if it is (search.tracking)
      best/                 model.pt, model.onnx, meta.json (and onnx_export.log on failure)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
EXPERIMENT_FILE = "experiment.txt"
DATA_REPORT_FILE = "data_report.csv"
STUDY_FILE = "optuna.db"
TUNE_DIR = "tune"
TRAIN_DIR = "train"
# Written by Ray straight to the destination (a URI on a cluster), never through the local folder.
RAY_DIRS = (TUNE_DIR, TRAIN_DIR)


def round_dir(number: int) -> str:
    """The folder of a search's `number`th Tune run: OUT/tune, then OUT/tune-2, ... (`search.driver.search_loop`)."""
    return TUNE_DIR if number == 1 else f"{TUNE_DIR}-{number}"


def is_ray_dir(name: str) -> bool:
    """Whether an entry of OUT is one of Ray's folders (`RAY_DIRS`, or a later round's Tune folder)."""
    return name in RAY_DIRS or (name.startswith(f"{TUNE_DIR}-") and name[len(TUNE_DIR) + 1:].isdigit())


STATE_FILE = "state.pt"  # inside each checkpoint folder
REPORT_CSV = "report.csv"
REPORT_PARQUET = "report.parquet"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOTS_DIR = "plots"
INPUTS_FILE = "report_inputs.json"
HISTORY_FILE = "history.parquet"
PREDICTIONS_FILE = "test_predictions.csv"
GRID_FILE = "test_grid.npz"
SUMMARY_FILE = "summary.json"
TRACKING_FILE = "mlflow.json"
BEST_DIR = "best"
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
ONNX_LOG = "onnx_export.log"
META_FILE = "meta.json"


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for NumPy scalars (metrics and configs hold them)."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON (NumPy scalars allowed), ending with a newline."""
    path.write_text(json.dumps(value, indent=2, default=json_default) + "\n")
