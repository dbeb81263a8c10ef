"""A data folder in object storage: `--data s3://bucket/photos` (or gs://, hdfs://, any URI
pyarrow's filesystems read; options in the query, as for `--out`).

The objects are mirrored into the decoded-image cache folder (`CACHE/remote/<uri hash>/`)
by parallel downloads, and the search decodes the mirror like any folder, so the decoded
arrays (keyed by the files' content) are the same as for the same photos on disk. A later
run lists the objects and downloads only those whose size or modification time changed
since (none, for data that did not change), and removes the files of deleted objects.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from search.data.progress import DecodeProgress
from search.storage import display_uri
from trainables.data import DataError

MIRRORS_DIR = "remote"
LISTING_FILE = ".listing.json"  # what each mirrored file was when it was downloaded: [size, mtime_ns]
DOWNLOADS_AT_ONCE = 16  # object storage answers each request slowly and many at once well


def is_remote(data: str) -> bool:
    """Whether `data` names a URI (`scheme://...`) rather than a local folder."""
    return "://" in data and not data.startswith("file://")


def mirror(uri: str, cache_dir: Path, progress: DecodeProgress | None = None) -> tuple[Path, int, int]:
    """A local folder with the same files as the folder `uri` names, brought up to date; and
    how many files it downloaded for that, of how many."""
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
    local = cache_dir / MIRRORS_DIR / hashlib.sha256(display_uri(uri).encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    for partial in local.rglob(".*.part-*"):  # an earlier run's downloads cut short
        partial.unlink(missing_ok=True)
    had = _read_listing(local)
    for gone in set(had) - set(objects):
        (local / gone).unlink(missing_ok=True)
    todo = sorted(name for name, stamp in objects.items() if had.get(name) != stamp or not (local / name).is_file())
    progress = progress or DecodeProgress(doing="downloading", unit="files")
    with concurrent.futures.ThreadPoolExecutor(DOWNLOADS_AT_ONCE) as pool:
        downloads = [pool.submit(_download, filesystem, f"{root}/{name}", local / name) for name in todo]
        for done, download in enumerate(concurrent.futures.as_completed(downloads), 1):
            download.result()
            progress(done, len(todo))
    (local / LISTING_FILE).write_text(json.dumps(objects))
    return local, len(todo), len(objects)


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
