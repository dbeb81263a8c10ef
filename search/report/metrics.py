"""The numbers the page shows beyond the table: per-class scores on test/, Optuna's parameter importances."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from search.report.stored import SearchFacts


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
