"""A search that grows and ends on the user's terms (issue 15): extended after it finished,
warm-started from another search, ended by a time budget or a stalled objective."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from search.driver.ending import EndRule
from search.driver.study import TUNE_TRIAL_ID, search_trials
from search.driver.warm_start import WARM_FROM, warm_start
from search.experiment.space import space_function
from search.experiment.spec import Budget, Choice, Experiment, IntRange, LogUniform, Space, SpecError
from search.run import main
from search.seam.tune_files import registered_checkpoints
from tests.conftest import kill_drill, leftovers, tiny_experiment, write_experiment


def study_of(out: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


# --- the rules, without Ray ---------------------------------------------------------------

@pytest.mark.parametrize("values, mode, n, stalled", [
    ([0.5, 0.6, 0.6, 0.6], "max", 2, True),  # a tie does not improve
    ([0.5, 0.6, 0.6, 0.7], "max", 2, False),
    ([0.5, 0.4, 0.45], "max", 2, True),
    ([0.5, 0.4, 0.45], "min", 1, True),  # 0.45 is no better than 0.4
    ([0.5, 0.4], "min", 1, False),
    ([0.7, 0.1], "max", 2, False),  # not enough finished trials to tell
])
def test_a_stall_is_n_finished_trials_in_a_row_without_a_better_value(values: list[float], mode: str, n: int,
                                                                       stalled: bool) -> None:
    rule = EndRule(stalled=n, mode=mode)
    assert rule.stalled_after(values) is stalled
    assert (rule.ended_by or "").startswith(f"stalled: {n} finished trials") is stalled


def test_a_time_budget_ends_once_spent_and_names_the_budget() -> None:
    assert not EndRule(time_s=3600, budget_s=7200).time_up()
    spent = EndRule(time_s=-1.0, budget_s=7200)  # earlier runs spent more than the budget
    assert spent.time_up() and spent.ended_by == "time budget of 2 h spent"
    assert EndRule().should_end([0.1, 0.1, 0.1]) is False  # no rule, no end


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400),
                                           ("1.5h", 5400), (45, 45), ("30", 30)])
def test_budget_time_reads_durations(text: str | int, seconds: float) -> None:
    assert Budget(time=text).time == seconds


@pytest.mark.parametrize("bad", ["2x", "0s", "", "1h 30", -5, "h"])
def test_a_bad_duration_names_the_field_and_what_is_allowed(bad: str | int) -> None:
    with pytest.raises(SpecError, match=r"^Budget\.time: .* a duration"):
        Budget(time=bad)


def test_warm_start_tells_what_the_new_space_holds_and_says_what_it_dropped(tmp_path: Path) -> None:
    wide = Space(arch=Choice("small_cnn"), cnn_width=Choice(16, 32, 64), cnn_depth=IntRange(2, 4),
                 optimizer="adam", lr={"adam": LogUniform(1e-4, 1e-1)})
    narrow = Space(arch="small_cnn", cnn_width=32, cnn_depth=IntRange(2, 4), optimizer="adam",
                   lr={"adam": LogUniform(1e-3, 1e-2)})
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    old = optuna.create_study(study_name="old", storage=f"sqlite:///{earlier / 'optuna.db'}", direction="maximize",
                              sampler=optuna.samplers.RandomSampler(seed=0))
    space = space_function(wide)
    for lr in (3e-3, 5e-3, 5e-2):  # the last lies outside the narrowed range
        old.enqueue_trial({"lr_adam": lr, "cnn_width": 64})
        trial = old.ask()
        space(trial)
        old.tell(trial, 0.5 + lr)
    old.tell(old.ask(), state=optuna.trial.TrialState.FAIL)  # never told: it did not complete
    experiment = Experiment(name="new", data="d", space=narrow, budget=Budget(trials=2))
    new = optuna.create_study(study_name="new", direction="maximize")
    line = warm_start(new, earlier, experiment, space_function(narrow))
    told = new.get_trials()
    assert len(told) == 2 and all(t.user_attrs[WARM_FROM] == str(earlier) for t in told)
    assert sorted(t.params["lr_adam"] for t in told) == [3e-3, 5e-3]
    assert all("cnn_width" not in t.params and "cnn_depth" in t.params for t in told)
    assert line == (f"Warm start: told the study 2 completed trials of {earlier}; left out 1 this space cannot hold "
                    "(a value outside it, or a parameter it lacks); dropped parameters this space does not have: "
                    "arch, cnn_width")
    assert not search_trials(new)  # told trials are not the search's own: they count for no budget


# --- through the CLI ----------------------------------------------------------------------

def test_a_finished_search_extended_by_resume_runs_more_trials_in_the_same_study(
        ray_session, coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=1)
    out = tmp_path / "out"
    assert main([str(experiment), "--out", str(out), "--concurrency", "1"]) == 0
    first = set(pd.read_csv(out / "report.csv")["trial_id"])
    measured = json.loads((out / "report_inputs.json").read_text())["best"]["serving_top_k"]
    assert main([str(experiment), "--out", str(out), "--concurrency", "1", "--resume", "--trials", "4"]) == 0
    report = pd.read_csv(out / "report.csv")
    # the graphs the first finish measured are not exported and timed again (their figures, timings
    # included, are the first finish's to the digit; a new measurement's timings would differ)
    best = json.loads((out / "report_inputs.json").read_text())["best"]
    again = {row["trial_id"]: row for row in best["serving_top_k"] + best["serving_others"]}
    assert measured and all(again[row["trial_id"]] == row for row in measured), (measured, again)
    assert len(report) == 4 and first <= set(report["trial_id"]) and sorted(report["trial_number"]) == [1, 2, 3, 4]
    assert (out / "tune-2").is_dir() and not (out / "tune-3").exists()
    study = study_of(out)
    assert sorted(t.user_attrs[TUNE_TRIAL_ID] for t in study.trials) == sorted(report["trial_id"])
    assert all(t.state.is_finished() for t in study.trials)
    assert json.loads((out / "summary.json").read_text())["trials"] == 4
    # asked for no more than it has: nothing new runs, the report stands
    assert main([str(experiment), "--out", str(out), "--concurrency", "1", "--resume", "--trials", "3"]) == 0
    assert len(pd.read_csv(out / "report.csv")) == 4 and not (out / "tune-3").exists()
    # and a warm start from it: a new search's study holds its 4 trials, told, before its own
    fresh = tmp_path / "fresh"
    assert main([str(experiment), "--out", str(fresh), "--concurrency", "1", "--trials", "1",
                 "--warm-start", str(out)]) == 0
    study = study_of(fresh)
    assert [WARM_FROM in t.user_attrs for t in study.trials] == [True] * 4 + [False]
    assert len(pd.read_csv(fresh / "report.csv")) == 1
    assert leftovers(ray_session) == ([], [])


def test_a_time_budget_ends_the_search_after_the_running_trials_epoch(ray_session, coats: Path,
                                                                      tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=20, epochs=200)
    out = tmp_path / "out"
    assert main([str(experiment), "--out", str(out), "--concurrency", "1", "--time-budget", "20s"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ended_by"] == "time budget of 20 s spent"
    report = pd.read_csv(out / "report.csv", dtype={"trial_id": str})  # "6591e863" is no number
    assert len(report) < 20 and "budget_stopped" in set(report["status"])
    stopped = report[report["status"] == "budget_stopped"]
    assert (stopped["epochs"] >= 1).all()
    for _, trial in stopped.iterrows():  # the epoch it was stopped after was checkpointed (kept while exportable)
        registered = registered_checkpoints(out / "train" / f"train-{trial['trial_id']}")
        assert f"epoch-{int(trial['epochs']):04d}" in registered, (trial["trial_id"], registered)
    assert "time budget of 20 s spent" in (out / "report.md").read_text()
    assert (out / "best" / "model.pt").is_file()
    assert leftovers(ray_session) == ([], [])


def test_a_stalled_search_ends_once_n_trials_bring_nothing_better(ray_session, coats: Path, tmp_path: Path) -> None:
    # lr too small to move: every trial scores the same, so none is better than the first
    body = f"""
    name="tiny",
    data="{coats}",
    image_size_px=32,
    weights="none",
    space=Space(arch="small_cnn", cnn_width=8, cnn_depth=2, batch_size=16, augment=0.0, dropout=0.0,
                optimizer="adam", lr={{"adam": LogUniform(1e-9, 1.1e-9)}}),
    budget=Budget(trials=6, max_epochs=1, grace_period_epochs=1, stop_when_stalled=2),
    resources=Resources(workers=1, cpus_per_worker=1),
    """
    experiment = write_experiment(tmp_path, body)
    out = tmp_path / "out"
    assert main([str(experiment), "--out", str(out), "--concurrency", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ended_by"].startswith("stalled: 2 finished trials in a row without a better value")
    assert len(pd.read_csv(out / "report.csv")) == 3


def _suggestions(searcher, count: int, prefix: str) -> list[dict]:
    return [searcher.suggest(f"{prefix}{i}") for i in range(count)]


def test_a_later_round_proposes_from_the_trials_before_it(tmp_path: Path) -> None:
    from search.driver import tune_setup as tuning

    experiment = Experiment(name="x", data="d", seed=3, budget=Budget(trials=12),
                            space=Space(arch="small_cnn", optimizer="adam", lr={"adam": LogUniform(1e-4, 1e-1)}))
    with_history, without = tmp_path / "with", tmp_path / "without"
    for out in (with_history, without):
        out.mkdir()
        tuning.searcher(experiment, out, concurrency=1)  # the first round makes the study
    first = tuning.searcher(experiment, with_history, concurrency=1)
    for i in range(6):
        config = first.suggest(f"t{i}")
        first.on_trial_complete(f"t{i}", {"best_val_acc": 1.0 - abs(np.log10(config["lr_adam"]) + 2.5), "epoch": 1})
    assert len(search_trials(study_of(with_history, "x"))) == 6
    proposed = _suggestions(tuning.searcher(experiment, with_history, 3, first_round=False), 3, "u")
    from_nothing = _suggestions(tuning.searcher(experiment, without, 3, first_round=False), 3, "u")
    assert proposed != from_nothing  # the same seed: only the first round's trials differ
    assert len(study_of(with_history, "x").trials) == 9  # one study, both rounds


def test_a_reader_of_the_study_during_the_search_does_not_break_it(ray_session, coats: Path, tmp_path: Path) -> None:
    """optuna-dashboard polls optuna.db while the search writes to it (optuna/optuna-dashboard#545);
    here a reader holds each read longer than SQLite's default 5 s wait, and another polls."""
    import sqlite3
    import threading
    import time

    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=1)
    out, done, reads = tmp_path / "out", threading.Event(), []

    def hold_reads() -> None:
        while not done.is_set() and not (out / "optuna.db").is_file():
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            with sqlite3.connect(out / "optuna.db", timeout=60) as db:
                db.execute("BEGIN")
                try:
                    reads.append(db.execute("SELECT count(*) FROM trials").fetchone()[0])
                except sqlite3.OperationalError:  # the file is there, its tables not yet: read again
                    db.execute("COMMIT")
                    continue
                time.sleep(6)  # a shared lock held past the writer's default patience
                db.execute("COMMIT")
            time.sleep(0.2)

    def poll() -> None:
        while not done.is_set():
            # the file may be mid-creation: a reader tries again
            with contextlib.suppress(Exception):
                reads.append(len(optuna.get_all_study_names(f"sqlite:///{out / 'optuna.db'}")))
            time.sleep(0.05)

    readers = [threading.Thread(target=hold_reads), threading.Thread(target=poll)]
    for reader in readers:
        reader.start()
    try:
        code = main([str(experiment), "--out", str(out), "--concurrency", "1"])
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert code == 0 and reads
    assert len(pd.read_csv(out / "report.csv")) == 2
    assert len(search_trials(study_of(out))) == 2


