"""The search space as an Optuna define-by-run function, and the `HParams` each sample resolves to.

Conditional parameters are only asked for when their parent makes them matter: each
architecture's own ones (its `searches` in `trainables.archs.ARCHS`: `cnn_width`/`cnn_depth`
for `small_cnn`, `unfrozen_blocks` for a partly unfrozen backbone, ...), `momentum` for
`sgd`, and one learning rate per optimizer (`lr_<optimizer>`), so TPE models each
optimizer's learning rate on its own. Pinned parameters are returned as constants, which
Ray Tune merges into the trial's config.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from search.experiment.spec import Choice, Domain, Experiment, IntRange, LogUniform, Space, Uniform
from trainables.archs import ARCHS
from trainables.hparams import HParams
from trainables.optimizers import OPTIMIZERS


def _ask(trial: Any, name: str, domain: Any, constants: dict[str, Any]) -> Any:
    if isinstance(domain, Choice):
        return trial.suggest_categorical(name, list(domain.options))
    if isinstance(domain, IntRange):
        return trial.suggest_int(name, domain.low, domain.high)
    if isinstance(domain, Uniform):
        return trial.suggest_float(name, domain.low, domain.high, log=isinstance(domain, LogUniform))
    constants[name] = domain
    return domain


def define_space(space: Space, trial: Any) -> dict[str, Any]:
    """Ask `trial` (an Optuna trial) for one configuration; returns the pinned constants."""
    constants: dict[str, Any] = {}
    arch = _ask(trial, "arch", space.arch, constants)
    for name in ARCHS[arch].searches:
        _ask(trial, name, getattr(space, name), constants)
    _ask(trial, "augment", space.augment, constants)
    optimizer = _ask(trial, "optimizer", space.optimizer, constants)
    _ask(trial, f"lr_{optimizer}", space.lr[optimizer], constants)
    for name in OPTIMIZERS[optimizer].searches:
        _ask(trial, name, getattr(space, name), constants)
    _ask(trial, "batch_size", space.batch_size, constants)
    _ask(trial, "dropout", space.dropout, constants)
    return constants


def space_function(space: Space) -> Callable[[Any], dict[str, Any]]:
    """A picklable define-by-run function for the searcher (`search.driver.study_searcher.StudySearch`)."""
    return functools.partial(define_space, space)


def hparams(config: Mapping[str, Any], weights: str) -> HParams:
    """Resolve a trial config (Optuna's parameter names) to the trainables' hyperparameters;
    parameters the drawn architecture or optimizer does not use stay None."""
    arch, optimizer = config["arch"], config["optimizer"]
    conditional = {name: config.get(name) for name in (*ARCHS[arch].searches, *OPTIMIZERS[optimizer].searches)}
    return HParams(arch=arch, optimizer=optimizer, lr=config[f"lr_{optimizer}"], batch_size=config["batch_size"],
                   augment=config["augment"], dropout=config["dropout"], weights=weights, **conditional)


def recipe_points(experiment: Experiment) -> list[dict[str, Any]]:
    """Translate the experiment's recipes into Optuna points to evaluate first: their searched
    parameters under Optuna's names (the spec has checked every value against the space)."""
    space = experiment.space
    points = []
    for recipe in experiment.recipes:
        optimizer = space.recipe_optimizer(recipe)
        points.append({f"lr_{optimizer}" if name == "lr" else name: value for name, value in recipe.items()
                       if isinstance(space.domain(name, optimizer), Domain)})
    return points


def without_random_frozen_backbones(experiment: Experiment) -> tuple[Experiment, str | None]:
    """The experiment without the frozen backbones it cannot learn from, and a note saying so.

    With `weights="none"` a frozen backbone is a random feature extractor: its head trains on
    noise and the trial ends at chance level. Such architectures are left out of a searched
    `arch` (with the recipes that name them); pinning `arch` to one keeps it.
    """
    arch = experiment.space.arch
    if experiment.weights != "none" or not isinstance(arch, Choice):
        return experiment, None
    dropped = [a for a in arch.options if ARCHS[a].freeze == "all"]
    kept = [a for a in arch.options if a not in dropped]
    if not dropped or not kept:
        return experiment, None
    recipes = tuple(r for r in experiment.recipes if r.get("arch") not in dropped)
    lost = len(experiment.recipes) - len(recipes)
    note = (f"note: {', '.join(dropped)} left out of the space: with weights='none' a frozen backbone is a "
            "random feature extractor and its head cannot learn from it"
            + (f" ({lost} recipe{'s' * (lost > 1)} naming it dropped too)" if lost else "")
            + "; pin Space(arch=...) to it to search it anyway")
    space = dataclasses.replace(experiment.space, arch=Choice(*kept) if len(kept) > 1 else kept[0])
    return dataclasses.replace(experiment, space=space, recipes=recipes), note
