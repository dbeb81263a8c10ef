"""The report's figures: every one a real PNG, also for the awkward cases a search can end in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.report import plots
from search.report.stored import trial_history
from search.report.table import trial_table
from tests.search.report.test_table import CLASSES, PNG_SIGNATURE, fake_run


def assert_png(path: Path, min_width: int = 200, min_height: int = 150) -> np.ndarray:
    """`path` is a PNG that PIL reads, of a useful size; returns its RGB pixels."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= min_height, image.size
        return np.asarray(image.convert("RGB"))


def red_pixels(pixels: np.ndarray) -> int:
    """Pixels close to the colour mistakes are marked with."""
    target = np.array([int(plots.WRONG_COLOR[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - target).sum(axis=2) < 40).sum())


@pytest.fixture(scope="module")
def run_and_table():
    run = fake_run()
    return run, trial_table(run.trials, run.history, run.facts)


def test_learning_curves_and_trial_curves(tmp_path: Path, run_and_table) -> None:
    run, table = run_and_table
    assert_png(plots.learning_curves(trial_history(run.history, "aaaa"), "aaaa", tmp_path / "a.png"))
    assert_png(plots.trial_curves(run.history, table, "val_acc", run.best, [1, 2], 4, tmp_path / "b.png"))
    # no winner (every trial failed), a single epoch, no rungs
    one = run.history[run.history["trial_id"] == "cccc"]
    assert_png(plots.trial_curves(one, table[table["trial_id"] == "cccc"], "val_acc", None, [], 1, tmp_path / "c.png"))


@pytest.mark.parametrize("mode", ["max", "min"])
def test_parallel_coordinates_with_categories_and_unused_parameters(tmp_path: Path, run_and_table, mode: str) -> None:
    _, table = run_and_table
    # momentum is used by the sgd trials only, optimizer is a category, lr spans two decades (log
    # axis), and the errored trial has no objective value
    assert table["param.momentum"].isna().any() and table["param.momentum"].notna().any()
    assert table["val_acc"].isna().sum() == 1
    objective = "val_acc" if mode == "max" else "val_loss"
    assert_png(plots.parallel_coordinates(table, objective, mode, "aaaa", tmp_path / "p.png"))


def test_parallel_coordinates_of_one_trial_and_nothing_varied(tmp_path: Path, run_and_table) -> None:
    _, table = run_and_table
    assert_png(plots.parallel_coordinates(table.head(1), "val_acc", "max", "aaaa", tmp_path / "p.png"),
               min_width=150)


def test_importance_bars(tmp_path: Path) -> None:
    assert_png(plots.importance_bars({"lr": 0.7, "optimizer": 0.2, "dropout": 0.1}, tmp_path / "i.png"))


def test_confusion_heatmap(tmp_path: Path) -> None:
    confusion = np.array([[3, 1, 0], [0, 4, 0], [1, 0, 2]])
    assert_png(plots.confusion_heatmap(confusion, CLASSES, tmp_path / "c.png"))


def test_image_grid_marks_mistakes_in_red(tmp_path: Path) -> None:
    images = np.full((7, 16, 16, 3), 128, dtype=np.uint8)  # grey: no red of their own
    true = ["cat", "dog", "fox", "cat", "dog", "fox", "cat"]
    right = assert_png(plots.image_grid(images, true, true, [0.9] * 7, tmp_path / "right.png"))
    wrong = assert_png(plots.image_grid(images, true, ["dog", *true[1:]], [0.9] * 7, tmp_path / "wrong.png"))
    assert red_pixels(right) == 0 and red_pixels(wrong) > 100


def test_one_image_grid(tmp_path: Path) -> None:
    images = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    assert_png(plots.image_grid(images, ["cat"], ["cat"], [0.5], tmp_path / "g.png"), min_width=100, min_height=100)

