"""A search on several Ray nodes, and a worker node lost mid-search and replaced (nodes_probe.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli_env, fast_path_only, tiny_experiment

TRIALS, EPOCHS = 4, 3


@pytest.fixture(scope="module")
def lost_node(coats: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("nodes")
    experiment = tiny_experiment(folder, coats, trials=TRIALS, epochs=EPOCHS)
    out, result = folder / "out", folder / "probe.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("nodes_probe.py")), str(experiment), str(out),
                           str(result)], capture_output=True, text=True, timeout=900, cwd=folder,
                          env={**cli_env(), "RAY_AUTH_MODE": "token"})
    assert result.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(result.read_text()), out


@pytest.mark.slow
@fast_path_only()
def test_trials_train_on_worker_nodes_and_their_drivers_stay_on_the_head(lost_node) -> None:
    probe, _ = lost_node
    assert probe["exit_code"] == 0, probe["output"]
    nodes = {role: probe[role] for role in ("head", "killed", "joined")}
    where = {cls: Counter(a["node"] for a in probe["actors"] if a["class"] == cls)
             for cls in ("ImplicitFunc", "SynchronizationActor", "TrainController", "RayTrainWorker")}
    # Every trial's driver (with its Train controller in it: no actor of its own) and Train's
    # synchronisation actor on the head, which no failure of a worker node takes down.
    assert set(where["ImplicitFunc"]) == {nodes["head"]} == set(where["SynchronizationActor"])
    assert not where["TrainController"]
    # The training itself where the CPUs are: on the first worker node, then on its replacement.
    assert set(where["RayTrainWorker"]) == {nodes["killed"], nodes["joined"]}, (nodes, where)


@pytest.mark.slow
def test_a_lost_worker_node_costs_no_trial_and_at_most_the_epoch_it_was_training(lost_node) -> None:
    probe, out = lost_node
    assert probe["exit_code"] == 0, probe["output"]
    report = pd.read_csv(out / "report.csv", dtype={"trial_id": str})
    assert len(report) == TRIALS and set(report["status"]) <= {"completed", "early_stopped"}, report
    assert probe["retries"] >= 1, probe["output"]  # search/trial.py's "retrying from its last checkpoint"
    # Each trial's epochs reached Tune once each, in order: a retried trial went on from its
    # last checkpoint, so the node's loss cost it only the epoch in progress.
    for result in out.glob("tune/run_trial_*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line.strip()]
        assert epochs == list(range(1, len(epochs) + 1)), (result.parent.name, epochs)
