"""The page's numbers: per-class scores counted by hand, and Optuna's importances or why there are none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.report.metrics import classification, param_importances
from tests.search.report.test_table import CLASSES, fake_run, fake_study


def test_classification_report_counts_by_hand() -> None:
    true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])  # fox is never predicted
    confusion, per_class = classification(true, predicted, CLASSES)
    assert confusion.tolist() == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    rows = per_class.set_index("class")
    assert rows.loc["cat", ["precision", "recall"]].tolist() == [1.0, pytest.approx(2 / 3)]
    assert rows.loc["dog", ["precision", "recall", "f1"]].tolist() == [0.5, 1.0, pytest.approx(2 / 3)]
    assert rows.loc["fox", ["precision", "recall", "f1", "support"]].tolist() == [0, 0, 0, 1]
    assert rows.loc["macro avg", "recall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert rows.loc["weighted avg", "recall"] == pytest.approx(4 / 6)  # = accuracy


def test_importance_is_computed_or_its_absence_explained(tmp_path: Path) -> None:
    facts = fake_run().facts
    values, note = param_importances(tmp_path, facts)
    assert values is None and "optuna.db" in note
    fake_study(tmp_path, [0.5])
    values, note = param_importances(tmp_path, facts)
    assert values is None and "1 finished trial" in note
    (tmp_path / "optuna.db").unlink()
    fake_study(tmp_path, [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.15, 0.85, 0.25, 0.75, 0.05, 0.95])
    values, _ = param_importances(tmp_path, facts)
    assert set(values) == {"lr", "optimizer"} and sum(values.values()) == pytest.approx(1.0)
