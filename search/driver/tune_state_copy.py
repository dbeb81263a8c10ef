"""Tune's experiment state survives a kill in the middle of its upload.

Tune writes `experiment_state-<start>.json` (every trial, what `Tuner.restore` restores) into a
staging folder, then copies it into `OUT/tune/` in a background thread, over the same file each
time. A driver killed during that copy leaves the file empty or cut short; `Tuner.restore` then
finds no state and silently starts the round over, and the report loses the round's trials
(seen in the kill drill: a 0-byte file after a SIGKILL at the fourth epoch).

So the driver keeps the last complete copy beside it (`.experiment_state-<start>.json.good`,
a dot-file Tune never reads), and a `--resume` puts it back before Tune looks. A trial that
started after that copy is still in the Optuna study, which hands it back (search/driver/study.py).
Local OUTs only: on a remote OUT the upload is pyarrow's, to object storage, where a cut-short
object is never visible.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ray import tune

from search.seam.tune_files import EXPERIMENT_STATE_PATTERN

EVERY_S = 1.0  # Tune itself saves its state at most every few seconds


def backup_of(state: Path) -> Path:
    return state.with_name(f".{state.name}.good")


def _complete(path: Path) -> str | None:
    """The file's text when it is whole JSON, else None."""
    try:
        text = path.read_text()
        json.loads(text)
    except (OSError, ValueError):
        return None
    return text


def _write_whole(path: Path, text: str) -> None:
    """`text` into `path`, which never holds half of it (a dot-file aside, then renamed)."""
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


class KeepStateCopy(tune.Callback):
    """Copies each complete experiment state of the round in `folder` to its backup."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.copied: dict[Path, int] = {}
        self.checked_at = 0.0

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self.checked_at >= EVERY_S:
            self.copy()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.copy()

    def copy(self) -> None:
        self.checked_at = time.monotonic()
        for state in self.folder.glob(EXPERIMENT_STATE_PATTERN):
            try:
                stamp = state.stat().st_mtime_ns
            except OSError:
                continue
            if self.copied.get(state) == stamp:
                continue
            text = _complete(state)
            if text is None:  # being copied in right now: the next step sees it whole
                continue
            try:
                _write_whole(backup_of(state), text)
            except OSError:  # a full disk: the search's own handling says so; a backup is no reason to fail
                continue
            self.copied[state] = stamp


def repair(folder: Path) -> list[str]:
    """Put back the last complete copy of every experiment state a kill cut short; what was
    done, a line each (nothing for a round whose state is whole)."""
    done = []
    for state in sorted(folder.glob(EXPERIMENT_STATE_PATTERN)):
        if _complete(state) is not None:
            continue
        backup = backup_of(state)
        text = _complete(backup) if backup.exists() else None
        if text is None:
            done.append(f"warning: {state} was cut short by the kill and has no complete copy: Tune may start "
                        "this round's trials again")
            continue
        _write_whole(state, text)
        done.append(f"{state.name} was cut short by the kill: its last complete copy is restored")
    return done