@pytest.mark.slow
def test_an_extension_killed_midway_resumes_to_one_study_of_all_trials(coats: Path, tmp_path: Path,
                                                                       request: pytest.FixtureRequest) -> None:
    kill_drill(request)
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import cli_env

    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "search.run", str(experiment), "--out", str(out), "--concurrency", "2"]
    first = subprocess.run(command, capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(tmp_path / "extend.log", "w") as log:
        # its own session: the kill takes the driver and the local Ray it started, nothing else
        extend = subprocess.Popen(command + ["--resume", "--trials", "4"], stdout=log, stderr=subprocess.STDOUT,
                                  env=cli_env(), cwd=tmp_path, start_new_session=True)
        deadline = time.monotonic() + 600
        while extend.poll() is None and time.monotonic() < deadline and not any(
                p.read_text().strip() for p in out.glob("tune-2/run_trial_*/result.json")):
            time.sleep(0.02)
        if extend.poll() is None:
            os.killpg(extend.pid, signal.SIGKILL)
        extend.wait()
    if extend.returncode == 0:
        pytest.skip("the extension ended before its first epoch: nothing to resume")
    resumed = subprocess.run(command + ["--resume", "--trials", "4"], capture_output=True, text=True,
                             env=cli_env(), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = pd.read_csv(out / "report.csv")
    assert len(report) == 4 and report["trial_id"].is_unique
    assert report["status"].isin(["completed", "early_stopped"]).all(), report[["status", "error"]]
    study = study_of(out)
    assert sorted(t.user_attrs[TUNE_TRIAL_ID] for t in study.trials) == sorted(report["trial_id"])
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert not (out / "tune-3").exists()


def test_every_round_folder_is_rays_and_nothing_else_is() -> None:
    from search.state.names import is_ray_dir, round_dir

    assert [round_dir(n) for n in (1, 2, 10)] == ["tune", "tune-2", "tune-10"]
    assert all(is_ray_dir(name) for name in ("tune", "train", "tune-2", "tune-10"))
    assert not any(is_ray_dir(name) for name in ("tune-x", "tune-", "tuner", "best", "report.csv"))


@pytest.mark.parametrize("options, fragments", [
    (["--warm-start", "nowhere"], ["--warm-start: 'nowhere'", "the folder of an earlier search"]),
    (["--warm-start", ".", "--resume"], ["--warm-start: '.'", "a new search's option"]),
    (["--stop-when-stalled", "0"], ["Budget.stop_when_stalled: 0", "must be >= 1"]),
    (["--time-budget", "soon"], ["--time-budget: 'soon'", "a duration such as 90s"]),
])
def test_bad_growth_options_are_one_line_exit_2(coats: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                options: list[str], fragments: list[str]) -> None:
    experiment = tiny_experiment(tmp_path, coats)
    assert main([str(experiment), "--out", str(tmp_path / "out"), *options]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error
    for fragment in fragments:
        assert fragment in error, error
