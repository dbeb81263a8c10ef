"""`--out` as a local folder or a URI (here a local S3 server): paths, upload, download, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import torch

from search.storage import Output, load_state, open_output


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
