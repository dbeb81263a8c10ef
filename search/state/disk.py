"""Disk space: what a search will write, a warning when OUT's filesystem lacks it, and a full
disk (or a spent quota) told as one line naming where, instead of failed trials and a traceback.

A search's bulk is its checkpoints: each running trial keeps its best and its latest, an
ended one its best while `Experiment.select` could export it (`search.driver.retention`), each
at most its architecture's `checkpoint_mb` (`trainables.archs`); `best/` holds the whole
model twice. Ray-free: the driver warns before Ray starts.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from search.best.select import reach
from search.experiment.spec import Experiment
from search.state.names import BEST_DIR, REPORT_HTML, STATE_FILE, TRAIN_DIR, is_ray_dir
from search.state.storage import Output
from search.trial.settings import KEEP_CHECKPOINTS
from trainables.archs import ARCHS

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# A full disk as text: a trial's error reaches the driver as text, and SQLite words it its own way.
FULL_TEXTS = (*(os.strerror(code) for code in FULL_ERRNOS), "database or disk is full")
MB = 1e6


class DiskFull(Exception):
    """A write failed because the filesystem holding `path` is full, or the user's quota is spent."""

    def __init__(self, path: str | Path, reason: str = FULL_TEXTS[0]) -> None:
        super().__init__(path, reason)
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        free = "" if "://" in self.path else f" ({free_mb(self.path):.1f} MB free there)"
        return f"disk full: {self.reason} writing {self.path}{free}"


def full_reason(error: BaseException | None) -> str | None:
    """The system's words for a full disk when `error` (or an error it came from) is one, else None."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        if isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            return os.strerror(error.errno)
        reason = text_reason(str(error))
        if reason:
            return reason
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def text_reason(text: str) -> str | None:
    """Which full-disk words an error's text holds, if any."""
    return next((words for words in FULL_TEXTS if words in text), None)


@dataclass(frozen=True)
class Estimate:
    """At most what a search keeps at once (`search.driver.retention`): `running` trials at once,
    `per_running` checkpoints each (their best and latest; every epoch's with
    `Experiment.checkpoints="all"`, where every trial counts as running), the best checkpoint
    of `ended` trials in reach of `Experiment.select` (or of the ensemble), all of up to
    `checkpoint_mb`; and `best/`, `models` whole models (an ensemble's members) twice (model.pt
    and model.onnx) of up to `model_mb` each."""

    running: int
    per_running: int
    ended: int
    checkpoint_mb: float
    model_mb: float
    arch: str
    models: int = 1

    @property
    def total_mb(self) -> float:
        return (self.running * self.per_running + self.ended) * self.checkpoint_mb + 2 * self.models * self.model_mb

    def __str__(self) -> str:
        ended = f" and the best of {self.ended} ended trials" if self.ended else ""
        models = f"up to {self.models} models of " if self.models > 1 else ""
        return (f"{self.running} trials x {self.per_running} checkpoints{ended}, of up to "
                f"{self.checkpoint_mb:.3g} MB each, and best/ ({models}{self.arch})")


