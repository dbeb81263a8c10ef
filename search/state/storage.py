"""Where a search's results live: a local folder, or any URI pyarrow's filesystems read.

`--out s3://bucket/runs/carnivores` (or gs://, hdfs://, file://) puts Ray Tune's state and
every trial's checkpoints there, so trials on any node of a cluster can write them and a
later `--resume` from another machine finds them. The driver's own files (report, plots,
`best/`, the Optuna study) are written to a local working folder first, because SQLite
and atomic renames need a real disk, and copied to the URI when they change. The study is
copied as well each time Tune saves its experiment state, just before that state's upload
(search/driver/search_loop.py), so the URI never holds a Tune state ahead of its study: a head node lost
mid-search resumes from the URI alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from search.state.names import TRAIN_DIR, is_ray_dir

SQLITE_WAIT_S = 120  # as long as the study's own writers wait for a reader (search/driver/study.py)


def display_uri(uri: str) -> str:
    """`uri` for people: without its options and credentials (s3://KEY:SECRET@bucket/...)."""
    scheme, _, rest = uri.partition("?")[0].partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


@dataclass(frozen=True)
class Output:
    """A search's results folder: `uri` as Ray takes it, `local` where the driver writes."""

    uri: str
    filesystem: pafs.FileSystem
    path: str
    local: Path

    @property
    def remote(self) -> bool:
        return not isinstance(self.filesystem, pafs.LocalFileSystem)

    def child(self, *parts: str) -> str:
        """The URI (or local path) of something inside the output, options kept."""
        if not self.remote:
            return str(self.local.joinpath(*parts))
        base, sep, options = self.uri.partition("?")
        return "/".join([base.rstrip("/"), *parts]) + sep + options

    def display(self, *parts: str) -> str:
        """Where something is, for people: the local path, or the URI without its options
        and credentials (a URI may carry keys: s3://KEY:SECRET@bucket/...)."""
        if not self.remote:
            return str(self.local.joinpath(*parts))
        return "/".join([display_uri(self.uri).rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        info = self.filesystem.get_file_info("/".join([self.path, *parts]))
        return info.type != pafs.FileType.NotFound

    def checkpoint(self, reported: str) -> str:
        """A checkpoint's path as a trial reported it, inside this output as it is now: a search
        folder moved (or fetched elsewhere) since keeps its checkpoints under `train/`."""
        _, sep, inside = reported.rpartition(f"/{TRAIN_DIR}/")
        return f"{self.path}/{TRAIN_DIR}/{inside}" if sep else reported

    def read_bytes(self, path: str) -> bytes:
        """A file by its path inside the output's filesystem (as Ray reports checkpoints)."""
        with self.filesystem.open_input_stream(path) as stream:
            return stream.read()

    def upload(self) -> None:
        """Copy the driver's files to the destination (no-op for a local folder)."""
        if not self.remote:
            return
        self.filesystem.create_dir(self.path, recursive=True)
        for entry in sorted(self.local.iterdir()):
            if is_ray_dir(entry.name) or entry.name.startswith("."):
                continue
            target = f"{self.path}/{entry.name}"
            if entry.is_dir():
                pafs.copy_files(str(entry), target, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.filesystem)
            else:
                with self.filesystem.open_output_stream(target) as stream:
                    stream.write(entry.read_bytes())

    def upload_database(self, name: str) -> None:
        """A consistent copy of the driver's SQLite file `name`, which may be written meanwhile,
        to the destination (no-op for a local folder, or before the file exists)."""
        source = self.local / name
        if not self.remote or not source.is_file():
            return
        snapshot = self.local / f".{name}.upload-{os.getpid()}"  # a dot-file: `upload` and `download` skip it
        try:
            with contextlib.closing(sqlite3.connect(source, timeout=SQLITE_WAIT_S)) as reader, \
                    contextlib.closing(sqlite3.connect(snapshot)) as copy:
                reader.backup(copy)  # SQLite's own snapshot: never a page half-written
            with self.filesystem.open_output_stream(f"{self.path}/{name}") as stream:
                stream.write(snapshot.read_bytes())
        finally:
            snapshot.unlink(missing_ok=True)

    def fetch(self, name: str) -> Path:
        """A local copy of the folder `name` of the output (itself, for a local output)."""
        target = self.local / name
        if self.remote:
            if not self.exists(name):
                raise FileNotFoundError(f"{self.display(name)}: not found")
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)  # the local filesystem wants it first
            pafs.copy_files(f"{self.path}/{name}", str(target), source_filesystem=self.filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
        return target

    def download(self) -> None:
        """Fetch the driver's files of an earlier run (the Optuna study above all) to resume it."""
        if not self.remote:
            return
        for info in self.filesystem.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            # Ray's, or the lease (search/state/lease.py)
            if is_ray_dir(info.base_name) or info.base_name.startswith("."):
                continue
            if info.type == pafs.FileType.Directory:
                self.fetch(info.base_name)
            else:
                (self.local / info.base_name).write_bytes(self.read_bytes(info.path))


def open_output(out: str, work_root: Path) -> Output:
    """Parse `--out`: a local path, `file://...`, or a URI such as `s3://bucket/prefix`.

    A remote output gets a local working folder under `work_root`, named after the URI, so
    a resumed run on the same machine finds its files without downloading them.
    """
    if "://" not in out:
        local = Path(out).expanduser().resolve()
        return Output(uri=str(local), filesystem=pafs.LocalFileSystem(), path=str(local), local=local)
    filesystem, path = pafs.FileSystem.from_uri(out)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return open_output(path, work_root)
    local = Path(work_root) / "runs" / hashlib.sha256(out.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    return Output(uri=out, filesystem=filesystem, path=path.rstrip("/"), local=local)


def load_state(output: Output, checkpoint_path: str, file_name: str) -> dict[str, Any]:
    """A trial's saved training state, wherever its checkpoint lives (weights only, safely)."""
    import torch

    data = output.read_bytes(f"{checkpoint_path.rstrip('/')}/{file_name}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
