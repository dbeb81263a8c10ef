"""The report's table (a trial's row: best epoch, status, recipe), the run stored for it, and
`python -m search.report` rebuilding the report from it; all without Ray. The fake finished
search here serves the report's other tests too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.experiment.space import hparams
from search.report import stored, table
from search.report.page import build
from search.report.stored import SearchFacts, StoredRun, TrialRecord
from search.report.table import trial_row
from search.state.names import (
    GRID_FILE,
    HISTORY_FILE,
    INPUTS_FILE,
    PREDICTIONS_FILE,
    REPORT_CSV,
    REPORT_HTML,
    REPORT_MD,
)
from tests.conftest import cli_env

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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "fox"]


def _config(optimizer: str, lr: float, width: int, **extra) -> dict:
    return {"arch": "small_cnn", "cnn_width": width, "cnn_depth": 2, "augment": 0.1, "optimizer": optimizer,
            f"lr_{optimizer}": lr, "batch_size": 32, "dropout": 0.2, **extra}


def _epochs(trial: str, val_acc: list[float]) -> pd.DataFrame:
    n = len(val_acc)
    return pd.DataFrame({"epoch": range(1, n + 1), "train_loss": np.linspace(1.2, 0.6, n), "train_acc": val_acc,
                         "val_loss": [1 - v for v in val_acc], "val_acc": val_acc,
                         "train_time_s": np.arange(1, n + 1) * 2.0, "startup_s": 10.0,
                         "checkpoint_path": [f"/ckpt/{trial}/epoch-{e}" for e in range(1, n + 1)]})


def fake_run(seed: int = 0) -> StoredRun:
    """A finished 5-trial search as finish() stores it: 2 completed, 2 stopped by ASHA, 1 error."""
    facts = SearchFacts(name="fake", objective="val_acc", mode="max", max_epochs=4, trials=5, grace_period_epochs=1,
                        reduction_factor=2, recipe_points=[{"lr_adam": 1e-3}], classes=CLASSES, image_size_px=16,
                        study_file="optuna.db")
    trials = [TrialRecord("aaaa", 1, _config("adam", 1e-3, 16), None),
              TrialRecord("bbbb", 2, _config("sgd", 3e-2, 8, momentum=0.9), None),
              TrialRecord("cccc", 3, _config("adam", 2e-4, 8), None),
              TrialRecord("dddd", 4, _config("sgd", 1e-3, 16, momentum=0.5), None),
              TrialRecord("eeee", 5, _config("adam", 5e-2, 16), "Traceback ...\nFloatingPointError: diverged")]
    history = stored.history_frame({"aaaa": _epochs("aaaa", [0.4, 0.6, 0.8, 0.75]),
                                    "bbbb": _epochs("bbbb", [0.5, 0.55, 0.6, 0.6]),
                                    "cccc": _epochs("cccc", [0.3]), "dddd": _epochs("dddd", [0.35, 0.4]),
                                    "eeee": None})
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 4)
    probabilities = rng.dirichlet(np.ones(3), size=len(labels))
    probabilities[:8] = np.eye(3)[labels[:8]] * 0.7 + 0.1  # 8 right, the rest as they fall
    predictions = table.predictions_frame([f"test/{CLASSES[y]}/{i}.jpg" for i, y in enumerate(labels)], labels,
                                           probabilities, CLASSES)
    shown = table.grid_indices(predictions)
    images = rng.integers(0, 256, size=(len(labels), 16, 16, 3), dtype=np.uint8)
    hp = hparams(trials[0].config, "none").to_dict()
    accuracy = float((predictions["true"] == predictions["predicted"]).mean())
    best = {"trial_id": "aaaa", "trial_number": 1, "epoch": 3, "hparams": hp, "test_images": len(labels),
            "metrics": {"val_acc": 0.8, "val_loss": 0.2, "train_acc": 0.8, "train_loss": 0.8, "epochs_run": 4,
                        "test_acc": accuracy, "test_loss": 0.9}}
    return StoredRun(facts, trials, history, best, predictions, (shown, images[shown]))


def fake_study(out: Path, values: list[float], name: str = "fake") -> None:
    """An Optuna study in out/optuna.db with one finished trial per value (lr and optimizer)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}", direction="maximize")
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
                     "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"])}
    for i, value in enumerate(values):
        params = {"lr": 10 ** (-4 + 3 * value), "optimizer": ["adam", "sgd"][i % 2]}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))


def test_ties_go_to_the_earlier_trial() -> None:
    rows = [trial_row(t, n, CONFIG, HISTORY, None, "val_acc", "max", 3, []) for t, n in (("late", 2), ("early", 1))]
    assert list(table.table(rows, "val_acc", "max")["trial_id"]) == ["early", "late"]


