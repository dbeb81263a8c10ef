"""Data larger than memory, refused before any decoding: the decoded set, its size, and what
the driver's machine has.

The decoded images live twice in the driver's memory at the peak (the arrays, and their
copy in Ray's object store, which the driver's node hosts for a local run). Ray's object
store itself is not the limit: an object larger than it is allocated on disk (Ray's
fallback allocation) and read from there, slower, by every trial (tests/search/state/test_memory_fit.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from search.experiment.spec import SpecError
from trainables.folders import scan

COPIES = 2.2  # arrays + object store copy, and the working room of numpy and PIL around them
GB = 1e9


def available_bytes() -> int:
    """Memory this machine can give without swapping (Linux's MemAvailable), else its free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decoded_bytes(images: int, size_px: int) -> int:
    return images * size_px * size_px * 3


def check_fits(folder: Path, size_px: int, available: int | None = None) -> None:
    """Refuse a data set whose decoded images need more memory than the driver's machine has."""
    check_count_fits(sum(len(items) for items in scan(folder).files.values()), size_px, str(folder), available)


def check_count_fits(images: int, size_px: int, data: str, available: int | None = None) -> None:
    """`check_fits` for `images` images at `data` (a folder or a URI), counted beforehand."""
    need = decoded_bytes(images, size_px)
    have = available_bytes() if available is None else available
    if COPIES * need > have:
        raise SpecError("--data", data, f"a data set that fits in memory: its {images:,} images at "
                        f"{size_px} px decode to {need / GB:.2f} GB and the search needs about "
                        f"{COPIES * need / GB:.2f} GB, but this machine has {have / GB:.2f} GB available; "
                        f"use a smaller image_size_px ({size_px // 2} px needs a quarter), fewer images, "
                        "or a machine with more memory")
