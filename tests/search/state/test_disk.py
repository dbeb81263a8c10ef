"""A full disk, on real small filesystems (tmpfs): the estimate and its warning, the one line
and exit 74 when a write finds the disk full, and no partial file left behind."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from search.experiment.spec import Budget, Choice, Experiment, Space
from search.run import EXIT_DISK_FULL
from search.state import disk
from tests.conftest import tiny_experiment
from tests.search.test_cli import run_cli


def test_the_estimate_counts_what_the_search_keeps_at_once_at_the_largest_architecture() -> None:
    small = Experiment(name="x", data="d", space=Space(arch="small_cnn"), budget=Budget(trials=4, max_epochs=10),
                       concurrency=2, ensemble="off")
    estimate = disk.estimate(small)
    # 2 running trials x (best + latest), the best of the 1 ended trial select="accuracy" could export,
    # and best/: the whole model as model.pt and model.onnx.
    assert (estimate.running, estimate.per_running, estimate.ended) == (2, 2, 1)
    assert estimate.total_mb == pytest.approx((2 * 2 + 1) * 37 + 2 * 13)
    assert disk.estimate(small, concurrency=1).running == 1  # the plan's figure, where known, wins
    within = Experiment(name="x", data="d", space=Space(arch="small_cnn"), budget=Budget(trials=8, max_epochs=10),
                        concurrency=2, select="fastest_within=0.01", ensemble="off")
    assert disk.estimate(within).ended == 5  # the top 5 the rule chooses among
    # An ensemble (the default) may use any of the top 5 ended trials, and best/ holds up to 5 models.
    assemble = disk.estimate(Experiment(name="x", data="d", space=Space(arch="small_cnn"),
                                        budget=Budget(trials=8, max_epochs=10), concurrency=2))
    assert (assemble.ended, assemble.models, assemble.total_mb) == (5, 5, (2 * 2 + 5) * 37 + 2 * 5 * 13)
    assert "best/ (up to 5 models of small_cnn)" in str(assemble)
    every = Experiment(name="x", data="d", space=Space(arch="small_cnn"), budget=Budget(trials=4, max_epochs=10),
                       checkpoints="all")
    assert disk.estimate(every).total_mb == pytest.approx(4 * 10 * 37 + 2 * 13)
    mixed = Experiment(name="x", data="d", image_size_px=80,
                       space=Space(arch=Choice("small_cnn", "inception_frozen", "inception_partial")),
                       budget=Budget(trials=2, max_epochs=1, grace_period_epochs=1), concurrency=2, ensemble="off")
    estimate = disk.estimate(mixed)
    assert (estimate.arch, estimate.per_running, estimate.total_mb) == ("inception_partial", 1, 3 * 157 + 2 * 109)
    assert disk.estimate(mixed, checkpoint_mb=2.0).total_mb == 6.0 + 2 * 109  # a measured checkpoint counts


def test_low_space_is_warned_from_the_real_free_space(small_disks, tmp_path: Path) -> None:
    experiment = Experiment(name="x", data="d", space=Space(arch="small_cnn"), budget=Budget(trials=3, max_epochs=2),
                            concurrency=3, ensemble="off")
    out = small_disks.mount("1M") / "out"
    warning = disk.low_space_warning(experiment, out)
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"warning: low disk space: {out} has 1 MB free")
    assert ("up to 285 MB (3 trials x 2 checkpoints and the best of 1 ended trials, of up to 37 MB each, "
            "and best/ (small_cnn))") in warning
    assert disk.low_space_warning(experiment, tmp_path) is None  # the test machine's disk has 285 MB


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
    (OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28]"), "No space left on device"),  # pyarrow
    (sqlite3.OperationalError("database or disk is full"), "database or disk is full"),
    (RuntimeError("Training failed: OSError: [Errno 28] ... No space left on device"), "No space left on device"),
    (OSError(errno.EACCES, "Permission denied"), None),
    (ValueError("out of range"), None),
])
def test_a_full_disk_is_recognised_as_an_error_or_as_text(error: Exception, reason: str | None) -> None:
    assert disk.full_reason(error) == reason
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("while writing the report") from inner
    except RuntimeError as outer:
        assert disk.full_reason(outer) == reason


def fill(path: Path) -> None:
    with open(path, "wb") as file:
        while True:
            file.write(b"\0" * 65536)


def test_a_write_that_fills_the_disk_leaves_no_partial_file(small_disks) -> None:
    folder = small_disks.mount("256k")
    (folder / "earlier.csv").write_text("kept: written before the block\n")
    with pytest.raises(disk.DiskFull) as raised, disk.writing(folder / "report", partial_in=folder):
        (folder / "complete.csv").write_text("kept: complete before the disk filled\n")
        fill(folder / "partial.bin")
    assert sorted(p.name for p in folder.iterdir()) == ["complete.csv", "earlier.csv"]
    message = str(raised.value)
    assert message.startswith(f"disk full: No space left on device writing {folder / 'report'} (0.")
    assert message.endswith(" MB free there)")
    # an error that names its file: that one, and only inside the folder
    with pytest.raises(disk.DiskFull, match="writing /elsewhere/x"), disk.writing(folder, partial_in=folder):
        raise OSError(errno.ENOSPC, "No space left on device", "/elsewhere/x")
    assert sorted(p.name for p in folder.iterdir()) == ["complete.csv", "earlier.csv"]
    with pytest.raises(PermissionError), disk.writing(folder, partial_in=folder):
        raise PermissionError(errno.EACCES, "Permission denied")  # not a full disk: untouched


def test_check_warns_of_low_disk_space_in_one_line(small_disks, coats: Path, tmp_path: Path) -> None:
    out = small_disks.mount("1M") / "out"
    experiment = tiny_experiment(tmp_path, coats)
    proc = run_cli(str(experiment), "--check", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"warning: low disk space: {out} has 1 MB free, and this search may write up to 274 MB (2 trials x 2 "
        "checkpoints and the best of 2 ended trials, of up to 37 MB each, and best/ (up to 2 models of small_cnn)); "
        "when the disk fills, the search stops with an error"]


def assert_disk_full(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 74 and one `error: disk full` line naming `fragments`, not a traceback of ours; the line."""
    assert proc.returncode == EXIT_DISK_FULL, proc.stdout[-3000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: disk full: "), proc.stderr[-3000:]
    assert f'File "{Path(disk.__file__).parent / "run.py"}"' not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_a_full_out_before_the_search_is_one_line_exit_74_and_no_partial_report(small_disks, coats: Path,
                                                                              tmp_path: Path) -> None:
    out = small_disks.mount("8k") / "out"  # the lock fits, the data report does not
    experiment = tiny_experiment(tmp_path, coats)
    proc = run_cli(str(experiment), "--check", "--out", str(out), cwd=tmp_path)
    assert_disk_full(proc, f"No space left on device writing {out / 'data_report.csv'} (0.0 MB free there)")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_full_cache_disk_is_one_line_exit_74_and_no_half_written_cache(small_disks, coats: Path,
                                                                        tmp_path: Path) -> None:
    cache = small_disks.mount("64k") / "cache"  # the decoded images take 250 kB
    experiment = tiny_experiment(tmp_path, coats)
    proc = run_cli(str(experiment), "--check", "--out", "out", "--cache", str(cache), cwd=tmp_path)
    assert_disk_full(proc, f"No space left on device writing {cache} (")
    assert list(cache.iterdir()) == []


WIDE_CNN = 64, 4  # 36.7 MB per checkpoint (Adam's state included), 24.5 MB for best/ and ~1 MB of report
# Every checkpoint kept (Experiment.checkpoints="all"): 104.9 MB holds trial 1's two checkpoints (73.5 MB),
# then 30.8 MB free: the report fits, a checkpoint not.
DISK = "100M"


@pytest.mark.slow
def test_a_search_that_fills_the_disk_stops_in_one_line_keeps_what_finished_and_resumes(small_disks, coats: Path,
                                                                                        tmp_path: Path) -> None:
    drive = small_disks.mount(DISK)
    out = drive / "out"
    experiment = tiny_experiment(tmp_path, coats, trials=2, epochs=2)
    experiment.write_text(experiment.read_text().replace("cnn_width=8, cnn_depth=2",
                                                         "cnn_width={}, cnn_depth={}".format(*WIDE_CNN))
                          .replace('name="tiny",', 'name="tiny",\ncheckpoints="all",'))
    command = [str(experiment), "--out", str(out), "--concurrency", "1", "--seed", "1"]
    proc = run_cli(*command, cwd=tmp_path)
    assert any(line.startswith(f"warning: low disk space: {out} has 105 MB free")
               for line in proc.stderr.splitlines()), proc.stderr[-3000:]
    assert (out / "report.csv").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = pd.read_csv(out / "report.csv")
    first, second = (report[report["trial_number"] == n].iloc[0] for n in (1, 2))
    line = assert_disk_full(proc, f"disk full: No space left on device writing {out / 'train' / 'train-'}"
                                  f"{second['trial_id']} (",
                            # 2 trials x 2 epochs, 36.7 MB each, and best/ (2 x 13 MB), less what is there
                            "the search needs about 75 MB more",
                            f"the report of what finished is in {out / 'report.html'}",
                            f"then continue with: python -m search.run {' '.join(command)} --resume")
    assert "MB free there)" in line
    # what finished is reported and exported; the trial the disk stopped is the error, and no more
    assert (first["status"], first["epochs"]) == ("completed", 2)
    assert second["status"] == "error" and "No space left on device" in second["error"]
    assert json.loads((out / "best" / "meta.json").read_text())["trial_id"] == first["trial_id"]
    assert json.loads((out / "manifest.json").read_text())["state"] == "interrupted"
    # no partial file: every checkpoint left loads, none is unregistered, nothing staged is left
    checkpoints = sorted(out.glob("train/*/epoch-*"))
    assert [c.parent.name for c in checkpoints] == [f"train-{first['trial_id']}"] * 2
    for checkpoint in checkpoints:
        assert torch.load(checkpoint / "state.pt", weights_only=True)["epoch"] in (1, 2)
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]  # the disk failed, not trial 2
    # with room made, --resume continues it: both trials complete, once each, in the report and the study
    small_disks.resize(drive, "300M")
    resumed = run_cli(*command, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = pd.read_csv(out / "report.csv")
    assert sorted(report["trial_number"]) == [1, 2] and (report["status"] == "completed").all(), report
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(report["val_acc"]))
    assert os.listdir(out / "best") and json.loads((out / "manifest.json").read_text())["state"] == "finished"
