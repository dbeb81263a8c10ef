"""The experiment spec: frozen dataclasses that validate every field on construction.

An experiment file builds one `Experiment(...)` value from these classes. A typo, a wrong
type or a value out of range raises `SpecError`, whose one-line message names the field,
the value and what is allowed; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

ARCH_CHOICES = ("small_cnn", "inception_frozen", "inception_partial")
OPTIMIZER_CHOICES = ("rmsprop", "adam", "sgd")
# Inception v3's Mixed_5b .. Mixed_7c: the blocks `unfrozen_blocks` counts from the top.
INCEPTION_BLOCK_COUNT = 11
# torchvision's Inception v3 refuses smaller inputs (its stem shrinks 75 px to 1x1).
INCEPTION_MIN_SIZE_PX = 75
OBJECTIVES = {"val_acc": "max", "val_loss": "min"}


class SpecError(ValueError):
    """A user's experiment is invalid: names the field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")


# --- domains a search parameter can take -------------------------------------------------


@dataclasses.dataclass(frozen=True, init=False)
class Choice:
    """One of a few values (sampled by TPE as a categorical)."""

    options: tuple[Any, ...]

    def __init__(self, *options: Any) -> None:
        if not options:
            raise SpecError("Choice", options, "give at least one option")
        if len(set(options)) != len(options):
            raise SpecError("Choice", options, "options must be distinct")
        object.__setattr__(self, "options", tuple(options))

    def __contains__(self, value: object) -> bool:
        return value in self.options


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            _check_type(f"IntRange.{name}", getattr(self, name), int)
        if self.low > self.high:
            raise SpecError("IntRange", (self.low, self.high), "low must be <= high")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            _check_type(f"{type(self).__name__}.{name}", getattr(self, name), float)
            object.__setattr__(self, name, float(getattr(self, name)))
        if not self.low <= self.high:
            raise SpecError(type(self).__name__, (self.low, self.high), "low must be <= high")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class LogUniform(Uniform):
    """A float drawn log-uniformly from [low, high]; both must be > 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.low <= 0:
            raise SpecError("LogUniform.low", self.low, "must be > 0")


Domain = Union[Choice, IntRange, Uniform]


# --- generic validation ------------------------------------------------------------------


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a tuple of {_describe(typing.get_args(hint)[0])}"
    if origin in (dict, Mapping):
        key, value = typing.get_args(hint)
        return f"a dict of {_describe(key)} -> {_describe(value)}"
    if hint is type(None):
        return "None"
    if hint is float:
        return "a number"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
    if origin in (dict, Mapping):
        key, item = typing.get_args(hint)
        return isinstance(value, Mapping) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_type(field: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise SpecError(field, value, f"expected {_describe(hint)}")


def _require(field: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise SpecError(field, value, allowed)


def spec_class(cls: type) -> type:
    """Make `cls` a frozen keyword-only dataclass whose constructor checks names and types.

    An unknown keyword (a typo) becomes a `SpecError` that lists the allowed fields and
    suggests the closest one; every value is checked against its annotation before the
    class's own `__post_init__` checks ranges.
    """
    cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    generated_init = cls.__init__

    @functools.wraps(generated_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            raise SpecError(cls.__name__, args, "give every field by name, e.g. name=...")
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise SpecError(f"{cls.__name__}.{key}", kwargs[key],
                                f"unknown field; {hint}allowed: {', '.join(names)}")
        for key, value in kwargs.items():
            if isinstance(value, list):  # lists read naturally in a data file; store tuples
                value = kwargs[key] = tuple(value)
            _check_type(f"{cls.__name__}.{key}", value, hints[key])
        generated_init(self, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


# --- the experiment ----------------------------------------------------------------------


@spec_class
class Space:
    """The search space. Each parameter takes a domain to search, or one value to pin it."""

    arch: Choice | str = Choice(*ARCH_CHOICES)
    unfrozen_blocks: IntRange | int = IntRange(1, 3)  # inception_partial only
    head_units: Choice | int = 128  # Inception only: hidden units of the head; 0 = one linear layer
    # inception_frozen with ImageNet weights only: when augmenting, compute the backbone's
    # features of this many augmented views of each image once, and train the head on them
    # (0: augment and run the backbone every epoch). With augment = 0 features are always cached.
    feature_views: Choice | int = 0
    cnn_width: Choice | int = Choice(16, 32, 64)  # small_cnn only: channels of the first conv
    cnn_depth: IntRange | int = IntRange(2, 4)  # small_cnn only: conv blocks
    augment: Uniform | float = Uniform(0.0, 1.0)
    optimizer: Choice | str = Choice(*OPTIMIZER_CHOICES)
    lr: Mapping[str, LogUniform | float] = dataclasses.field(default_factory=lambda: {
        "rmsprop": LogUniform(1e-5, 1e-2),
        "adam": LogUniform(1e-5, 1e-2),
        "sgd": LogUniform(1e-4, 1e-1),
    })
    momentum: Uniform | float = Uniform(0.0, 0.99)  # sgd only
    batch_size: Choice | int = Choice(16, 32, 64)
    dropout: Uniform | float = Uniform(0.0, 0.6)

    def __post_init__(self) -> None:
        _check_values("Space.arch", self.arch, lambda v: v in ARCH_CHOICES,
                      f"one of {', '.join(ARCH_CHOICES)}")
        _check_values("Space.optimizer", self.optimizer, lambda v: v in OPTIMIZER_CHOICES,
                      f"one of {', '.join(OPTIMIZER_CHOICES)}")
        _check_bounds("Space.unfrozen_blocks", self.unfrozen_blocks, 1, INCEPTION_BLOCK_COUNT)
        _check_bounds("Space.head_units", self.head_units, 0, 4096)
        _check_bounds("Space.feature_views", self.feature_views, 0, 64)
        _check_bounds("Space.cnn_width", self.cnn_width, 4, 512)
        _check_bounds("Space.cnn_depth", self.cnn_depth, 1, 6)
        _check_bounds("Space.augment", self.augment, 0.0, 1.0)
        _check_bounds("Space.momentum", self.momentum, 0.0, 0.999)
        _check_bounds("Space.batch_size", self.batch_size, 1, 4096)
        _check_bounds("Space.dropout", self.dropout, 0.0, 0.95)
        for opt in self.optimizers():
            _require("Space.lr", dict(self.lr), opt in self.lr,
                     f"give a learning rate (or LogUniform range) for optimizer {opt!r}")
        for opt, lr in self.lr.items():
            _require(f"Space.lr[{opt!r}]", opt, opt in OPTIMIZER_CHOICES,
                     f"keys must be optimizers: {', '.join(OPTIMIZER_CHOICES)}")
            _check_bounds(f"Space.lr[{opt!r}]", lr, 1e-9, 10.0)
        object.__setattr__(self, "lr", dict(self.lr))

    def archs(self) -> tuple[str, ...]:
        return self.arch.options if isinstance(self.arch, Choice) else (self.arch,)

    def optimizers(self) -> tuple[str, ...]:
        return self.optimizer.options if isinstance(self.optimizer, Choice) else (self.optimizer,)


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(Space))


def _check_values(field: str, domain: Any, ok: typing.Callable[[Any], bool], allowed: str) -> None:
    for value in domain.options if isinstance(domain, Choice) else (domain,):
        _require(field, value, ok(value), allowed)


def _check_bounds(field: str, domain: Any, low: float, high: float) -> None:
    if isinstance(domain, Choice):
        values: tuple[Any, ...] = domain.options
    elif isinstance(domain, (IntRange, Uniform)):
        values = (domain.low, domain.high)
    else:
        values = (domain,)
    for value in values:
        _require(field, value, isinstance(value, (int, float)) and low <= value <= high,
                 f"must lie in [{low:g}, {high:g}]")


@spec_class
class Budget:
    """How much searching: trials, epochs per trial, and ASHA's early-stopping rungs."""

    trials: int = 20
    max_epochs: int = 10
    grace_period_epochs: int = 1  # ASHA never stops a trial before this many epochs
    reduction_factor: int = 2  # ASHA keeps 1/reduction_factor of trials at each rung

    def __post_init__(self) -> None:
        _require("Budget.trials", self.trials, self.trials >= 1, "must be >= 1")
        _require("Budget.max_epochs", self.max_epochs, self.max_epochs >= 1, "must be >= 1")
        _require("Budget.grace_period_epochs", self.grace_period_epochs,
                 1 <= self.grace_period_epochs <= self.max_epochs,
                 f"must lie in [1, max_epochs={self.max_epochs}]")
        _require("Budget.reduction_factor", self.reduction_factor, self.reduction_factor >= 2,
                 "must be >= 2")


