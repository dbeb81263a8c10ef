"""A trial's checkpoints in OUT/train: written in place, and those Ray Train never registered removed."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search.seam import markers
from search.seam.tune_files import registered_checkpoints
from search.state.disk import full_reason
from search.state.names import STATE_FILE
from search.trial.settings import CHECKPOINT_PREFIX, train_run_name


def remove_unregistered_checkpoints(train_dir: Path) -> list[Path]:
    """Remove the checkpoint folders Ray Train never registered (a write cut short by a full disk,
    or a kill between the write and its report); returns them. A run whose record of checkpoints
    is missing or unreadable keeps all of its folders: which of them count is unknown."""
    removed = []
    for run in sorted(train_dir.glob(train_run_name("*"))):
        registered = registered_checkpoints(run)
        if registered is None:
            continue
        for folder in sorted(run.glob(f"{CHECKPOINT_PREFIX}*")):
            if folder.name not in registered:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


@contextlib.contextmanager
def full_disk_marked(study_name: str, trial_id: str) -> Iterator[None]:
    """Tell the driver when what runs inside failed because the disk is full: the trial did not
    fail, the disk did (`markers.mark_disk_full`)."""
    try:
        yield
    except Exception as error:
        reason = full_reason(error)
        if reason:
            markers.mark_disk_full(study_name, trial_id, reason)
        raise


def write_checkpoint(filesystem: Any, folder: str, data: memoryview, local: bool) -> None:
    """Write a serialised checkpoint as `folder`/STATE_FILE of `filesystem` (pyarrow's). A local
    folder is written by Python, whose OSError names a full disk as such."""
    if local:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, STATE_FILE), "wb") as file:
            file.write(data)
        return
    filesystem.create_dir(folder)
    with filesystem.open_output_stream(f"{folder}/{STATE_FILE}") as stream:
        stream.write(data)
