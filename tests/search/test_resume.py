"""--resume continues a search whose driver was SIGKILLed: every trial once, none lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli_env, tiny_experiment


def finished_trials(out: Path, epochs: int) -> int:
    count = 0
    for result in out.glob("tune/run_trial_*/result.json"):
        lines = result.read_text().splitlines()
        count += bool(lines) and json.loads(lines[-1]).get("epoch") == epochs
    return count


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, coats, trials=5, epochs=3)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "search.run", str(experiment), "--out", str(out)]
    with open(tmp_path / "first.log", "w") as log:
        # its own session: the kill takes the driver and the local Ray it started, nothing else
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=cli_env(), cwd=tmp_path,
                                 start_new_session=True)
        deadline = time.monotonic() + 300
        while finished_trials(out, 3) < 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert first.poll() is None, "the search ended before it could be killed"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "report.csv").exists()

    refused = subprocess.run(command, capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=cli_env(), cwd=tmp_path,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = pd.read_csv(out / "report.csv")
    assert len(report) == 5 and report["trial_id"].is_unique
    assert report["status"].isin(["completed", "early_stopped"]).all(), report[["status", "error"]]
    assert (out / "best" / "meta.json").exists()
    # the Optuna study went on too: one study, each trial once
    import optuna

    storage = f"sqlite:///{out}/optuna.db"
    assert optuna.study.get_all_study_names(storage) == ["tiny"]
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
