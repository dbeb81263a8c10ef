"""The optimizers the search chooses from, registered under the names the space uses."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], float, float], torch.optim.Optimizer]

REGISTRY: dict[str, OptimizerFactory] = {
    # rho 0.9 and eps 1e-7 are Keras's RMSprop defaults, which the tutorials' recipes assume.
    "rmsprop": lambda params, lr, momentum: torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7),
    "adam": lambda params, lr, momentum: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr, momentum: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0),
}


def create_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float,
                     momentum: float | None = None) -> torch.optim.Optimizer:
    """Build optimizer `name` over the trainable `params`."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ValueError(f"optimizer {name!r} is not registered; allowed: {', '.join(REGISTRY)}") from None
    return factory(params, lr, momentum or 0.0)
