"""The conditional search space, sampled by Optuna."""

from __future__ import annotations

import optuna
import pytest

from search.experiment.space import hparams, recipe_points, space_function
from search.experiment.spec import Choice, Experiment, LogUniform, Space
from trainables.archs import ARCHS
from trainables.hparams import HParams

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space: Space, n: int = 200) -> list[dict]:
    """n configs as Tune would see them: Optuna's params merged with the returned constants."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define = space_function(space)
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = define(trial)
        configs.append({**trial.params, **constants})
        study.tell(trial, 0.0)
    return configs


def test_conditional_parameters_appear_only_with_their_parent() -> None:
    configs = sample(Space(arch=Choice("small_cnn", "inception_frozen", "inception_partial")))
    for config in configs:
        assert ("unfrozen_blocks" in config) == (config["arch"] == "inception_partial")
        assert ("head_units" in config) == config["arch"].startswith("inception")
        assert ("feature_views" in config) == (config["arch"] == "inception_frozen")
        assert ("cnn_width" in config) == (config["arch"] == "small_cnn")
        assert ("cnn_depth" in config) == (config["arch"] == "small_cnn")
        assert ("momentum" in config) == (config["optimizer"] == "sgd")
        lrs = [k for k in config if k.startswith("lr_")]
        assert lrs == [f"lr_{config['optimizer']}"]
    assert {c["arch"] for c in configs} == {"small_cnn", "inception_frozen", "inception_partial"}
    assert {c["optimizer"] for c in configs} == {"rmsprop", "adam", "sgd"}
    searched = sample(Space(arch="inception_frozen", feature_views=Choice(0, 4)), n=30)
    assert {c["feature_views"] for c in searched} == {0, 4}
    assert hparams(searched[0], "imagenet").feature_views in (0, 4)


def test_samples_stay_inside_their_domains() -> None:
    space = Space()
    for config in sample(space):
        assert 0.0 <= config["augment"] <= 1.0
        lr = space.lr[config["optimizer"]]
        assert lr.low <= config[f"lr_{config['optimizer']}"] <= lr.high
        assert config["batch_size"] in space.batch_size
        if "unfrozen_blocks" in config:
            assert config["unfrozen_blocks"] in space.unfrozen_blocks


def test_pinned_parameters_are_constants_not_searched() -> None:
    space = Space(arch="small_cnn", optimizer="adam", lr={"adam": 3e-4}, batch_size=8, cnn_width=16)
    study = optuna.create_study()
    trial = study.ask()
    constants = space_function(space)(trial)
    assert constants == {"arch": "small_cnn", "cnn_width": 16, "optimizer": "adam", "lr_adam": 3e-4, "batch_size": 8}
    assert set(trial.params) == {"cnn_depth", "augment", "dropout"}


def test_hparams_resolve_the_learning_rate_and_leave_unused_ones_empty() -> None:
    resolved = hparams({"arch": "inception_frozen", "augment": 0.1, "optimizer": "sgd", "lr_sgd": 0.01,
                        "momentum": 0.9, "batch_size": 32, "dropout": 0.2, "head_units": 64,
                        "cnn_width": 16}, "imagenet")  # a constant the drawn arch does not use
    assert isinstance(resolved, HParams) and resolved.weights == "imagenet"
    assert resolved.lr == 0.01 and resolved.momentum == 0.9 and resolved.head_units == 64
    assert resolved.cnn_width is None and resolved.unfrozen_blocks is None


def test_every_architecture_asks_exactly_what_its_table_entry_searches() -> None:
    for name, arch in ARCHS.items():
        config = sample(Space(arch=name, optimizer="adam"), n=1)[0]
        assert {k for k in config if k in ("unfrozen_blocks", "head_units", "feature_views", "cnn_width",
                                           "cnn_depth")} == set(arch.searches)


def test_recipes_become_optuna_points_evaluated_first() -> None:
    experiment = Experiment(name="x", data="d", recipes=(
        {"arch": "inception_frozen", "optimizer": "rmsprop", "lr": 1e-4, "dropout": 0.2},))
    points = recipe_points(experiment)
    assert points == [{"arch": "inception_frozen", "optimizer": "rmsprop", "lr_rmsprop": 1e-4, "dropout": 0.2}]
    study = optuna.create_study()
    study.enqueue_trial(points[0])
    trial = study.ask()
    space_function(experiment.space)(trial)
    assert trial.params["arch"] == "inception_frozen" and trial.params["lr_rmsprop"] == 1e-4


def test_a_recipe_may_repeat_a_pinned_value() -> None:
    space = Space(arch="small_cnn", optimizer="adam", lr={"adam": LogUniform(1e-4, 1e-2)}, batch_size=Choice(8, 16))
    ok = Experiment(name="x", data="d", image_size_px=32, space=space, recipes=({"arch": "small_cnn", "lr": 1e-3},))
    assert recipe_points(ok) == [{"lr_adam": 1e-3}]


def test_frozen_backbones_with_random_weights_leave_the_space_unless_pinned() -> None:
    from search.experiment.space import without_random_frozen_backbones
    from search.experiment.spec import load_experiment
    from tests.conftest import REPO

    quickstart = load_experiment(REPO / "experiments" / "quickstart.py")
    assert quickstart.weights == "none" and "inception_frozen" in quickstart.space.archs()
    learnable, note = without_random_frozen_backbones(quickstart)
    assert "inception_frozen" not in learnable.space.archs() and "small_cnn" in learnable.space.archs()
    assert all(r.get("arch") != "inception_frozen" for r in learnable.recipes) and len(learnable.recipes) == 1
    assert note.startswith("note: inception_frozen left out") and "1 recipe" in note
    assert {c["arch"] for c in sample(learnable.space, n=50)} == set(learnable.space.archs())
    pinned = Experiment(name="x", data="d", weights="none", space=Space(arch="inception_frozen"))
    assert without_random_frozen_backbones(pinned) == (pinned, None)
    imagenet = Experiment(name="x", data="d", space=Space(arch=Choice("small_cnn", "inception_frozen")))
    assert without_random_frozen_backbones(imagenet) == (imagenet, None)


def test_an_optimizer_is_added_by_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """One entry in trainables.optimizers.OPTIMIZERS: the space searches it, with its own learning
    rates and the fields it samples, its trials resolve to HParams and build it."""
    import optuna
    import torch

    from search.experiment.space import define_space, hparams
    from search.experiment.spec import Choice, Space
    from trainables.optimizers import OPTIMIZERS, OptimizerSpec, create_optimizer

    monkeypatch.setitem(OPTIMIZERS, "adamw", OptimizerSpec(
        lambda optim, params, lr, momentum: optim.AdamW(params, lr=lr), lr_range=(1e-4, 3e-3)))
    space = Space(arch="small_cnn")
    assert "adamw" in space.optimizer.options and space.lr["adamw"].low == 1e-4
    trial = optuna.trial.FixedTrial({"cnn_width": 16, "cnn_depth": 2, "augment": 0.1, "optimizer": "adamw",
                                     "lr_adamw": 1e-3, "batch_size": 32, "dropout": 0.2})
    constants = define_space(space, trial)
    hp = hparams({**trial.params, **constants}, "none")
    assert (hp.optimizer, hp.lr, hp.momentum) == ("adamw", 1e-3, None)
    built = create_optimizer(hp.optimizer, [torch.nn.Parameter(torch.zeros(1))], hp.lr)
    assert isinstance(built, torch.optim.AdamW)
    assert Space(arch="small_cnn", optimizer=Choice("adamw", "sgd")).optimizers() == ("adamw", "sgd")
