"""--resume continues a search whose driver was SIGKILLed at any moment: every trial once,
one study of N trials, a report and best/ that agree with it.

CI kills at a few moments; `pytest --all-kill-moments` kills at ten, from the first epoch
reported to the summary written after the export."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.seam import versions
from tests.conftest import cli_env, tiny_experiment

TRIALS, EPOCHS = 4, 3
# When to kill: once the trials have reported this many epochs in all, or once the end of the
# search has begun writing the report, the export or the summary. Progress, not seconds: the
# same moment whatever the machine's load.
CI_MOMENTS = ("4 epochs", "export")
ALL_MOMENTS = tuple(f"{n} epoch{'s' * (n > 1)}" for n in range(1, 8)) + ("report", "export", "summary")


def command(experiment: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "search.run", str(experiment), "--out", str(out), "--concurrency", "2"]


def reached(out: Path, moment: str) -> bool:
    if moment == "report":
        return (out / "report.csv").exists()
    if moment == "export":
        return any(out.glob(".best.tmp-*"))
    if moment == "summary":
        return (out / "summary.json").exists()
    epochs = int(moment.split()[0])
    reported = 0
    for result in out.glob("tune/run_trial_*/result.json"):
        with contextlib.suppress(OSError):
            reported += sum(1 for line in result.read_text().splitlines() if line.strip())
    return reported >= epochs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "moment" in metafunc.fixturenames:
        metafunc.parametrize("moment", ALL_MOMENTS if metafunc.config.getoption("--all-kill-moments") else CI_MOMENTS)


def assert_consistent(out: Path, proc: subprocess.CompletedProcess) -> None:
    """Exactly TRIALS trials in the report and the study, the study's values the report's,
    and best/ the report's winner."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = pd.read_csv(out / "report.csv")
    assert len(report) == TRIALS and report["trial_id"].is_unique, report
    assert report["status"].isin(["completed", "early_stopped"]).all(), report[["status", "error"]]
    storage = f"sqlite:///{out}/optuna.db"
    assert optuna.study.get_all_study_names(storage) == ["tiny"]
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * TRIALS, study.trials
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(report["val_acc"]))
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert meta["trial_id"] == report["trial_id"].iloc[0]
    assert json.loads((out / "manifest.json").read_text())["state"] == "finished"
    assert not list(out.glob(".best.*")), "a half-written export was left behind"


@pytest.mark.slow
def test_resume_after_the_driver_is_killed_at_any_moment(moment: str, coats: Path, tmp_path: Path) -> None:
    kill_and_resume(moment, coats, tmp_path, cli_env())


@pytest.mark.slow
def test_resume_on_rays_documented_path_after_a_kill(coats: Path, tmp_path: Path) -> None:
    """The plain path (search.seam.versions), forced on the pinned Ray: killed mid-search, resumed."""
    kill_and_resume("4 epochs", coats, tmp_path, {**cli_env(), versions.PATH_ENV: "plain"})


def kill_and_resume(moment: str, coats: Path, tmp_path: Path, env: dict[str, str]) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=TRIALS, epochs=EPOCHS)
    out = tmp_path / "out"
    with open(tmp_path / "first.log", "w") as log:
        # its own session: the kill takes the driver and the local Ray it started, nothing else
        first = subprocess.Popen(command(experiment, out), stdout=log, stderr=subprocess.STDOUT, env=env,
                                 cwd=tmp_path, start_new_session=True)
        deadline = time.monotonic() + 600
        while first.poll() is None and not reached(out, moment) and time.monotonic() < deadline:
            time.sleep(0.02)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    if first.returncode == 0:
        pytest.skip(f"the search ended before '{moment}': nothing to resume")
    if moment == "4 epochs":
        # a search folder is self-contained: moved elsewhere, it resumes from there
        moved = tmp_path / "moved" / "out"
        shutil.move(out, moved)
        out = moved
    if (out / "manifest.json").exists():  # else the search was killed before it started: nothing to refuse
        refused = subprocess.run(command(experiment, out), capture_output=True, text=True, env=env,
                                 cwd=tmp_path, timeout=120)
        assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(command(experiment, out) + ["--resume"], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=600)
    assert_consistent(out, resumed)


def raylet_of(pid: int) -> int | None:
    """The raylet the search process `pid` started (a child of it), or None yet."""
    children = subprocess.run(["pgrep", "-P", str(pid), "-f", "raylet/raylet"], capture_output=True, text=True)
    pids = children.stdout.split()
    return int(pids[0]) if pids else None


@pytest.mark.slow
def test_ray_dying_under_the_search_ends_it_with_the_resume_command(coats: Path, tmp_path: Path) -> None:
    """Ray's raylet SIGKILLed mid-search (as the kernel's out-of-memory killer would): one line
    says what happened and how to continue, not Ray's own error; the --resume then finishes."""
    experiment = tiny_experiment(tmp_path, coats, trials=TRIALS, epochs=EPOCHS)
    out = tmp_path / "out"
    first = subprocess.Popen(command(experiment, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=cli_env(), cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 600
    while first.poll() is None and not reached(out, "2 epochs") and time.monotonic() < deadline:
        time.sleep(0.05)
    raylet = raylet_of(first.pid)
    assert first.poll() is None and raylet is not None, "the search ended before its Ray could be killed"
    os.kill(raylet, signal.SIGKILL)
    try:
        stdout, stderr = first.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # whatever of its Ray is left
    assert first.returncode == 75, stdout[-2000:] + stderr[-2000:]
    last = next((line for line in stderr.splitlines() if "Ray stopped under the search" in line), stderr[-2000:])
    assert f"raylet (pid {raylet}) killed by SIGKILL" in last and "continue it with:" in last, stderr[-2000:]
    resume = shlex.split(last.split("continue it with: ", 1)[1])
    assert resume[-1] == "--resume"
    resumed = subprocess.run([sys.executable, *resume[1:]], capture_output=True, text=True, env=cli_env(),
                             cwd=tmp_path, timeout=600)
    assert_consistent(out, resumed)
