"""`--out` as a local folder or a URI (here a local S3 server): paths, upload, download, checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from search.state import lease
from search.state.storage import Output, load_state, open_output


def test_a_local_path_and_a_file_uri_are_the_same_local_output(tmp_path: Path) -> None:
    plain = open_output(str(tmp_path / "out"), tmp_path / "work")
    uri = open_output(f"file://{tmp_path}/out", tmp_path / "work")
    assert plain == uri and not plain.remote and plain.local == tmp_path / "out"
    assert plain.child("tune") == str(tmp_path / "out" / "tune")


def test_a_remote_output_round_trips_the_drivers_files(s3_server, tmp_path: Path) -> None:
    out = open_output(s3_server("bucket-a/runs/exp"), tmp_path / "work")
    assert out.remote and out.path == "bucket-a/runs/exp" and out.local.parent == tmp_path / "work" / "runs"
    assert out.child("tune").startswith("s3://test:test@bucket-a/runs/exp/tune?endpoint_override=")
    assert not out.exists("tune")
    (out.local / "report.csv").write_text("a,b\n1,2\n")
    (out.local / "best").mkdir()
    (out.local / "best" / "meta.json").write_text("{}")
    for ray_dir in ("tune", "tune-2"):  # Ray's folders (an extension's round too) are Ray's: never uploaded
        (out.local / ray_dir).mkdir()
        (out.local / ray_dir / "x").write_text("x")
    out.filesystem.create_dir("bucket-a")
    out.upload()
    assert out.exists("report.csv") and out.exists("best", "meta.json")
    assert not out.exists("tune") and not out.exists("tune-2")

    elsewhere = Output(uri=out.uri, filesystem=out.filesystem, path=out.path, local=tmp_path / "other")
    elsewhere.local.mkdir()
    elsewhere.download()
    assert (elsewhere.local / "report.csv").read_text() == "a,b\n1,2\n"
    assert (elsewhere.local / "best" / "meta.json").read_text() == "{}"


def test_load_state_reads_a_checkpoint_wherever_it_lives(s3_server, tmp_path: Path) -> None:
    out = open_output(s3_server("bucket-b/run"), tmp_path / "work")
    out.filesystem.create_dir("bucket-b/run/train/epoch-0001")
    state = {"epoch": 1, "model": {"w": torch.arange(3.0)}}
    local = tmp_path / "state.pt"
    torch.save(state, local)
    pafs.copy_files(str(local), "bucket-b/run/train/epoch-0001/state.pt",
                    source_filesystem=pafs.LocalFileSystem(), destination_filesystem=out.filesystem)
    loaded = load_state(out, "bucket-b/run/train/epoch-0001/", "state.pt")
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], torch.arange(3.0))


def test_a_search_writes_everything_to_an_s3_out_and_resumes_from_it(ray_session, s3_server, coats: Path,
                                                                       tmp_path: Path) -> None:
    import pandas as pd

    from search.run import main
    from tests.conftest import tiny_experiment

    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=2)
    uri = s3_server("results/tiny")
    out = open_output(uri, tmp_path / "unused")
    out.filesystem.create_dir("results")
    assert main([str(experiment), "--out", uri]) == 0
    for name in ("report.csv", "data_report.csv", "summary.json", "best/model.pt", "best/meta.json"):
        assert out.exists(*name.split("/")), name
    trial_files = out.filesystem.get_file_info(pafs.FileSelector("results/tiny/train", recursive=True))
    assert any(info.base_name == "state.pt" for info in trial_files)  # checkpoints written by the workers
    with out.filesystem.open_input_stream("results/tiny/report.csv") as stream:
        report = pd.read_csv(stream)
    assert len(report) == 2 and (report["status"] != "error").all()

    from search import load_best

    predictions = load_best(uri).predict(coats / "test")  # best/ fetched from S3, checksums verified
    assert len(predictions) == 16 and predictions["error"].isna().all()

    assert main([str(experiment), "--out", uri]) == 2  # an existing search is never overwritten
    assert main([str(experiment), "--out", uri, "--resume"]) == 0  # finished: resuming changes nothing
    with out.filesystem.open_input_stream("results/tiny/report.csv") as stream:
        assert pd.read_csv(stream)["trial_id"].tolist() == report["trial_id"].tolist()



def test_the_study_is_uploaded_as_sqlite_sees_it_not_as_its_bytes_are_mid_write(s3_server, tmp_path: Path) -> None:
    import sqlite3

    out = open_output(s3_server("bucket-c/run"), tmp_path / "work")
    out.filesystem.create_dir("bucket-c")
    out.upload_database("optuna.db")  # none yet: nothing to copy, no error
    assert not out.exists("optuna.db")
    writer = sqlite3.connect(out.local / "optuna.db")
    writer.execute("create table trials (number integer)")
    writer.executemany("insert into trials values (?)", [(n,) for n in range(3)])
    writer.commit()
    writer.execute("insert into trials values (3)")  # a write under way, not committed
    out.upload_database("optuna.db")
    writer.rollback()
    copy = tmp_path / "copy.db"
    copy.write_bytes(out.read_bytes("bucket-c/run/optuna.db"))
    assert sqlite3.connect(copy).execute("select number from trials").fetchall() == [(0,), (1,), (2,)]
    assert [p.name for p in out.local.iterdir()] == ["optuna.db"]  # no snapshot left behind

@pytest.mark.slow
def test_a_lost_head_with_out_on_s3_resumes_on_a_new_head_from_the_uri(s3_server, coats: Path, tmp_path: Path,
                                                                       request: pytest.FixtureRequest) -> None:
    """The head node's loss, as the README tells the user to recover from it: the driver and
    the Ray it started SIGKILLed mid-search (nothing of the head survives), then the same
    command with --resume on a "new head": another cache and work folder, a new Ray. Every
    trial once, the study's trials the report's, nothing trained again from scratch. On demand
    (`--all-kill-moments`): CI's S3 resume is test_a_search_writes_everything_to_an_s3_out_and_resumes_from_it."""
    from tests.conftest import kill_drill

    kill_drill(request)
    import optuna
    import pandas as pd

    from tests.conftest import cli_env, tiny_experiment

    trials, epochs = 4, 2
    experiment = tiny_experiment(tmp_path, coats, trials=trials, epochs=epochs)
    uri = s3_server("results/lost-head")
    out = open_output(uri, tmp_path / "unused")
    out.filesystem.create_dir("results")

    def command(head: str) -> list[str]:
        return [sys.executable, "-m", "search.run", str(experiment), "--out", uri, "--concurrency", "2",
                "--cache", str(tmp_path / head / "cache")]

    def checkpoints() -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(f"{out.path}/train", recursive=True, allow_not_found=True)
        return [info for info in out.filesystem.get_file_info(selector) if info.base_name == "state.pt"]

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command("head-1"), stdout=log, stderr=subprocess.STDOUT, env=cli_env(),
                                 cwd=tmp_path, start_new_session=True)
        deadline = time.monotonic() + 600
        # Killed as a trial's last checkpoint lands: Tune has not heard that epoch's report yet,
        # and its state on S3 (saved every 10 s or more) is older still.
        while first.poll() is None and time.monotonic() < deadline and not any(
                info.path.endswith(f"/epoch-{epochs:04d}/state.pt") for info in checkpoints()):
            time.sleep(0.1)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    shutil.rmtree(tmp_path / "head-1")  # the old head's disk is gone with it

    # The dead search's lease holds the URI until it lapses (test_lease.py: within lease.TTL_S);
    # its lapse is then stood in for by removing it, a minute sooner.
    refused = subprocess.run(command("head-2") + ["--resume"], capture_output=True, text=True, env=cli_env(),
                             cwd=tmp_path, timeout=300)
    assert refused.returncode == 2 and "in use by another search" in refused.stderr, refused.stderr[-3000:]
    out.filesystem.delete_file(f"{out.path}/{lease.LEASE_FILE}")
    resumed = subprocess.run(command("head-2") + ["--resume"], capture_output=True, text=True, env=cli_env(),
                             cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    with out.filesystem.open_input_stream(f"{out.path}/report.csv") as stream:
        report = pd.read_csv(stream, dtype={"trial_id": str})
    assert len(report) == trials and report["trial_id"].is_unique, report
    assert report["status"].isin(["completed", "early_stopped"]).all(), report[["status", "error"]]
    study_file = tmp_path / "optuna.db"
    study_file.write_bytes(out.read_bytes(f"{out.path}/optuna.db"))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_file}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * trials, \
        ([(t.number, t.state, t.value, t.user_attrs) for t in study.trials], report.to_string(), resumed.stdout[-4000:])
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(report["val_acc"]))
    assert out.exists("best", "meta.json")
    assert json.loads(out.read_bytes(f"{out.path}/manifest.json"))["state"] == "finished"
