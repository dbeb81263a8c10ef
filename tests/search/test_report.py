"""A trial's row in the report: its best epoch, its status, its recipe."""

from __future__ import annotations

import pandas as pd
import pytest

from search.report import trial_row

HISTORY = pd.DataFrame({"epoch": [1, 2, 3], "val_acc": [0.5, 0.75, 0.75], "val_loss": [1.0, 0.6, 0.6],
                        "train_acc": [0.4, 0.7, 0.8], "train_loss": [1.1, 0.7, 0.5], "train_time_s": [1.0, 2.0, 3.0],
                        "startup_s": [9.0, 9.0, 9.0], "checkpoint_path": ["e1", "e2", "e3"]})
CONFIG = {"arch": "small_cnn", "cnn_width": 16, "cnn_depth": 2, "augment": 0.1, "optimizer": "adam",
          "lr_adam": 1e-3, "batch_size": 32, "dropout": 0.2}


@pytest.mark.parametrize("objective, mode", [("val_acc", "max"), ("val_loss", "min")])
def test_best_epoch_and_ties_go_to_the_latest_epoch_whose_checkpoint_ray_keeps(objective: str, mode: str) -> None:
    row = trial_row("abc", 1, CONFIG, HISTORY, None, objective, mode, 3, [])
    assert row["checkpoint_path"] == "e3" and row["val_acc"] == 0.75 and row["train_acc"] == 0.8
    assert row["epochs"] == 3 and row["status"] == "completed" and row["train_time_s"] == 3.0


def test_status_recipe_and_params() -> None:
    stopped = trial_row("abc", 2, CONFIG, HISTORY.iloc[:1], None, "val_acc", "max", 3, [{"lr_adam": 1e-3}])
    assert stopped["status"] == "early_stopped" and stopped["recipe"] == 1 and stopped["trial_number"] == 2
    assert stopped["param.lr"] == 1e-3 and stopped["param.unfrozen_blocks"] is None
    failed = trial_row("abc", 3, CONFIG, None, RuntimeError("boom\nFloatingPointError: diverged"), "val_acc", "max",
                       3, [{"lr_adam": 5e-3}])
    assert failed["status"] == "error" and failed["error"] == "FloatingPointError: diverged"
    assert failed["recipe"] is None and failed["epochs"] == 0
