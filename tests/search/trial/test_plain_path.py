"""Ray's documented path (`search.seam.versions`: the path of every Ray the fast path was not
verified on), forced on the pinned Ray: a whole search completes, ASHA stops trials, resumes
(tests/search/test_resume.py) and leaves nothing behind, in the user's default local Ray (the
dashboard on, which Ray's own placement-group cleaner needs)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from search.seam import versions
from tests.conftest import cli_env, tiny_body, write_experiment


@pytest.mark.slow
def test_a_search_on_rays_documented_path_completes_and_leaves_nothing_behind(coats: Path, tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, tiny_body(coats, trials=4, epochs=3))
    probe_out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "leak_probe.py"), str(experiment),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**cli_env(), "LEAK_PROBE_OUT": str(probe_out), versions.PATH_ENV: "plain"},
                          cwd=tmp_path, timeout=900)
    assert probe_out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Trials take Ray's documented path" in proc.stdout
    probe = json.loads(probe_out.read_text())
    assert {k: probe[k] for k in ("exit_code", "placement_groups", "actors")} == \
        {"exit_code": 0, "placement_groups": [], "actors": []}
    started = Counter(probe["started"])
    # Ray's own way: per trial a driver, a controller actor, a report queue and a placement-group cleaner
    # Tune stops a trial at its last report while Train still closes the run, and removes its placement group:
    # that is no failure to retry (a retry started a fifth controller, destroyed at once)
    retries = [line for line in (proc.stdout + proc.stderr).splitlines() if "retrying" in line]
    assert not retries, retries
    assert started["ImplicitFunc"] == started["TrainController"] == started["_QueueActor"] == 4, (started, retries)
    assert started["PlacementGroupCleaner"] == 4, started
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert len(report) == 4 and set(report["status"]) <= {"completed", "early_stopped"}, report
    assert (tmp_path / "out" / "best" / "model.pt").is_file()