def test_a_stored_run_loads_back_to_the_same_table(tmp_path: Path) -> None:
    run = fake_run()
    stored.store(tmp_path, run)
    loaded = stored.load(tmp_path)
    assert loaded.facts == run.facts and loaded.trials == run.trials and loaded.best == run.best
    expected = table.trial_table(run.trials, run.history, run.facts)
    pd.testing.assert_frame_equal(table.trial_table(loaded.trials, loaded.history, loaded.facts), expected)
    assert list(expected["trial_id"]) == ["aaaa", "bbbb", "dddd", "cccc", "eeee"]
    assert list(expected["status"]) == ["completed", "completed", "early_stopped", "early_stopped", "error"]
    assert (loaded.grid[1] == run.grid[1]).all()
    assert list(loaded.predictions["predicted"]) == list(run.predictions["predicted"])


def test_the_grid_shows_mistakes_first_and_every_class() -> None:
    run = fake_run()
    shown = run.predictions.iloc[table.grid_indices(run.predictions, count=6)]
    wrong = shown["true"] != shown["predicted"]
    assert len(shown) == 6 and wrong.sum() == 3 and set(shown.loc[~wrong, "true"]) == set(CLASSES)


def run_report_cli(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.report", str(out)], capture_output=True, text=True,
                          env=cli_env(), timeout=120)


def assert_report_rebuilds(out: Path, trials: int) -> None:
    """What a finished search leaves for its report (end-to-end tests call this): the pages,
    the Optuna study with every trial, and `python -m search.report` rebuilding the same table."""
    import optuna

    for name in (REPORT_MD, REPORT_HTML, REPORT_CSV, INPUTS_FILE, HISTORY_FILE, PREDICTIONS_FILE, GRID_FILE):
        assert (out / name).is_file(), name
    facts = stored.load(out).facts
    assert len(optuna.load_study(study_name=facts.name, storage=f"sqlite:///{out / 'optuna.db'}").trials) == trials
    before = (out / REPORT_CSV).read_bytes()
    (out / REPORT_CSV).unlink()
    (out / REPORT_HTML).unlink()
    proc = run_report_cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / REPORT_CSV).read_bytes() == before and (out / REPORT_HTML).is_file()


def test_the_cli_rebuilds_an_identical_report(tmp_path: Path) -> None:
    run = fake_run()
    stored.store(tmp_path, run)
    build(tmp_path, run)
    before = {name: (tmp_path / name).read_bytes() for name in (REPORT_CSV, REPORT_MD)}
    for name in before:
        (tmp_path / name).unlink()
    proc = run_report_cli(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("make", [lambda p: p / "nowhere", lambda p: p])
def test_the_cli_on_a_folder_without_a_search_is_one_line_exit_2(tmp_path: Path, make) -> None:
    proc = run_report_cli(make(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(tmp_path) in lines[0]


def test_an_interrupted_trial_is_unfinished_not_early_stopped() -> None:
    cut = trial_row("abc", 2, CONFIG, HISTORY.iloc[:1], None, "val_acc", "max", 3, [], unfinished=True)
    assert cut["status"] == "unfinished" and cut["epochs"] == 1
    never = trial_row("def", 3, CONFIG, None, None, "val_acc", "max", 3, [], unfinished=True)
    assert never["status"] == "unfinished" and never["epochs"] == 0
    failed = trial_row("ghi", 4, CONFIG, None, RuntimeError("x"), "val_acc", "max", 3, [], unfinished=True)
    assert failed["status"] == "error"


def test_where_the_time_went_splits_slot_time_and_older_runs_have_none(tmp_path: Path) -> None:
    import dataclasses

    run = fake_run()
    frame = table.trial_table(run.trials, run.history, run.facts)
    assert table.time_split(frame, run.facts) is None  # a run stored before the split was recorded
    timed = dataclasses.replace(run, facts=dataclasses.replace(run.facts, concurrency=2, search_wall_s=100.0))
    split = table.time_split(frame, timed.facts)
    train_s, startup_s = frame["train_time_s"].sum(), frame["startup_s"].sum()
    assert split["slot_s"] == 200.0 and split["train_s"] == pytest.approx(train_s)
    assert split["rest_s"] == pytest.approx(200.0 - train_s - startup_s)
    assert split["useful_fraction"] == pytest.approx(train_s / 200.0)
    build(tmp_path, timed)
    page = (tmp_path / REPORT_MD).read_text()
    assert "## Where the time went" in page and f"Useful fraction **{train_s / 200:.2f}**" in page
