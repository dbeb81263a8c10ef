"""Which Ray this service runs on, and which path its trials take there.

The fast path (a trial's Train controller in its driver, its worker and synchronisation actor
kept from one trial to the next: `search.seam.controller`, `kept_workers`, `kept_sync`) patches
Ray Train's private internals, so it runs only on a Ray it was verified on. Any other Ray in
`SUPPORTED` runs the path Ray documents: a function trainable that fits a `TorchTrainer`,
Ray's `TuneReportCallback` and its placement-group cleaner. `PATH_ENV=plain` forces that path
(the suite runs both on the pinned Ray).
"""

from __future__ import annotations

import os

# Every Ray the fast path's patches were checked on, by the suite and `tests/search/seam`.
VERIFIED_RAY = ("2.60.0",)
# Every Ray whose file names the seam reads (search/seam/tune_files.py) were checked on.
FILES_VERIFIED_RAY = ("2.59.0", "2.60.0")
# The Rays the suite ran on (plain path on the older, both on the verified); pyproject.toml says the same.
OLDEST_RAY = (2, 59)
NEWEST_RAY = (2, 60)
SUPPORTED = ">=2.59,<2.61"
PATH_ENV = "IMAGESEARCH_RAY_PATH"  # "plain" forces Ray's documented path; "fast" (or unset): the verified one
# What the plain path costs, measured on 2 cores (bench/RESULTS.md, Dec 7 2026): each trial starts its own
# driver, controller, worker and synchronisation processes.
PLAIN_COST = "about 16 s more per trial on 2 CPU cores"


def ray_version() -> str:
    """The installed Ray's version, read without importing Ray (seconds on a small machine)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        import ray

        return ray.__version__


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def unsupported(version: str | None = None) -> str | None:
    """One line saying what to install when this Ray is outside `SUPPORTED`; None when inside."""
    version = version or ray_version()
    if OLDEST_RAY <= _release(version) <= NEWEST_RAY:
        return None
    return (f"Ray {version} is not one this service runs on: pip install 'ray[default,serve,tune,train]{SUPPORTED}' "
            f"(the fast path is verified on {', '.join(VERIFIED_RAY)})")


def fast_path(version: str | None = None) -> bool:
    """Whether trials take the fast path: a verified Ray, and not forced off by `PATH_ENV`."""
    version = version or ray_version()
    return version in VERIFIED_RAY and os.environ.get(PATH_ENV, "fast") != "plain"


def files_verified(version: str | None = None) -> bool:
    """Whether the names of the files Tune and Train write were checked on this Ray: where they
    were not, a file the seam does not find may have been renamed, and nothing is done on its absence."""
    return (version or ray_version()) in FILES_VERIFIED_RAY


def path_line(version: str | None = None) -> str | None:
    """The line a search prints when its trials take the plain path; None on the fast path."""
    version = version or ray_version()
    if fast_path(version):
        return None
    why = f"{PATH_ENV}=plain" if version in VERIFIED_RAY else f"Ray {version} is not one it was verified on"
    return (f"Trials take Ray's documented path ({why}; the fast path is verified on Ray "
            f"{', '.join(VERIFIED_RAY)}): {PLAIN_COST}")
