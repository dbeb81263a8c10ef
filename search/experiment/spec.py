"""The experiment spec: frozen dataclasses that validate every field on construction.

An experiment file builds one `Experiment(...)` value from these classes. A typo, a wrong
type or a value out of range raises `SpecError`, whose one-line message names the field,
the value and what is allowed; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from search.experiment.domains import (
    Choice,
    Domain,
    IntRange,
    LogUniform,
    SpecError,
    Uniform,
    check_bounds,
    check_values,
    parse_duration,
    require,
    spec_class,
)
from trainables.archs import ARCHS, default_archs
from trainables.optimizers import OPTIMIZERS

__all__ = ["Budget", "Choice", "Domain", "Experiment", "IntRange", "LogUniform", "Resources", "Space", "SpecError",
           "Uniform", "load_experiment", "replace"]

OBJECTIVES = {"val_acc": "max", "val_loss": "min"}
SELECT_ALLOWED = ("'accuracy', or 'fastest_within=D' with D a number >= 0 in the objective's units "
                  "(e.g. 'fastest_within=0.01')")
MAX_SEED = 2**32 - 1


# --- the experiment ----------------------------------------------------------------------


@spec_class
class Space:
    """The search space. Each parameter takes a domain to search, or one value to pin it."""

    # Names of trainables.archs.ARCHS. By default the tutorials' three, plus every other
    # pretrained backbone whose ImageNet weights are already on this machine.
    arch: Choice | str = dataclasses.field(default_factory=lambda: Choice(*default_archs()))
    unfrozen_blocks: IntRange | int = IntRange(1, 3)  # *_partial only: top blocks trained
    head_units: Choice | int = 128  # pretrained backbones only: hidden units of the head; 0 = one linear layer
    # *_frozen with ImageNet weights only: when augmenting, compute the backbone's
    # features of this many augmented views of each image once, and train the head on them
    # (0: augment and run the backbone every epoch). With augment = 0 features are always cached.
    feature_views: Choice | int = 0
    cnn_width: Choice | int = Choice(16, 32, 64)  # small_cnn only: channels of the first conv
    cnn_depth: IntRange | int = IntRange(2, 4)  # small_cnn only: conv blocks
    augment: Uniform | float = Uniform(0.0, 1.0)
    # Names of trainables.optimizers.OPTIMIZERS: one entry there adds one here, its lr range with it.
    optimizer: Choice | str = dataclasses.field(default_factory=lambda: Choice(*OPTIMIZERS))
    lr: Mapping[str, LogUniform | float] = dataclasses.field(default_factory=lambda: {
        name: LogUniform(*optimizer.lr_range) for name, optimizer in OPTIMIZERS.items()})
    momentum: Uniform | float = Uniform(0.0, 0.99)  # sgd only
    batch_size: Choice | int = Choice(16, 32, 64)
    dropout: Uniform | float = Uniform(0.0, 0.6)

    def __post_init__(self) -> None:
        check_values("Space.arch", self.arch, lambda v: v in ARCHS, f"one of {', '.join(ARCHS)}")
        check_values("Space.optimizer", self.optimizer, lambda v: v in OPTIMIZERS,
                      f"one of {', '.join(OPTIMIZERS)}")
        partial = [ARCHS[a] for a in self.archs() if ARCHS[a].freeze == "partial"]
        # The fewest blocks of the partial backbones searched: every one must have that many.
        check_bounds("Space.unfrozen_blocks", self.unfrozen_blocks, 1,
                     min((a.blocks for a in partial), default=max(a.blocks for a in ARCHS.values())))
        check_bounds("Space.head_units", self.head_units, 0, 4096)
        check_bounds("Space.feature_views", self.feature_views, 0, 64)
        check_bounds("Space.cnn_width", self.cnn_width, 4, 512)
        check_bounds("Space.cnn_depth", self.cnn_depth, 1, 6)
        check_bounds("Space.augment", self.augment, 0.0, 1.0)
        check_bounds("Space.momentum", self.momentum, 0.0, 0.999)
        check_bounds("Space.batch_size", self.batch_size, 1, 4096)
        check_bounds("Space.dropout", self.dropout, 0.0, 0.95)
        for opt in self.optimizers():
            require("Space.lr", dict(self.lr), opt in self.lr,
                     f"give a learning rate (or LogUniform range) for optimizer {opt!r}")
        for opt, lr in self.lr.items():
            require(f"Space.lr[{opt!r}]", opt, opt in OPTIMIZERS,
                     f"keys must be optimizers: {', '.join(OPTIMIZERS)}")
            check_bounds(f"Space.lr[{opt!r}]", lr, 1e-9, 10.0)
        object.__setattr__(self, "lr", dict(self.lr))

    def archs(self) -> tuple[str, ...]:
        return self.arch.options if isinstance(self.arch, Choice) else (self.arch,)

    def optimizers(self) -> tuple[str, ...]:
        return self.optimizer.options if isinstance(self.optimizer, Choice) else (self.optimizer,)

    def recipe_optimizer(self, recipe: Mapping[str, Any]) -> str | None:
        """The optimizer a recipe trains with: its own, else the one the space pins (None if searched)."""
        return recipe.get("optimizer", self.optimizer if isinstance(self.optimizer, str) else None)

    def domain(self, name: str, optimizer: str | None) -> Any:
        """What the space gives parameter `name` (a domain, or its pinned value); `lr` is per optimizer."""
        if name == "lr":
            return self.lr[optimizer] if optimizer else None
        return getattr(self, name)


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(Space))


@spec_class
class Budget:
    """How much searching: trials, epochs per trial, ASHA's early-stopping rungs, and when to
    end the search early: `time` ("2h", "90m", seconds) or `stop_when_stalled` finished trials
    in a row without a better objective. Either ends it as Ctrl-C would not: no new trial
    starts, running trials stop after their current epoch (time) or run out (stalled)."""

    trials: int = 20
    max_epochs: int = 10
    grace_period_epochs: int = 1  # ASHA never stops a trial before this many epochs
    reduction_factor: int = 2  # ASHA keeps 1/reduction_factor of trials at each rung
    time: str | float | None = None  # wall time of the search, e.g. "2h": stored as seconds
    stop_when_stalled: int | None = None  # end after this many finished trials without a better value

    def __post_init__(self) -> None:
        require("Budget.trials", self.trials, self.trials >= 1, "must be >= 1")
        require("Budget.max_epochs", self.max_epochs, self.max_epochs >= 1, "must be >= 1")
        require("Budget.grace_period_epochs", self.grace_period_epochs,
                 1 <= self.grace_period_epochs <= self.max_epochs,
                 f"must lie in [1, max_epochs={self.max_epochs}]")
        require("Budget.reduction_factor", self.reduction_factor, self.reduction_factor >= 2,
                 "must be >= 2")
        if self.time is not None:
            object.__setattr__(self, "time", parse_duration("Budget.time", self.time))
        if self.stop_when_stalled is not None:
            require("Budget.stop_when_stalled", self.stop_when_stalled, self.stop_when_stalled >= 1, "must be >= 1")


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
        require("Resources.workers", self.workers, self.workers >= 1, "must be >= 1")
        require("Resources.cpus_per_worker", self.cpus_per_worker,
                 0 < self.cpus_per_worker <= 256, "must lie in (0, 256]")
        if self.gpus_per_worker != "auto":
            # Ray shares a GPU between tasks only in fractions of one: 0.25 fits 4 trials on a GPU.
            require("Resources.gpus_per_worker", self.gpus_per_worker,
                     0 <= self.gpus_per_worker <= 8 and (self.gpus_per_worker <= 1 or self.gpus_per_worker % 1 == 0),
                     "must be 'auto', a fraction in [0, 1] (trials share a GPU) or a whole number up to 8")


@spec_class
class Experiment:
    """One hyperparameter search: data, search space, objective, budget and resources.

    `data` is a folder holding `train/` and `test/`, one subfolder per class (a relative
    path is taken from the current directory), or a URI of such a folder in object storage
    (`s3://bucket/photos`, search/data/remote.py). When `generate` names a built-in generator
    and `data` does not exist yet, the folder is generated there on first use.
    """

    name: str
    data: str
    generate: str | None = None
    image_size_px: int = 150
    val_fraction: float = 0.2  # of train/, stratified and seeded; never augmented
    weights: Literal["imagenet", "none"] = "imagenet"  # the pretrained backbones' weights
    space: Space = dataclasses.field(default_factory=Space)
    recipes: tuple[Mapping[str, Any], ...] = ()  # known configurations, evaluated first
    objective: Literal["val_acc", "val_loss"] = "val_acc"
    budget: Budget = dataclasses.field(default_factory=Budget)
    concurrency: int | None = None  # trials at once; None: as many as the cluster fits
    resources: Resources = dataclasses.field(default_factory=Resources)
    seed: int = 0  # Optuna's sampler and NumPy take seeds in [0, 2**32 - 1]
    # At export: "auto" measures test-time augmentation (the mean of an image's and its mirror's
    # logits) on the val split and keeps it only when it lowers the val loss; "none" never.
    test_time_augmentation: Literal["auto", "none"] = "auto"
    # Which trial is exported: "accuracy", the best objective; "fastest_within=D", the lowest
    # measured batch-1 latency among the top trials whose objective is within D of the best.
    select: str = "accuracy"
    # Which checkpoints the search keeps: "exportable", a running trial its best and latest, an
    # ended one its best only while it could still be exported (search/driver/retention.py);
    # "all", every epoch's of every trial.
    checkpoints: Literal["exportable", "all"] = "exportable"
    # At export: "auto" tries an ensemble of the top trials (search/best/ensemble.py) and exports
    # it only when it beats the best trial on held-out folds of val; "off" exports one trial.
    ensemble: Literal["auto", "off"] = "auto"

    def __post_init__(self) -> None:
        require("Experiment.name", self.name, bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name)),
                 "letters, digits, '_', '.', '-', starting with a letter or digit")
        require("Experiment.data", self.data, bool(self.data.strip()), "a folder path or a URI")
        require("Experiment.image_size_px", self.image_size_px, 16 <= self.image_size_px <= 1024,
                 "must lie in [16, 1024]")
        smallest = max(self.space.archs(), key=lambda a: ARCHS[a].min_size_px)
        require("Experiment.image_size_px", self.image_size_px,
                self.image_size_px >= ARCHS[smallest].min_size_px,
                f"must be >= {ARCHS[smallest].min_size_px} when the space includes {smallest}")
        require("Experiment.val_fraction", self.val_fraction, 0 < self.val_fraction < 1,
                 "must lie strictly between 0 and 1")
        if self.concurrency is not None:
            require("Experiment.concurrency", self.concurrency, self.concurrency >= 1,
                     "must be >= 1 or None")
        require("Experiment.seed", self.seed, 0 <= self.seed <= MAX_SEED, f"must lie in [0, {MAX_SEED}]")
        for i, recipe in enumerate(self.recipes):
            self._check_recipe(f"Experiment.recipes[{i}]", recipe)
        select_tolerance(self.select)
        require("Experiment.checkpoints", self.checkpoints, self.checkpoints in ("exportable", "all"),
                "'exportable' (an ended trial keeps its best checkpoint while it could be exported) or 'all'")
        require("Experiment.ensemble", self.ensemble, self.ensemble in ("auto", "off"),
                "'auto' (an ensemble of the top trials, exported when it beats the best one on val) or 'off'")

    def _check_recipe(self, field: str, recipe: Mapping[str, Any]) -> None:
        """A recipe's values must lie in the searched domains (else the search could never compare
        against it fairly); pinned parameters may be repeated only with their value."""
        for key in recipe:
            require(field, key, key in PARAM_NAMES, f"keys must be search parameters: {', '.join(PARAM_NAMES)}")
        optimizer = self.space.recipe_optimizer(recipe)
        require(field, dict(recipe), "lr" not in recipe or optimizer is not None,
                "a recipe that sets 'lr' must also set 'optimizer'")
        for name in sorted(recipe, key=lambda n: n != "optimizer"):  # the optimizer first: it picks lr's domain
            value, domain = recipe[name], self.space.domain(name, optimizer)
            if isinstance(domain, Domain):
                require(f"{field}.{name}", value, value in domain, f"must lie in the searched domain {domain}")
            else:
                require(f"{field}.{name}", value, value == domain, f"the space pins {name} to {domain!r}")

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]

    @property
    def tolerance(self) -> float | None:
        """`select`'s D for "fastest_within=D"; None for "accuracy"."""
        return select_tolerance(self.select)