@spec_class
class Resources:
    """What one trial takes: `workers` Ray Train workers, each with these CPUs and GPUs.

    `gpus_per_worker="auto"` gives each worker one GPU when the cluster has GPUs, else none;
    a fraction such as 0.25 lets four small trials share one GPU.
    """

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        _require("Resources.workers", self.workers, self.workers >= 1, "must be >= 1")
        _require("Resources.cpus_per_worker", self.cpus_per_worker,
                 0 < self.cpus_per_worker <= 256, "must lie in (0, 256]")
        if self.gpus_per_worker != "auto":
            # Ray shares a GPU between tasks only in fractions of one: 0.25 fits 4 trials on a GPU.
            _require("Resources.gpus_per_worker", self.gpus_per_worker,
                     0 <= self.gpus_per_worker <= 8 and (self.gpus_per_worker <= 1 or self.gpus_per_worker % 1 == 0),
                     "must be 'auto', a fraction in [0, 1] (trials share a GPU) or a whole number up to 8")


@spec_class
class Experiment:
    """One hyperparameter search: data, search space, objective, budget and resources.

    `data` is a folder holding `train/` and `test/`, one subfolder per class; a relative
    path is taken from the current directory. When `generate` names a built-in generator
    and `data` does not exist yet, the folder is generated there on first use.
    """

    name: str
    data: str
    generate: str | None = None
    image_size_px: int = 150
    val_fraction: float = 0.2  # of train/, stratified and seeded; never augmented
    weights: Literal["imagenet", "none"] = "imagenet"  # Inception v3 backbone weights
    space: Space = dataclasses.field(default_factory=Space)
    recipes: tuple[Mapping[str, Any], ...] = ()  # known configurations, evaluated first
    objective: Literal["val_acc", "val_loss"] = "val_acc"
    budget: Budget = dataclasses.field(default_factory=Budget)
    concurrency: int | None = None  # trials at once; None: as many as the cluster fits
    resources: Resources = dataclasses.field(default_factory=Resources)
    seed: int = 0

    def __post_init__(self) -> None:
        _require("Experiment.name", self.name, bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name)),
                 "letters, digits, '_', '.', '-', starting with a letter or digit")
        _require("Experiment.data", self.data, bool(self.data.strip()), "a folder path")
        _require("Experiment.image_size_px", self.image_size_px, 16 <= self.image_size_px <= 1024,
                 "must lie in [16, 1024]")
        if any(a.startswith("inception") for a in self.space.archs()):
            _require("Experiment.image_size_px", self.image_size_px,
                     self.image_size_px >= INCEPTION_MIN_SIZE_PX,
                     f"must be >= {INCEPTION_MIN_SIZE_PX} when the space includes Inception v3")
        _require("Experiment.val_fraction", self.val_fraction, 0 < self.val_fraction < 1,
                 "must lie strictly between 0 and 1")
        if self.concurrency is not None:
            _require("Experiment.concurrency", self.concurrency, self.concurrency >= 1,
                     "must be >= 1 or None")
        for i, recipe in enumerate(self.recipes):
            for key in recipe:
                _require(f"Experiment.recipes[{i}]", key, key in PARAM_NAMES,
                         f"keys must be search parameters: {', '.join(PARAM_NAMES)}")

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]


def load_experiment(path: str | Path) -> Experiment:
    """Run an experiment file and return the one `Experiment` value it defines."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("experiment", str(path), "a path to an existing experiment file (.py)")
    namespace: dict[str, Any] = {"__name__": f"experiment:{path.stem}", "__file__": str(path)}
    try:
        code = compile(path.read_text(), str(path), "exec")
    except SyntaxError as err:
        raise SpecError("experiment", str(path), f"valid Python (line {err.lineno}: {err.msg})") from None
    exec(code, namespace)  # experiment files are Python, like any Ray script: they run code
    found = [v for v in namespace.values() if isinstance(v, Experiment)]
    if len(found) != 1:
        raise SpecError("experiment", str(path), f"exactly one Experiment(...) value (found {len(found)})")
    return found[0]


def replace(experiment: Experiment, **changes: Any) -> Experiment:
    """A copy with fields changed, validated like the original (CLI overrides use this)."""
    values = {f.name: getattr(experiment, f.name) for f in dataclasses.fields(experiment)}
    values.update(changes)
    return Experiment(**values)
