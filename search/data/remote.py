"""A data folder in object storage: `--data s3://bucket/photos` (or gs://, hdfs://, any URI
pyarrow's filesystems read; options in the query, as for `--out`).

The objects are mirrored into the decoded-image cache folder (`CACHE/remote/<uri hash>/`)
by parallel downloads, and the search decodes the mirror like any folder, so the decoded
arrays (keyed by the files' content) are the same as for the same photos on disk. A later
run lists the objects and downloads only those whose size or modification time changed
since (none, for data that did not change), and removes the files of deleted objects.
When anything is downloaded, each image is handed on (`ready`) as soon as it is local, so
that decoding runs alongside the downloads rather than after them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from search.data.progress import DecodeProgress
from search.state.storage import display_uri
from trainables.data import DataError
from trainables.folders import IMAGE_EXTENSIONS

MIRRORS_DIR = "remote"
LISTING_FILE = ".listing.json"  # what each mirrored file was when it was downloaded: [size, mtime_ns]
DOWNLOADS_AT_ONCE = 16  # object storage answers each request slowly and many at once well


def is_remote(data: str) -> bool:
    """Whether `data` names a URI (`scheme://...`) rather than a local folder."""
    return "://" in data and not data.startswith("file://")


@dataclass(frozen=True)
class Listing:
    """The files under a URI: relative name -> [size, mtime_ns]."""

    uri: str
    filesystem: pafs.FileSystem
    root: str
    objects: dict[str, list[int]]

    def images(self) -> list[str]:
        """The names a scan of the mirror will read as images: `train|test/<class>/<image file>`."""
        return [name for name in self.objects if _is_image(name)]


def listing(uri: str) -> Listing:
    """What the folder `uri` names holds, listed once (no file read); refused when empty."""
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        listed = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as err:
        raise DataError(display_uri(uri), f"cannot list it ({err})") from err
    root = root.rstrip("/")
    objects = {info.path[len(root) + 1:]: [info.size, info.mtime_ns] for info in listed
               if info.type == pafs.FileType.File and not _hidden(info.path[len(root) + 1:])}
    if not objects:
        raise DataError(display_uri(uri), "no files there; expected train/ and test/, one subfolder per class in each")
    return Listing(uri, filesystem, root, objects)


def mirror(source: str | Listing, cache_dir: Path, progress: DecodeProgress | None = None,
           ready: Callable[[Path], None] | None = None) -> tuple[Path, int, int]:
    """A local folder with the same files as the folder `source` names, brought up to date; and
    how many files it downloaded for that, of how many. When it downloads anything, every
    image file is handed to `ready` once it is local: the unchanged ones first, each
    downloaded one as its download ends."""
    source = source if isinstance(source, Listing) else listing(source)
    local = cache_dir / MIRRORS_DIR / hashlib.sha256(display_uri(source.uri).encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    for partial in local.rglob(".*.part-*"):  # an earlier run's downloads cut short
        partial.unlink(missing_ok=True)
    had = _read_listing(local)
    for gone in set(had) - set(source.objects):
        (local / gone).unlink(missing_ok=True)
    todo = sorted(name for name, stamp in source.objects.items()
                  if had.get(name) != stamp or not (local / name).is_file())
    if todo and ready is not None:
        for name in sorted(set(source.images()) - set(todo)):
            ready(local / name)
    progress = progress or DecodeProgress(doing="downloading", unit="files")
    with concurrent.futures.ThreadPoolExecutor(DOWNLOADS_AT_ONCE) as pool:
        downloads = {pool.submit(_download, source.filesystem, f"{source.root}/{name}", local / name): name
                     for name in todo}
        for done, download in enumerate(concurrent.futures.as_completed(downloads), 1):
            download.result()
            if ready is not None and _is_image(downloads[download]):
                ready(local / downloads[download])
            progress(done, len(todo))
    (local / LISTING_FILE).write_text(json.dumps(source.objects))
    return local, len(todo), len(source.objects)


def _is_image(name: str) -> bool:
    parts = name.split("/")
    return (len(parts) == 3 and parts[0] in ("train", "test")
            and os.path.splitext(parts[2])[1].lower() in IMAGE_EXTENSIONS)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _read_listing(local: Path) -> dict[str, list[int]]:
    try:
        return json.loads((local / LISTING_FILE).read_text())
    except (OSError, ValueError):
        return {}  # a first run, or a listing cut short: every file is fetched again


def _download(filesystem: pafs.FileSystem, source: str, target: Path) -> None:
    """One object to `target`, whole or not at all (a partial file never looks downloaded)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part-{os.getpid()}")
    with filesystem.open_input_stream(source) as stream, open(partial, "wb") as file:
        shutil.copyfileobj(stream, file, 1024 * 1024)
    partial.replace(target)
