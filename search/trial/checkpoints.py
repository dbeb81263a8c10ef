"""A trial's checkpoints in OUT/train: written in place, and those Ray Train never registered
removed; on Ray's documented path, the local folders they travel through, and those a killed
worker left behind."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search.seam import markers
from search.seam.tune_files import registered_checkpoints
from search.state.disk import full_reason
from search.state.names import STATE_FILE
from search.trial.settings import CHECKPOINT_PREFIX, train_run_name

# A checkpoint's local folder on Ray's documented path, named for the process that writes it.
SCRATCH_PREFIX = "imagesearch-checkpoint-"


def checkpoint_scratch() -> tempfile.TemporaryDirectory:
    """A local folder for one checkpoint on its way to the run's storage (Ray's documented
    report copies it), named for this process. Ray destroys a stopped trial's worker while its
    last report may still be copying, so the folder's own cleanup never runs: the next run's
    worker removes it (`remove_orphaned_scratch`)."""
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")


def remove_orphaned_scratch(root: Path | None = None) -> list[Path]:
    """Remove the checkpoint scratch folders (under `root`, the temp folder by default) whose
    process no longer runs on this machine; returns them. Folders of live processes and any
    other folder are left alone."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


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


def kept_checkpoints(filesystem: Any, train_path: str) -> set[str]:
    """The checkpoints under `train_path` (OUT/train in `filesystem`, pyarrow's) as
    "train-<trial id>/epoch-NNNN", in one listing: those an ended trial no longer needed were
    freed (search/driver/retention.py)."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(train_path, recursive=True, allow_not_found=True)
    prefix = train_path.rstrip("/") + "/"
    inside = (info.path[len(prefix):] for info in filesystem.get_file_info(selector)
              if info.type == pafs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX))
    return {path for path in inside if path.count("/") == 1}


def checkpoint_key(reported: str) -> str:
    """A reported checkpoint path as `kept_checkpoints` names it."""
    return "/".join(reported.rstrip("/").split("/")[-2:])


def read_val_logits(filesystem: Any, folder: str) -> Any:
    """The val logits [images, classes] (a NumPy array) the checkpoint in `folder` (of
    `filesystem`, pyarrow's) keeps, or None for one written without them."""
    import torch

    from trainables.loop import VAL_LOGITS

    with filesystem.open_input_stream(f"{folder}/{STATE_FILE}") as stream:
        state = torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True)
    logits = state.get(VAL_LOGITS)
    return logits.float().numpy() if isinstance(logits, torch.Tensor) else None


def slim_checkpoint(filesystem: Any, folder: str) -> int:
    """Rewrite the checkpoint in `folder` (of `filesystem`, pyarrow's) without its optimizer's
    state, which only a resume needs: an ended trial's kept checkpoint is exported, never
    resumed. Returns the bytes it saved. The new file replaces the old one whole (a move), so a
    kill midway leaves one or the other."""
    import torch

    from trainables.state import save_checkpoint

    path = f"{folder}/{STATE_FILE}"
    with filesystem.open_input_stream(path) as stream:
        data = stream.read()
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if state.pop("optimizer", None) is None:
        return 0
    buffer = io.BytesIO()
    save_checkpoint(state, buffer)
    slim = f"{path}.slim"
    with filesystem.open_output_stream(slim) as stream:
        stream.write(buffer.getbuffer())
    filesystem.move(slim, path)
    return len(data) - buffer.tell()


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