def select_tolerance(select: str) -> float | None:
    """D of `Experiment.select="fastest_within=D"`, None for "accuracy"; SpecError otherwise."""
    if select == "accuracy":
        return None
    name, _, number = select.partition("=") if isinstance(select, str) else ("", "", "")
    try:
        tolerance = float(number) if name == "fastest_within" else math.nan
    except ValueError:
        tolerance = math.nan
    require("Experiment.select", select, math.isfinite(tolerance) and tolerance >= 0, SELECT_ALLOWED)
    return tolerance


def load_experiment(path: str | Path) -> Experiment:
    """Run an experiment file and return the one `Experiment` value it defines."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("experiment", str(path), "a path to an existing experiment file (.py)")
    namespace: dict[str, Any] = {"__name__": f"experiment:{path.stem}", "__file__": str(path)}
    try:
        code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    except UnicodeDecodeError as err:
        raise SpecError("experiment", str(path), f"a UTF-8 text file (byte {err.object[err.start]:#04x} "
                                                 f"at offset {err.start} is not UTF-8)") from None
    except SyntaxError as err:
        line = f"line {err.lineno}: " if err.lineno else ""
        raise SpecError("experiment", str(path), f"valid Python ({line}{err.msg})") from None
    try:
        exec(code, namespace)  # experiment files are Python, like any Ray script: they run code
    except SpecError:
        raise
    except Exception as err:  # the file's own mistake (a NameError, a failed import): name its line
        lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__) if frame.filename == str(path)]
        where = f"line {lines[-1]}: " if lines else ""
        message = " ".join(f"{type(err).__name__}: {err}".split())
        raise SpecError("experiment", str(path), f"a file that runs without error ({where}{message})") from None
    found = [v for v in namespace.values() if isinstance(v, Experiment)]
    if len(found) != 1:
        raise SpecError("experiment", str(path), f"exactly one Experiment(...) value (found {len(found)})")
    return found[0]


def replace(experiment: Experiment, **changes: Any) -> Experiment:
    """A copy with fields changed, validated like the original (CLI overrides use this)."""
    values = {f.name: getattr(experiment, f.name) for f in dataclasses.fields(experiment)}
    values.update(changes)
    return Experiment(**values)
