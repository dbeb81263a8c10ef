"""The trial's checkpoint folders: what Ray Train registered stays, what it never did goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.seam.tune_files import CHECKPOINT_SNAPSHOT
from search.trial.checkpoints import remove_unregistered_checkpoints
from search.trial.settings import train_run_name


def checkpoints(run: Path, *epochs: int) -> None:
    for epoch in epochs:
        (run / f"epoch-{epoch:04d}").mkdir(parents=True)
        (run / f"epoch-{epoch:04d}" / "state.pt").write_bytes(b"\0" * 100)


def test_only_the_checkpoints_ray_train_never_registered_are_removed(tmp_path: Path) -> None:
    registered, never, unreadable = (tmp_path / train_run_name(t) for t in ("aaaa", "bbbb", "cccc"))
    checkpoints(registered, 1, 2, 3)  # epoch 3: cut short by a full disk, never registered
    (registered / CHECKPOINT_SNAPSHOT).write_text(json.dumps({
        "checkpoint_results": [{"checkpoint_dir_name": "epoch-0002"}],
        "latest_checkpoint_result": {"checkpoint_dir_name": "epoch-0001"}}))
    checkpoints(never, 1)  # its first checkpoint failed: Train wrote no record
    checkpoints(unreadable, 1, 2)
    (unreadable / CHECKPOINT_SNAPSHOT).write_text('{"checkpoint_res')  # the record cut short itself: keep all
    removed = remove_unregistered_checkpoints(tmp_path)
    assert removed == [registered / "epoch-0003", never / "epoch-0001"]
    assert sorted(p.name for p in registered.iterdir()) == [CHECKPOINT_SNAPSHOT, "epoch-0001", "epoch-0002"]
    assert list(never.iterdir()) == []
    assert sorted(p.name for p in unreadable.glob("epoch-*")) == ["epoch-0001", "epoch-0002"]
    assert remove_unregistered_checkpoints(tmp_path / "missing") == []


def test_on_a_ray_whose_file_names_were_not_checked_a_missing_record_keeps_every_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray may have renamed its record: nothing is deleted on what could not be found."""
    from search.seam import versions

    monkeypatch.setattr(versions, "ray_version", lambda: "2.61.0")
    run = tmp_path / train_run_name("aaaa")
    checkpoints(run, 1, 2)
    assert remove_unregistered_checkpoints(tmp_path) == []
    assert sorted(p.name for p in run.iterdir()) == ["epoch-0001", "epoch-0002"]


def test_a_checkpoint_folder_left_by_a_killed_worker_goes_when_the_next_run_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Ray's documented path a checkpoint travels through a local folder; Ray destroys a stopped
    trial's worker while its last report may still be copying it, so that folder outlived every
    such trial in /tmp (13 MB each for a small CNN, 130 for an unfrozen Inception)."""
    import os
    import subprocess
    import sys
    import tempfile

    from search.trial.checkpoints import SCRATCH_PREFIX, checkpoint_scratch, remove_orphaned_scratch

    killed = ("import os, signal, pathlib; from search.trial.checkpoints import checkpoint_scratch\n"
              "scratch = checkpoint_scratch()\n"
              "(pathlib.Path(scratch.name) / 'state.pt').write_bytes(b'x' * 1000)\n"
              "os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", killed], env={**os.environ, "TMPDIR": str(tmp_path)}, check=False)
    [orphan] = tmp_path.glob(f"{SCRATCH_PREFIX}*")
    other = tmp_path / "imagesearch-checkpoint-notapid"  # not ours to judge
    other.mkdir()
    # The next run's reports, in a process of their own (the worker's module patches Ray Train where imported).
    next_run = ("from search.trial.worker import EpochReports\n"
                "config = {'objective': 'val_acc', 'mode': 'max', 'fast_path': False}\n"
                "EpochReports(config, rank=0, best=None, extra={})")
    subprocess.run([sys.executable, "-c", next_run], env={**os.environ, "TMPDIR": str(tmp_path)}, check=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with checkpoint_scratch() as folder:
        assert not orphan.exists() and other.exists()
        assert Path(folder).name.startswith(f"{SCRATCH_PREFIX}{os.getpid()}-")
        assert remove_orphaned_scratch(tmp_path) == [] and Path(folder).exists()  # a running process keeps its own
    assert not Path(folder).exists()
