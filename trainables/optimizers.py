"""The optimizers the search chooses from, registered under the names the space uses.

Adding one is one entry in `OPTIMIZERS`: how to build it, the learning rates a `Space()`
searches for it by default, and the `Space` fields it samples besides (`momentum` for sgd).
The table imports no torch, so the experiment spec can read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the search space."""

    build: Callable[[Any, Iterable[Any], float, float], Any]  # (torch.optim, params, lr, momentum) -> optimizer
    lr_range: tuple[float, float]  # the log-uniform learning rates a Space() searches by default
    searches: tuple[str, ...] = ()  # Space fields it samples besides its learning rate


OPTIMIZERS: dict[str, OptimizerSpec] = {
    # rho 0.9 and eps 1e-7 are Keras's RMSprop defaults, which the tutorials' recipes assume.
    "rmsprop": OptimizerSpec(lambda optim, params, lr, momentum: optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7),
                             lr_range=(1e-5, 1e-2)),
    "adam": OptimizerSpec(lambda optim, params, lr, momentum: optim.Adam(params, lr=lr), lr_range=(1e-5, 1e-2)),
    "sgd": OptimizerSpec(lambda optim, params, lr, momentum: optim.SGD(params, lr=lr, momentum=momentum,
                                                                        nesterov=momentum > 0),
                         lr_range=(1e-4, 1e-1), searches=("momentum",)),
}


def create_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                     momentum: float | None = None) -> torch.optim.Optimizer:
    """Build optimizer `name` over the trainable `params`."""
    import torch

    try:
        spec = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"optimizer {name!r} is not registered; allowed: {', '.join(OPTIMIZERS)}") from None
    return spec.build(torch.optim, params, lr, momentum or 0.0)
