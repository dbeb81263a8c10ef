"""`--mlflow URI` (issue 17): a search tracked in a real MLflow tracking server that the test
starts: a parent run, one child run per trial with its parameters, epochs and status, and the
best model logged with its signature; a --resume goes on in the same runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from search.experiment.spec import Experiment
from search.run import main
from search.tracking import OUT_TAG, PARENT_TAG, STATUS_TAG, TRIAL_TAG, open_tracking
from tests.conftest import tiny_experiment

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free local port, a SQLite store and a local artifact folder; without
    its job runner (seven worker processes this test never uses), in a process group of its own
    so that uvicorn goes with it."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "art")],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def test_an_mlflow_server_that_does_not_answer_is_refused_before_the_data_is_read(
        coats: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    experiment = tiny_experiment(tmp_path, coats)
    dead = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    assert main([str(experiment), "--out", str(tmp_path / "out"), "--mlflow", dead]) == 2
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --mlflow: {dead!r}") or error.startswith(f"error: --mlflow: {dead}"), error
    assert "tracking server that answers" in error
    assert not (tmp_path / "out" / "data_report.csv").exists()  # refused before the data was decoded


def test_a_search_is_a_parent_run_with_a_run_per_trial_and_the_best_model(
        ray_session, mlflow_server: str, coats: Path, tmp_path: Path) -> None:
    experiment, out = tiny_experiment(tmp_path, coats, trials=2, epochs=2), tmp_path / "out"
    assert main([str(experiment), "--out", str(out), "--concurrency", "1", "--mlflow", mlflow_server]) == 0
    assert json.loads((out / "manifest.json").read_text())["state"] == "finished"  # tracked, and finished
    client = mlflow.MlflowClient(mlflow_server)
    saved = json.loads((out / "mlflow.json").read_text())
    parent = client.get_run(saved["run_id"])
    assert client.get_experiment(parent.info.experiment_id).name == "tiny"
    assert parent.info.status == "FINISHED" and parent.data.tags[OUT_TAG] == str(out)
    assert parent.data.params["budget.trials"] == "2" and parent.data.params["image_size_px"] == "32"

    report = pd.read_parquet(out / "report.parquet")
    summary = json.loads((out / "summary.json").read_text())
    children = _children(client, saved)
    assert sorted(children) == sorted(report["trial_id"])
    history = pd.read_parquet(out / "history.parquet")
    for _, row in report.iterrows():
        child = children[row["trial_id"]]
        assert child.data.tags[STATUS_TAG] == row["status"]
        assert child.info.status == "FINISHED"
        assert any("augment" in name for name in child.data.params), child.data.params  # what TPE sampled
        epochs = client.get_metric_history(child.info.run_id, "val_acc")
        assert [m.step for m in sorted(epochs, key=lambda m: m.step)] == list(range(1, int(row["epochs"]) + 1))
        last = history[history["trial_id"] == row["trial_id"]].sort_values("epoch").iloc[-1]
        assert child.data.metrics["val_acc"] == pytest.approx(last["val_acc"])
        assert "pid" not in child.data.metrics and "timestamp" not in child.data.metrics  # Tune's bookkeeping
    # TensorBoard's event files, one per trial (`tensorboard --logdir OUT/tune`)
    assert len({p.parent for p in (out / "tune").glob("*/events.out.tfevents.*")}) == len(report)
    assert parent.data.metrics["best_test_acc"] == pytest.approx(summary["best"]["test_acc"])
    assert parent.data.tags["imagesearch.best_trial"] == summary["best_trial"]
    serving = json.loads((out / "best" / "meta.json").read_text())["serving"]
    assert parent.data.metrics["serving_batch1_p50_ms"] == pytest.approx(serving["onnxruntime_cpu"]["batch1_p50_ms"])
    assert parent.data.metrics["serving_parameters"] == serving["parameters"]

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "report.csv", "summary.json", "best"} <= artifacts
    assert "best/meta.json" in {a.path for a in client.list_artifacts(parent.info.run_id, "best")}
    models = client.search_logged_models(experiment_ids=[parent.info.experiment_id])
    assert [m.source_run_id for m in models] == [parent.info.run_id]
    logged = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}")
    inputs = logged.metadata.get_input_schema().inputs[0]
    assert inputs.shape == (-1, 3, 32, 32)
    meta = json.loads((out / "best" / "meta.json").read_text())
    assert logged.metadata.get_output_schema().inputs[0].shape == (-1, len(meta["classes"]))
    images = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    logits = logged.predict({"image": images})["logits"]
    assert np.asarray(logits).shape == (3, len(meta["classes"]))

    # Extended by --resume (without repeating --mlflow): the same parent run, one more trial run.
    assert main([str(experiment), "--out", str(out), "--concurrency", "1", "--resume", "--trials", "3"]) == 0
    assert json.loads((out / "mlflow.json").read_text()) == saved
    children = _children(client, saved)
    assert sorted(children) == sorted(pd.read_parquet(out / "report.parquet")["trial_id"]) and len(children) == 3
    assert client.get_run(saved["run_id"]).info.status == "FINISHED"
    runs = client.search_runs([parent.info.experiment_id], max_results=100)
    assert len(runs) == 4  # the parent and three trials: nothing logged twice


def _children(client, saved: dict[str, str]) -> dict[str, object]:
    runs = client.search_runs([saved["experiment_id"]], filter_string=f"tags.`{PARENT_TAG}` = '{saved['run_id']}'",
                              max_results=100)
    return {run.data.tags[TRIAL_TAG]: run for run in runs}


def test_a_resume_finds_a_new_run_for_a_deleted_one_and_goes_on_untracked_without_its_server(
        mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    client, experiment, out = mlflow.MlflowClient(mlflow_server), Experiment(name="gone", data="d"), tmp_path / "out"
    out.mkdir()
    first = open_tracking(mlflow_server, experiment, out, "out", resume=False)
    assert open_tracking(None, experiment, out, "out", resume=True) == first  # mlflow.json: the same run
    client.delete_run(first.run_id)
    second = open_tracking(None, experiment, out, "out", resume=True)
    assert second.run_id != first.run_id and json.loads((out / "mlflow.json").read_text())["run_id"] == second.run_id
    # An experiment in MLflow's trash is restored for a new search of its name (MLflow refuses a new one).
    client.delete_experiment(second.experiment_id)
    third = open_tracking(mlflow_server, experiment, tmp_path, "elsewhere", resume=False)
    assert third.experiment_id == second.experiment_id
    assert client.get_experiment(third.experiment_id).lifecycle_stage == "active"
    # A resume whose server is gone goes on untracked, saying why; a new search naming it is refused.
    saved = json.loads((out / "mlflow.json").read_text())
    (out / "mlflow.json").write_text(json.dumps({**saved, "uri": f"http://127.0.0.1:{_free_port()}"}))
    capsys.readouterr()
    assert open_tracking(None, experiment, out, "out", resume=True) is None
    assert "not tracked in MLflow this time" in capsys.readouterr().out
