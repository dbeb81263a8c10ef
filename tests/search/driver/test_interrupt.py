"""Ctrl-C (SIGINT) or SIGTERM stops a search cleanly: not a success, the report marks what did
not finish, and the printed --resume command finishes the search."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import cli_env, tiny_experiment

TRIALS = 4  # 2 at a time: interrupted at the first result, some are running, some not started


def interrupt_after_first_result(experiment: Path, out: Path, signum: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run the search, send `signum` to its driver once a trial has reported, wait for its exit.
    A report's checkpoint is in OUT/train at once; Tune's copy of its results (OUT/tune) may lag
    by seconds, long enough on a busy machine for a small search to end first."""
    proc = subprocess.Popen([sys.executable, "-m", "search.run", str(experiment), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=cwd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(out.glob("train/train-*/epoch-*/*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the search ended before it could be interrupted"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow
def test_ctrl_c_saves_marks_unfinished_trials_and_says_how_to_resume(coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=TRIALS, epochs=2)
    out = tmp_path / "out"
    stopped = interrupt_after_first_result(experiment, out, signal.SIGINT, tmp_path)
    assert stopped.returncode == 130, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "Tuner.restore" not in stopped.stdout + stopped.stderr
    command = next(line.split("continue it with: ", 1)[1] for line in stopped.stderr.splitlines()
                   if "continue it with: " in line)
    assert command.endswith("--resume") and str(out) in command
    report = pd.read_csv(out / "report.csv")
    assert (report["status"] == "unfinished").any(), report[["status", "epochs"]]
    assert not ((report["status"] == "early_stopped") & (report["epochs"] == 0)).any()
    assert json.loads((out / "manifest.json").read_text())["state"] == "interrupted"

    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "search.run"]
    resumed = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, env=cli_env(),
                             cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = pd.read_csv(out / "report.csv")
    assert len(report) == TRIALS and report["status"].isin(["completed", "early_stopped"]).all()
    assert json.loads((out / "manifest.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_sigterm_exits_143_with_the_state_saved(coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=TRIALS, epochs=2)
    out = tmp_path / "out"
    stopped = interrupt_after_first_result(experiment, out, signal.SIGTERM, tmp_path)
    assert stopped.returncode == 143, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "--resume" in stopped.stderr and (out / "report.csv").is_file()
    assert json.loads((out / "manifest.json").read_text())["state"] == "interrupted"


@pytest.mark.slow
def test_sigterm_during_the_export_says_how_to_finish(coats: Path, tmp_path: Path) -> None:
    """After Tune's run, while the report and the export are written (report.csv comes first):
    a SIGTERM stops the command at once, with 143 and the --resume command, as Ctrl-C would;
    not ray.init's silent exit 15."""
    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=1)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "search.run", str(experiment), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (out / "report.csv").is_file():
        time.sleep(0.1)
    assert proc.poll() is None, "the search ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert f"continue it with: python -m search.run {experiment} --out {out} --resume" in stderr, stderr[-2000:]
    assert json.loads((out / "manifest.json").read_text())["state"] != "finished"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_data_decodes_stops_at_once_without_a_resume_line(
        coats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        signum: int, code: int) -> None:
    from search import run

    def decoding(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signum)  # as a user's Ctrl-C or a scheduler's SIGTERM would, mid-decode
        time.sleep(5)
        raise AssertionError("the signal did not stop the command")

    def left_behind(signum: int, frame: object) -> None:  # as a Ray or Tune started earlier in the process may leave
        pass

    monkeypatch.setattr(run, "_prepare", decoding)
    experiment = tiny_experiment(tmp_path, coats)
    before = {s: signal.signal(s, left_behind) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert run.main([str(experiment), "--out", str(tmp_path / "out")]) == code
        # the command's handlers are gone with it: the ones before it are back
        assert signal.getsignal(signal.SIGINT) is left_behind and signal.getsignal(signal.SIGTERM) is left_behind
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    err = capsys.readouterr().err
    assert "Interrupted." in err and "--resume" not in err  # nothing was started: nothing to resume


def test_a_signal_after_the_search_started_says_how_to_continue(
        coats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A signal during the report or the export (after Tune's run ended) stops the command at
    once; the search's folder holds what --resume needs to finish it (the kill drills)."""
    from search import run
    from search.state import manifest

    def exporting(experiment: object, args: object, output: Any, *rest: object) -> int:
        manifest.write(output.local, experiment, "sha", "running")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr(run, "_search", exporting)
    out = tmp_path / "out"
    experiment = tiny_experiment(tmp_path, coats)
    assert run.main([str(experiment), "--out", str(out)]) == 143
    line = next(line for line in capsys.readouterr().err.splitlines() if "continue it with: " in line)
    assert line.endswith(f"--out {out} --resume")
