"""One trial's hyperparameters as a typed, frozen value: what the model, `fit` and the export read.

The search builds it once from Optuna's sample (`search.experiment.space.hparams`); the trial, the
training loop, the exported `meta.json` and the report all take this one value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HParams:
    """A resolved configuration. Conditional hyperparameters are None when the drawn
    architecture or optimizer does not use them (`momentum` for sgd only, ...)."""

    arch: str
    optimizer: str
    lr: float
    batch_size: int
    augment: float = 0.0
    dropout: float = 0.0
    weights: str = "none"  # the backbone's: "imagenet" or "none"
    unfrozen_blocks: int | None = None
    head_units: int | None = None
    feature_views: int | None = None
    cnn_width: int | None = None
    cnn_depth: int | None = None
    momentum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HParams:
        """From `to_dict`'s output (as stored in meta.json); unknown keys are an error."""
        return cls(**values)

    def replace(self, **changes: Any) -> HParams:
        return dataclasses.replace(self, **changes)


# The searched names, in the report's column order (weights is the experiment's, not searched).
SEARCHED = ("arch", "unfrozen_blocks", "head_units", "feature_views", "cnn_width", "cnn_depth", "augment",
            "optimizer", "lr", "momentum", "batch_size", "dropout")
