"""Tune's experiment state cut short by a kill mid-upload (search/driver/tune_state_copy.py): the last
complete copy is kept, and a --resume puts it back instead of Tune starting the round over."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from search.driver.tune_state_copy import KeepStateCopy, backup_of, repair
from search.run import main
from tests.conftest import tiny_experiment


def test_only_complete_states_are_kept_and_a_cut_short_one_is_put_back(tmp_path: Path) -> None:
    state = tmp_path / "experiment_state-2026-12-02_02-47-34.json"
    keeper = KeepStateCopy(tmp_path)
    state.write_text(json.dumps({"trial_data": [1, 2]}))
    keeper.copy()
    assert json.loads(backup_of(state).read_text()) == {"trial_data": [1, 2]}
    state.write_text('{"trial_data": [1, 2, 3')  # caught mid-copy: the backup stays the last whole one
    keeper.copy()
    assert json.loads(backup_of(state).read_text()) == {"trial_data": [1, 2]}
    assert repair(tmp_path) == [f"{state.name} was cut short by the kill: its last complete copy is restored"]
    assert json.loads(state.read_text()) == {"trial_data": [1, 2]}
    assert repair(tmp_path) == []  # whole: nothing to do
    assert [p.name for p in tmp_path.glob("experiment_state-*.json")] == [state.name]  # Tune sees no other file
    backup_of(state).unlink()
    state.write_text("")
    assert "has no complete copy" in repair(tmp_path)[0]


def test_a_resume_after_the_state_was_cut_short_keeps_every_trial(ray_session, coats: Path, tmp_path: Path) -> None:
    experiment, out = tiny_experiment(tmp_path, coats, trials=2, epochs=2), tmp_path / "out"
    assert main([str(experiment), "--out", str(out), "--concurrency", "1"]) == 0
    before = pd.read_parquet(out / "report.parquet")
    (state,) = (out / "tune").glob("experiment_state-*.json")
    assert backup_of(state).is_file()
    state.write_text("")  # as a SIGKILL during Tune's upload of it leaves it
    assert main([str(experiment), "--out", str(out), "--concurrency", "1", "--resume"]) == 0
    after = pd.read_parquet(out / "report.parquet")
    assert sorted(after["trial_id"]) == sorted(before["trial_id"]) and len(after) == 2
    assert len(list((out / "tune").glob("run_trial_*"))) == 2  # the round went on, not over
