"""Calibrated probabilities and test-time augmentation, decided after the search.

Temperature scaling (Guo et al., 2017) fitted on the validation
split after the search, and how well probabilities match accuracy (expected calibration
error, reliability bins) measured on test/.

One number, the temperature T, divides the logits before the softmax: the predicted class
never changes, only how sure the model says it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

BINS = 10
T_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: np.ndarray) -> float:
    """The T > 0 that minimises the cross-entropy of softmax(logits / T) on `labels` (1.0 when
    there is too little to fit on)."""
    if len(labels) < 2:
        return 1.0
    logits, targets = logits.detach().float().cpu(), torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(logits / log_t.exp(), targets)
        value.backward()
        return value

    optimizer.step(loss)
    t = float(log_t.detach().exp())
    return float(np.clip(t, *T_RANGE)) if math.isfinite(t) else 1.0


def softmax(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(logits.detach().float().cpu() / temperature, dim=1).numpy()


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict[str, float | None]]:
    """Predictions grouped by their confidence (the top probability) in `bins` equal bins:
    each bin's count, mean confidence and accuracy (None for an empty bin)."""
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    right = predicted == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(members.sum()),
                     "confidence": float(confidence[members].mean()) if members.any() else None,
                     "accuracy": float(right[members].mean()) if members.any() else None})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """The count-weighted mean gap between confidence and accuracy over the bins."""
    rows = [r for r in reliability(probs, labels, bins) if r["count"]]
    total = sum(r["count"] for r in rows)
    return float(sum(r["count"] * abs(r["confidence"] - r["accuracy"]) for r in rows) / total) if total else 0.0


def calibrate(val_logits: torch.Tensor, val_labels: np.ndarray, test_logits: torch.Tensor,
              test_labels: np.ndarray) -> dict[str, Any]:
    """Fit T on val, measure on test before and after: what meta.json and the report keep."""
    temperature = fit_temperature(val_logits, val_labels)
    before, after = softmax(test_logits), softmax(test_logits, temperature)
    return {"temperature": temperature, "fitted_on": "val",
            "test_ece_before": expected_calibration_error(before, test_labels),
            "test_ece_after": expected_calibration_error(after, test_labels),
            "reliability_before": reliability(before, test_labels),
            "reliability_after": reliability(after, test_labels)}


def choose_tta(plain: torch.Tensor, flipped: torch.Tensor, labels: np.ndarray) -> dict[str, Any]:
    """Whether test-time augmentation by mirroring helps: `flipped` (the mean of each val image's
    and its mirror's logits) is kept only when its val loss is lower than `plain`'s."""
    targets = torch.as_tensor(labels, dtype=torch.long)
    measured = {}
    for name, logits in (("plain", plain), ("flip", flipped)):
        measured[f"val_loss_{name}"] = float(F.cross_entropy(logits.float(), targets))
        measured[f"val_acc_{name}"] = float((logits.argmax(1) == targets).float().mean())
    helps = measured["val_loss_flip"] < measured["val_loss_plain"]
    return {"mode": "flip" if helps else None, **measured}
