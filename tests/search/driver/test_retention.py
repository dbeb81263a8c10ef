"""Which checkpoints a search keeps: the rule, and the folders it frees (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from search.best.select import Reach, exportable, reach
from search.driver.retention import Retention
from search.driver.study import TUNE_TRIAL_ID
from search.experiment.spec import Experiment
from search.state.storage import open_output
from trainables.state import save_checkpoint


def test_with_select_accuracy_only_the_best_and_its_ties_stay_in_reach() -> None:
    values = {"a": 0.9, "b": 0.8, "c": 0.9, "d": 0.1}
    assert exportable(values, "max", Reach(1)) == {"a", "c"}
    assert exportable(values, "min", Reach(1)) == {"d"}
    assert exportable({}, "max", Reach(1)) == set()


def test_fastest_within_keeps_the_top_k_within_the_tolerance() -> None:
    values = {f"t{i}": 1.0 - i / 100 for i in range(8)}  # t0 best: 1.00, 0.99, ..., 0.93
    assert exportable(values, "max", Reach(5, 1.0)) == {"t0", "t1", "t2", "t3", "t4"}
    assert exportable(values, "max", Reach(5, 0.02)) == {"t0", "t1", "t2"}  # 0.98 is within 0.02 of 1.00
    assert exportable(values, "min", Reach(5, 0.02)) == {"t7", "t6", "t5"}
    ties = {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.4}
    assert exportable(ties, "max", Reach(2, 1.0)) == {"a", "b", "c"}  # no one of them is strictly beaten twice


def test_the_reach_follows_the_select_rule(tmp_path: Path) -> None:
    assert reach(Experiment(name="e", data=str(tmp_path)).tolerance) == Reach(1)
    assert reach(Experiment(name="e", data=str(tmp_path), select="fastest_within=0.02").tolerance) == Reach(5, 0.02)


def test_checkpoints_must_name_a_known_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Experiment.checkpoints.*'exportable'"):
        Experiment(name="e", data=str(tmp_path), checkpoints="best")


def _study(tmp_path: Path, values: dict[str, float | None]) -> str:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    for trial_id, value in values.items():
        trial = study.ask()
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        if value is not None:
            study.tell(trial, value)
    told = study.ask()  # a warm start's trial: not this search's, no folders of its own
    study.tell(told, 1.0)
    return url


def _folders(out: Path, trial_id: str, epochs: range) -> Path:
    run = out / "train" / f"train-{trial_id}"
    for epoch in epochs:
        (run / f"epoch-{epoch:04d}").mkdir(parents=True)
        save_checkpoint({"epoch": epoch, "trainable": {"w": torch.ones(4)}, "optimizer": {"m": torch.ones(1000)}},
                        run / f"epoch-{epoch:04d}" / "state.pt")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    return run


def _state(folder: Path) -> dict:
    return torch.load(folder / "state.pt", weights_only=True)


def _kept(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob("epoch-*"))


def test_a_sweep_keeps_the_best_of_the_best_ended_trial_and_leaves_running_ones_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    runs = {t: _folders(out, t, range(1, 4)) for t in ("best", "worse", "running", "unknown")}
    url = _study(tmp_path, {"best": 0.9, "worse": 0.5, "running": None, "unknown": 0.9})
    retention = Retention(open_output(str(out), tmp_path / "work"), url, "s", "val_acc", "max", Reach(1))
    for epoch, value in ((1, 0.7), (2, 0.9), (3, 0.9)):  # ties: the latest, as Ray Train keeps it
        retention.note("best", {"val_acc": value, "checkpoint_path": f"{runs['best']}/epoch-{epoch:04d}"})
    retention.note("best", {"val_acc": 0.8, "checkpoint_path": f"{runs['best']}/epoch-0004"})
    size = (runs["worse"] / "epoch-0001" / "state.pt").stat().st_size
    retention.sweep()
    assert _kept(runs["best"]) == ["epoch-0003"]
    # Exported, never resumed: the optimizer's state goes; what the export reads stays.
    state = _state(runs["best"] / "epoch-0003")
    assert set(state) == {"epoch", "trainable"} and state["epoch"] == 3 and state["trainable"]["w"].equal(torch.ones(4))
    assert _kept(runs["worse"]) == []  # out of reach: nothing of it is needed
    assert (runs["worse"] / "checkpoint_manager_snapshot.json").exists()  # Ray's record stays
    assert _kept(runs["running"]) == ["epoch-0001", "epoch-0002", "epoch-0003"]
    # Its best was reported before this process: which folder holds it is unknown, so it keeps them.
    assert _kept(runs["unknown"]) == ["epoch-0001", "epoch-0002", "epoch-0003"]
    slim = (runs["best"] / "epoch-0003" / "state.pt").stat().st_size
    assert retention.freed_bytes == 5 * size + (size - slim)
    (runs["worse"] / "epoch-0004").mkdir()  # a write that ended after its sweep
    (runs["best"] / "epoch-0002").mkdir()
    retention.sweep(final=True)
    assert _kept(runs["worse"]) == [] and _kept(runs["best"]) == ["epoch-0003"]


def test_a_sweep_that_fails_logs_and_keeps_the_search_going(tmp_path: Path, caplog) -> None:
    retention = Retention(open_output(str(tmp_path / "out"), tmp_path / "work"), f"sqlite:///{tmp_path}/none.db",
                          "missing", "val_acc", "max", Reach(1))
    retention.sweep()
    assert "not freed" in caplog.text


def test_a_trial_that_just_ended_is_swept_once_it_had_time_to_stop(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from search.driver.retention import KeepExportable

    out = tmp_path / "out"
    runs = {t: _folders(out, t, range(1, 3)) for t in ("best", "worse")}
    url = _study(tmp_path, {"best": 0.9, "worse": 0.5})
    keep = KeepExportable(Retention(open_output(str(out), tmp_path / "work"), url, "s", "val_acc", "max", Reach(1)))
    keep.on_trial_complete(0, [], SimpleNamespace(trial_id="worse"))
    assert _kept(runs["worse"]) == ["epoch-0001", "epoch-0002"]  # its driver may still be stopping
    keep.on_step_end(1, [])
    assert _kept(runs["worse"]) == ["epoch-0001", "epoch-0002"]
    monkeypatch.setattr(KeepExportable, "GRACE_S", 0.0)
    keep.on_step_end(2, [])
    assert _kept(runs["worse"]) == [] and keep.ended == {}


def test_with_an_ensemble_the_top_trials_greedy_selection_weighs_stay_and_the_others_go(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """Of the top 5 ended trials, those the ensemble's greedy selection would use, fitted on the
    val logits their best checkpoints keep; one whose logits cannot be read stays too."""
    from tests.search.best.test_ensemble import two_experts
    from trainables.loop import VAL_LOGITS

    (first, second, noise), labels = two_experts()
    logits = {"a": first, "b": second, "copy": first, "noise": noise, "old": None, "sixth": second}
    values = {"a": 0.9, "b": 0.85, "copy": 0.84, "noise": 0.83, "old": 0.82, "sixth": 0.1}
    out = tmp_path / "out"
    runs = {t: _folders(out, t, range(1, 2)) for t in values}
    for trial_id, value in logits.items():
        if value is not None:
            folder = runs[trial_id] / "epoch-0001"
            save_checkpoint({**_state(folder), VAL_LOGITS: torch.as_tensor(value)}, folder / "state.pt")
    url = _study(tmp_path, values)
    experiment = Experiment(name="s", data=str(tmp_path))
    retention = Retention.of(experiment, open_output(str(out), tmp_path / "work"), url, labels)
    for trial_id, value in values.items():
        retention.note(trial_id, {"val_acc": value, "checkpoint_path": f"{runs[trial_id]}/epoch-0001"})
    retention.sweep()
    kept = {t for t, run in runs.items() if _kept(run)}
    assert kept == {"a", "b", "old"}
    assert VAL_LOGITS in _state(runs["a"] / "epoch-0001")  # the export chooses from them again
    # A later sweep with the same top trials weighs them again without fitting again.
    monkeypatch.setattr("search.driver.retention.fit", lambda *args: pytest.fail("fitted again"))
    retention.sweep(final=True)
    assert {t for t, run in runs.items() if _kept(run)} == {"a", "b", "old"}
    monkeypatch.undo()
    # With ensemble="off", only select's reach counts: the best alone.
    runs = {t: _folders(tmp_path / "off", t, range(1, 2)) for t in values}
    off = Retention.of(Experiment(name="s", data=str(tmp_path), ensemble="off"),
                       open_output(str(tmp_path / "off"), tmp_path / "work2"), url, labels)
    for trial_id, value in values.items():
        off.note(trial_id, {"val_acc": value, "checkpoint_path": f"{runs[trial_id]}/epoch-0001"})
    off.sweep()
    assert {t for t, run in runs.items() if _kept(run)} == {"a"}