def estimate(experiment: Experiment, checkpoint_mb: float | None = None, concurrency: int | None = None) -> Estimate:
    """The search's estimate from its largest architecture's figures, or from `checkpoint_mb`
    where one of its checkpoints was measured. `concurrency`: trials at once, where known
    (else the experiment's, or what this machine's cores fit)."""
    arch = max(experiment.space.archs(), key=lambda name: ARCHS[name].checkpoint_mb)
    budget, res = experiment.budget, experiment.resources
    size, model = checkpoint_mb or ARCHS[arch].checkpoint_mb, ARCHS[arch].model_mb
    if experiment.checkpoints == "all":
        return Estimate(budget.trials, budget.max_epochs, 0, size, model, arch)
    fits = int((os.cpu_count() or 1) // max(res.workers * res.cpus_per_worker, 1e-9)) or 1
    running = min(budget.trials, concurrency or experiment.concurrency or fits)
    ended = min(budget.trials, reach(experiment.tolerance, experiment.ensemble == "auto").top_k)
    models = ended if experiment.ensemble == "auto" else 1
    return Estimate(running, min(KEEP_CHECKPOINTS + 1, budget.max_epochs), ended, size, model, arch, models)


def free_mb(path: str | Path) -> float:
    """Free space (for this user) on the filesystem that holds `path`, or would hold it."""
    existing = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free / MB


def folder_mb(folder: Path) -> float:
    """What the files under `folder` take (0 when it does not exist)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MB


def low_space_warning(experiment: Experiment, out: Path) -> str | None:
    """One line when the estimate does not fit in what OUT's filesystem has free (with what the
    search's checkpoints take already, on --resume); None when it fits."""
    need, free = estimate(experiment), free_mb(out)
    if need.total_mb <= free + folder_mb(out / TRAIN_DIR) + folder_mb(out / BEST_DIR):
        return None
    return (f"warning: low disk space: {out} has {free:.0f} MB free, and this search may write up to "
            f"{need.total_mb:.0f} MB ({need}); when the disk fills, the search stops with an error")


def needed_mb(experiment: Experiment, out: Path) -> float:
    """About how much more the search needs in OUT: its estimate with the largest checkpoint
    it wrote (where there is one), less what its checkpoints and best/ take already."""
    sizes = [p.stat().st_size / MB for p in (out / TRAIN_DIR).glob(f"*/*/{STATE_FILE}")]
    need = estimate(experiment, max(sizes, default=None))
    return max(0.0, need.total_mb - folder_mb(out / TRAIN_DIR) - folder_mb(out / BEST_DIR))


def stopped_message(full: DiskFull, report_error: DiskFull | None, experiment: Experiment, output: Output,
                    resume: str) -> str:
    """The one line a search stopped by a full disk ends with: where, how much more it needs,
    what became of the report, and how to continue."""
    if report_error is None:
        report = f"the report of what finished is in {output.display(REPORT_HTML)}"
    elif report_error is full:
        report = "the search finished, but its report could not be written"
    else:
        report = f"the report could not be written either ({report_error.reason} writing {report_error.path})"
    return (f"{full}; the search needs about {max(needed_mb(experiment, output.local), 1):.0f} MB more; "
            f"{report}; free some space (or move {output.display()} to a larger disk), then continue with: {resume}")


def _files(folder: Path) -> dict[Path, int]:
    """The files under `folder` and their modification times, without Ray's folders and hidden
    entries (the lock, staging folders: their writers clean up after themselves)."""
    found = {}
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name.startswith(".") or is_ray_dir(entry.name):
            continue
        for path in (entry, *entry.rglob("*")) if entry.is_dir() else (entry,):
            if path.is_file() and not path.name.startswith("."):
                found[path] = path.stat().st_mtime_ns
    return found


@contextmanager
def writing(path: str | Path, partial_in: Path | None = None) -> Iterator[None]:
    """Within the block, a full disk raises DiskFull naming the file being written (or `path`).

    With `partial_in` (a folder the block writes into, one file after another), the file the
    failed write left there goes first: the one the error names, or else (a write's error names
    no file) the newest file the block created or changed (all of them, should two share the
    clock's last tick).
    """
    before = _files(partial_in) if partial_in is not None else {}
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        reason = full_reason(err)
        if reason is None:
            raise
        named = getattr(err, "filename", None)
        if partial_in is not None:
            if named is None:
                changed = {p: t for p, t in _files(partial_in).items() if before.get(p) != t}
                newest = max(changed.values(), default=None)
                partial = [p for p, t in changed.items() if t == newest]
            else:  # a file of this folder, or none: a failed mkdir or open names what it could not make
                inside = Path(named).resolve().is_relative_to(partial_in.resolve())
                partial = [Path(named)] if inside and Path(named).is_file() else []
            for file in partial:
                file.unlink(missing_ok=True)
        raise DiskFull(named or path, reason) from err
