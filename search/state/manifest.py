"""One truth per search folder: who holds OUT now, and what search OUT holds (`manifest.json`).

The lock is an advisory `flock` on `OUT/.lock`: the kernel drops it when its process dies,
however it dies, so a killed search never leaves OUT locked. It guards the driver's working
folder; two drivers on two machines writing one remote URI meet at its lease (search/state/lease.py).

The manifest records the experiment's fingerprint (the spec's fields that decide what a
trial means), the data's (the decoded images themselves, so a moved data folder with the
same pictures still matches), the code version and the state of the search. `--resume`
with a different experiment or data is refused, naming what changed; the trial count, the
concurrency and the resources may change (a resumed search may run on another cluster, or
be extended).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from search.experiment.domains import SpecError
from search.experiment.spec import Experiment
from search.state.names import LOCK_FILE, MANIFEST_FILE
from trainables.data import CACHE_VERSION, ArrayData

State = Literal["running", "finished", "interrupted", "failed"]
# What may differ between a search and its --resume: none changes what a trial computes
# (test_time_augmentation, select and ensemble act at export only, and on which checkpoints stay).
MAY_CHANGE = {"data", "generate", "concurrency", "resources", "budget.trials", "budget.time",
              "budget.stop_when_stalled", "test_time_augmentation", "select", "checkpoints", "ensemble"}


@contextmanager
def hold(out: Path, shown: str) -> Iterator[None]:
    """Hold OUT's lock for the block; SpecError naming the holder when another process has it."""
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise SpecError("--out", shown, f"is in use by another search ({holder}); wait for it to end, "
                            "or give another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def experiment_fields(experiment: Experiment) -> dict[str, str]:
    """The experiment as flat `field -> repr` pairs (`budget.trials`, `space.arch`, ...)."""
    flat: dict[str, str] = {}
    for field in dataclasses.fields(experiment):
        value = getattr(experiment, field.name)
        if dataclasses.is_dataclass(value):
            for inner in dataclasses.fields(value):
                flat[f"{field.name}.{inner.name}"] = repr(getattr(value, inner.name))
        else:
            flat[field.name] = repr(value)
    return flat


def _fingerprinted(experiment: Experiment) -> dict[str, str]:
    return {k: v for k, v in experiment_fields(experiment).items()
            if k not in MAY_CHANGE and k.split(".")[0] not in MAY_CHANGE}


def data_fingerprint(arrays: ArrayData) -> str:
    """sha256 of the decoded images, labels and classes of every split (not their paths)."""
    digest = hashlib.sha256(repr(arrays.classes).encode())
    for split in (arrays.train, arrays.val, arrays.test):
        digest.update(split.images.tobytes())
        digest.update(split.labels.astype("int64").tobytes())
    return digest.hexdigest()


def code_version() -> str:
    import importlib.metadata

    try:
        package = importlib.metadata.version("imagesearch")
    except importlib.metadata.PackageNotFoundError:
        package = "source"
    return f"imagesearch {package}, cache {CACHE_VERSION}"


def read(out: Path) -> dict[str, Any] | None:
    """OUT's manifest, or None when OUT has none (a new folder, or one from an older version)."""
    path = out / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise SpecError("--out", str(path), f"a readable manifest.json ({err}); it was edited or damaged") from None


def check_resume(manifest: dict[str, Any] | None, experiment: Experiment, data_sha: str, shown: str) -> None:
    """Refuse to resume a search whose experiment or data differ from the one OUT holds."""
    if manifest is None:
        return  # written by a version without a manifest: nothing to compare with
    before, now = manifest.get("experiment", {}), _fingerprinted(experiment)
    changed = [f"{name} {before.get(name, '(unset)')} -> {now.get(name, '(unset)')}"
               for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
    if changed:
        raise SpecError("--resume", shown, "the experiment differs from the one this search was started with: "
                        + "; ".join(changed) + " (only trials, concurrency and resources may change; "
                        "give another --out for a new search)")
    if manifest.get("data") != data_sha:
        raise SpecError("--resume", shown, "the data differ from the images this search was started on "
                        "(a picture was added, removed or edited, or another folder was given); "
                        "give another --out for a new search")


def spent_seconds(out: Path) -> float:
    """Seconds of search the runs of OUT's search spent so far (a run killed outright adds none)."""
    try:
        return float((read(out) or {}).get("search_s", 0.0))
    except SpecError:
        return 0.0


def write(out: Path, experiment: Experiment, data_sha: str, state: State, spent_s: float | None = None) -> None:
    """Record (atomically) what OUT holds, where the search stands and the search time it has
    spent (`spent_s`; kept from the earlier record when not given)."""
    if spent_s is None:
        spent_s = spent_seconds(out)
    manifest = {"experiment": _fingerprinted(experiment), "data": data_sha, "code": code_version(),
                "state": state, "search_s": round(spent_s, 1), "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = out / f".{MANIFEST_FILE}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half of it
        raise
    os.replace(tmp, out / MANIFEST_FILE)
