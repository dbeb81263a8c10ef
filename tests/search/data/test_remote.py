"""`--data s3://...`: photos in object storage (the local S3 server), mirrored and kept up to date."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from bench import s3
from search.state import memory_fit as memory
from search.data import remote
from search.run import main
from search.state.storage import display_uri
from tests.conftest import write_experiment
from trainables.data import DataError


def upload(folder: Path, uri: str) -> tuple[pafs.FileSystem, str]:
    s3.upload(folder, uri)
    return pafs.FileSystem.from_uri(uri)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


class Counted:
    """A progress callback that remembers how many files the last mirroring downloaded."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.total = total


def test_a_mirror_downloads_what_changed_only(s3_server, coats: Path, tmp_path: Path) -> None:
    uri = s3_server("photos-a/coats")
    filesystem, path = upload(coats, uri)
    counted = Counted()
    local, downloaded, total = remote.mirror(uri, tmp_path / "cache", counted)
    assert (downloaded, total) == (len(files(coats)),) * 2
    assert files(local) == files(coats) and counted.total == len(files(coats))
    assert "test:test" not in str(local) and display_uri(uri) == "s3://photos-a/coats"

    counted.total = -1
    assert remote.mirror(uri, tmp_path / "cache", counted) == (local, 0, total) and counted.total == -1

    changed, deleted = sorted(files(coats))[0], sorted(files(coats))[-1]
    with filesystem.open_output_stream(f"{path}/{changed}") as stream:
        stream.write(b"new bytes")
    filesystem.delete_file(f"{path}/{deleted}")
    assert remote.mirror(uri, tmp_path / "cache", counted)[1:] == (1, total - 1)
    assert (local / changed).read_bytes() == b"new bytes" and not (local / deleted).exists()


def test_downloaded_images_are_handed_on_as_they_land_for_decoding_alongside(s3_server, coats: Path,
                                                                            tmp_path: Path) -> None:
    uri = s3_server("photos-e/coats")
    filesystem, path = upload(coats, uri)
    filesystem.open_output_stream(f"{path}/train/README.txt").write(b"no image")
    events: list[tuple[str, object]] = []
    images = sorted(name for name in files(coats) if name.endswith(".jpg") or name.endswith(".png"))
    local, downloaded, _ = remote.mirror(uri, tmp_path, lambda done, total: events.append(("downloaded", done)),
                                         ready=lambda p: events.append(("ready", p)))
    handed = [value for what, value in events if what == "ready"]
    assert sorted(str(p.relative_to(local)) for p in handed) == images  # each image once, nothing else
    assert all((p).is_file() for p in handed)
    # handed over while downloads still ran, not after them all
    assert events.index(("ready", handed[0])) < events.index(("downloaded", downloaded))

    events.clear()
    remote.mirror(uri, tmp_path, ready=lambda p: events.append(("ready", p)))
    assert events == []  # nothing downloaded: the decoded cache will serve, nothing to decode
    with filesystem.open_output_stream(f"{path}/{images[0]}") as stream:
        stream.write((coats / images[-1]).read_bytes())
    remote.mirror(uri, tmp_path, ready=lambda p: events.append(("ready", p)))
    assert sorted(str(p.relative_to(local)) for _, p in events) == images  # one changed: all to decode again
    assert events[-1] == ("ready", local / images[0])  # the unchanged ones first, then the download


def test_photos_in_s3_larger_than_memory_are_refused_before_any_download(
        s3_server, coats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    uri = s3_server("photos-f/coats")
    upload(coats, uri)
    monkeypatch.setattr(memory, "available_bytes", lambda: 100_000)
    experiment = write_experiment(tmp_path, EXPERIMENT.format(data=uri))
    assert main([str(experiment), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--check"]) == 2
    error = capsys.readouterr().err
    assert "error: --data: 's3://photos-f/coats'" in error and "its 80 images at 32 px" in error
    assert not (tmp_path / "cache" / remote.MIRRORS_DIR).exists()


def test_an_empty_prefix_or_a_missing_bucket_is_one_clear_error(s3_server, tmp_path: Path) -> None:
    filesystem, _ = pafs.FileSystem.from_uri(s3_server("photos-b"))
    filesystem.create_dir("photos-b")
    with pytest.raises(DataError, match="^s3://photos-b/nothing: no files there"):
        remote.mirror(s3_server("photos-b/nothing"), tmp_path)
    with pytest.raises(DataError, match="^s3://no-such-bucket/p: no files there"):
        remote.mirror(s3_server("no-such-bucket/p"), tmp_path)


EXPERIMENT = """
name="remote",
data="{data}",
image_size_px=32,
weights="none",
space=Space(arch="small_cnn", cnn_width=8, cnn_depth=2, batch_size=16, augment=0.0, optimizer="adam", lr={{"adam": 1e-3}}),
budget=Budget(trials=1, max_epochs=1),
resources=Resources(workers=1, cpus_per_worker=1),
"""


def test_a_search_on_s3_photos_equals_one_on_the_same_folder(ray_session, s3_server, coats: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    uri = s3_server("photos-d/coats")
    upload(coats, uri)
    experiment = write_experiment(tmp_path, EXPERIMENT.format(data=coats))
    assert main([str(experiment), "--out", str(tmp_path / "disk"), "--cache", str(tmp_path / "cache")]) == 0
    assert main([str(experiment), "--out", str(tmp_path / "s3"), "--data", uri, "--cache", str(tmp_path / "cache")]) == 0
    # the same decoded images, labels and split, so the same search
    fingerprints = {json.loads((tmp_path / run / "manifest.json").read_text())["data"] for run in ("disk", "s3")}
    assert len(fingerprints) == 1
    reports = [pd.read_csv(tmp_path / run / "report.csv") for run in ("disk", "s3")]
    assert [r["status"].tolist() for r in reports] == [["completed"], ["completed"]]
    assert "s3://photos-d/coats" in capsys.readouterr().out and "test:test" not in (tmp_path / "s3" / "manifest.json").read_text()
    # a later run finds its mirror up to date: nothing downloaded, the decoded cache reused as for a folder
    assert remote.mirror(uri, tmp_path / "cache")[1] == 0
