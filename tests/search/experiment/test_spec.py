"""The experiment spec validates every field and names it in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.experiment.spec import (
    Budget,
    Choice,
    Experiment,
    IntRange,
    LogUniform,
    Resources,
    Space,
    SpecError,
    Uniform,
    load_experiment,
    replace,
)

REPO = Path(__file__).resolve().parents[3]


def test_quickstart_loads_with_its_declared_values() -> None:
    experiment = load_experiment(REPO / "experiments" / "quickstart.py")
    assert experiment.name == "quickstart"
    assert experiment.objective == "val_acc" and experiment.mode == "max"
    assert experiment.val_fraction == 0.2
    assert experiment.budget.trials >= 8
    assert {"small_cnn", "inception_frozen"} <= set(experiment.space.archs())


def test_unknown_field_names_it_and_suggests_the_closest() -> None:
    with pytest.raises(SpecError) as err:
        Budget(trails=4)
    message = str(err.value)
    assert "Budget.trails" in message and "did you mean 'trials'" in message and "max_epochs" in message


@pytest.mark.parametrize("make, field, value", [
    (lambda: Budget(trials="many"), "Budget.trials", "many"),
    (lambda: Budget(trials=0), "Budget.trials", 0),
    (lambda: Budget(max_epochs=3, grace_period_epochs=5), "Budget.grace_period_epochs", 5),
    (lambda: Budget(reduction_factor=1), "Budget.reduction_factor", 1),
    (lambda: Resources(cpus_per_worker=0), "Resources.cpus_per_worker", 0),
    (lambda: Resources(gpus_per_worker="all"), "Resources.gpus_per_worker", "all"),
    (lambda: Resources(gpus_per_worker=1.5), "Resources.gpus_per_worker", 1.5),
    (lambda: Space(arch="resnet"), "Space.arch", "resnet"),
    (lambda: Space(optimizer=Choice("adam", "lion")), "Space.optimizer", "lion"),
    (lambda: Space(augment=Uniform(0.0, 1.5)), "Space.augment", 1.5),
    (lambda: Space(unfrozen_blocks=IntRange(1, 12)), "Space.unfrozen_blocks", 12),
    (lambda: Space(optimizer="sgd", lr={"adam": 1e-3}), "Space.lr", {"adam": 1e-3}),
    (lambda: Space(lr={"adam": LogUniform(0.0, 1.0)}), "LogUniform.low", 0.0),
    (lambda: Experiment(name="bad name!", data="d"), "Experiment.name", "bad name!"),
    (lambda: Experiment(name="x", data="d", val_fraction=1.0), "Experiment.val_fraction", 1.0),
    (lambda: Experiment(name="x", data="d", weights="random"), "Experiment.weights", "random"),
    (lambda: Experiment(name="x", data="d", objective="accuracy"), "Experiment.objective", "accuracy"),
    (lambda: Experiment(name="x", data="d", image_size_px=64), "Experiment.image_size_px", 64),
    (lambda: Experiment(name="x", data="d", recipes=({"learning_rate": 1e-3},)), "Experiment.recipes[0]",
     "learning_rate"),
    (lambda: Experiment(name="x", data="d", concurrency=True), "Experiment.concurrency", True),
    (lambda: Experiment(name="x", data="d", seed=-5), "Experiment.seed", -5),
    (lambda: Experiment(name="x", data="d", seed=2**32), "Experiment.seed", 2**32),
    (lambda: Experiment(name="x", data="d", select="fastest"), "Experiment.select", "fastest"),
    (lambda: Experiment(name="x", data="d", select="fastest_within=-0.01"), "Experiment.select",
     "fastest_within=-0.01"),
    (lambda: Experiment(name="x", data="d", select="fastest_within="), "Experiment.select", "fastest_within="),
    (lambda: Experiment(name="x", data="d", select="fastest_within=a lot"), "Experiment.select",
     "fastest_within=a lot"),
    (lambda: Experiment(name="x", data="d", select="fastest_within=inf"), "Experiment.select", "fastest_within=inf"),
    (lambda: Experiment(name="x", data="d", select="latency_within=0.1"), "Experiment.select", "latency_within=0.1"),
    (lambda: Experiment(name="x", data="d", select=0.01), "Experiment.select", 0.01),
])
def test_bad_values_name_field_value_and_what_is_allowed(make, field: str, value) -> None:
    with pytest.raises(SpecError) as err:
        make()
    assert err.value.field == field
    assert err.value.value == value
    assert repr(value) in str(err.value) and err.value.allowed
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("select, tolerance", [
    ("accuracy", None), ("fastest_within=0.01", 0.01), ("fastest_within=0", 0.0), ("fastest_within=2e-3", 0.002),
])
def test_select_takes_accuracy_or_fastest_within_a_tolerance(select: str, tolerance: float | None) -> None:
    assert Experiment(name="x", data="d", select=select).tolerance == tolerance
    assert Experiment(name="x", data="d").select == "accuracy"


def test_a_bad_select_says_what_is_allowed() -> None:
    with pytest.raises(SpecError) as err:
        Experiment(name="x", data="d", select="fastest_within=-1")
    assert "'accuracy', or 'fastest_within=D' with D a number >= 0" in err.value.allowed


PINNED = Space(arch="small_cnn", optimizer="adam", lr={"adam": LogUniform(1e-4, 1e-2)})


@pytest.mark.parametrize("space, recipe, field, value", [
    (Space(), {"lr": 1e-4}, "Experiment.recipes[0]", {"lr": 1e-4}),
    (Space(), {"optimizer": "adam", "lr": 5.0}, "Experiment.recipes[0].lr", 5.0),
    (Space(), {"arch": "small_cnn", "batch_size": 24}, "Experiment.recipes[0].batch_size", 24),
    (PINNED, {"arch": "inception_frozen"}, "Experiment.recipes[0].arch", "inception_frozen"),
    (PINNED, {"lr": 1e-3, "optimizer": "sgd"}, "Experiment.recipes[0].optimizer", "sgd"),
])
def test_recipes_outside_the_space_are_refused_on_construction(space: Space, recipe: dict, field: str, value) -> None:
    with pytest.raises(SpecError) as err:
        Experiment(name="x", data="d", image_size_px=96, space=space, recipes=(recipe,))
    assert (err.value.field, err.value.value) == (field, value)


def test_small_images_are_fine_without_inception() -> None:
    experiment = Experiment(name="x", data="d", image_size_px=32, space=Space(arch="small_cnn"))
    assert experiment.image_size_px == 32


def test_lists_are_accepted_and_stored_as_tuples() -> None:
    experiment = Experiment(name="x", data="d", recipes=[{"arch": "small_cnn"}])
    assert experiment.recipes == ({"arch": "small_cnn"},)


def test_replace_validates_again() -> None:
    experiment = Experiment(name="x", data="d")
    assert replace(experiment, seed=3).seed == 3
    with pytest.raises(SpecError):
        replace(experiment, val_fraction=-1)


def test_load_experiment_needs_exactly_one_experiment(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(SpecError, match="exactly one Experiment"):
        load_experiment(empty)
    with pytest.raises(SpecError, match="existing experiment file"):
        load_experiment(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("experiment = Experiment(\n")
    with pytest.raises(SpecError, match="valid Python"):
        load_experiment(broken)


@pytest.mark.parametrize("content, allowed", [
    (b"from search.spec import *\n\nexperiment = foo\n",
     "a file that runs without error (line 3: NameError: name 'foo' is not defined)"),
    (b"import search.no_such_module\n",
     "a file that runs without error (line 1: ModuleNotFoundError: No module named 'search.no_such_module')"),
    (b"x = 1\n\xff\xfe", "a UTF-8 text file (byte 0xff at offset 6 is not UTF-8)"),
    (b"x = 1\0\n", "valid Python (source code string cannot contain null bytes)"),
])
def test_an_experiment_file_that_cannot_run_is_named_with_its_line(tmp_path: Path, content: bytes,
                                                                     allowed: str) -> None:
    path = tmp_path / "x.py"
    path.write_bytes(content)
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert (err.value.field, err.value.value, err.value.allowed) == ("experiment", str(path), allowed)


def test_a_spec_error_inside_an_experiment_file_is_passed_on(tmp_path: Path) -> None:
    path = tmp_path / "x.py"
    path.write_text('from search.spec import *\n\nexperiment = Experiment(name="x", data="d", seed=-5)\n')
    with pytest.raises(SpecError) as err:
        load_experiment(path)
    assert err.value.field == "Experiment.seed"


def test_an_experiment_s_repr_is_an_experiment_file_that_loads_back(tmp_path) -> None:
    from search.experiment.spec import load_experiment

    experiment = Experiment(name="x", data="d", space=Space(arch=Choice("small_cnn", "inception_partial"),
                                                            batch_size=Choice(16, 32)))
    path = tmp_path / "again.py"
    path.write_text(f"from search.spec import *\n\nexperiment = {experiment!r}\n")
    assert load_experiment(path) == experiment
