"""Image folders in, decoded arrays out: scan, split, decode once, cache.

A data folder holds `train/` and `test/`, one subfolder per class (sorted names are the
class order). Images are decoded once, converted to RGB, resized to the experiment's size
and stored as uint8 arrays in one `.npz` file, keyed by the files' content, the image size,
the split and this code's version, instead of every trial decoding every JPEG in every
epoch; the cache folder keeps to a size limit, the least recently used caches going first.
Which files count is `trainables.folders`' job.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# DataError is part of this module's interface: prepare raises it for the folder it scans.
from trainables import parallel
from trainables.decode import decode
from trainables.folders import DataError, Scan, scan
from trainables.parallel import Progress

__all__ = ["ArrayData", "DataError", "Prepared", "Split", "decode", "evict", "file_sha256", "load", "prepare",
           "stratified_split", "summary"]

# Bump when decoding changes, so caches built by older code are not reused.
CACHE_VERSION = "5"
SHOWN_SKIPPED = 10
MIN_IMAGES_PER_CLASS = 2
CACHE_ENV = "IMAGESEARCH_CACHE"
# A few data sets of a few thousand images at 299 px (~270 KB each decoded) fit.
DEFAULT_CACHE_MAX = "4GB"


@dataclass(frozen=True)
class Split:
    """Decoded images of one split: uint8 [N, H, W, 3] and int64 labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    paths: tuple[str, ...]


@dataclass(frozen=True)
class ArrayData:
    """Everything a trial trains and validates on, plus `test/` for the final evaluation."""

    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of files that could not be read
    ignored: tuple[tuple[str, str], ...] = ()  # (path, reason) of entries not read at all


@dataclass(frozen=True)
class Prepared:
    """A cache file `prepare` made or found; `reused` says which."""

    path: Path
    reused: bool


def default_cache_dir() -> Path:
    """Where decoded caches live: `$IMAGESEARCH_CACHE`, else the user's cache folder.

    Shared by every run and experiment: the key is the data's content, so a second run on
    unchanged data (any `--out`) reuses the cache and a changed file makes a new one.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagesearch"


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): `fraction` of each class, at least one, goes to validation."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _decode_all(items: list[tuple[Path, int]], size_px: int, skipped: list[tuple[str, str]],
                advance: parallel.Advance | None = None,
                prefetched: dict[str, np.ndarray | str] | None = None) -> Split:
    prefetched = prefetched or {}
    rest = iter(parallel.decode_files([p for p, _ in items if str(p) not in prefetched], size_px, advance))
    images, labels, paths = [], [], []
    for path, label in items:
        decoded = prefetched.pop(str(path)) if str(path) in prefetched else next(rest)
        if isinstance(decoded, str):  # a corrupt file must not end a search: skip it, say why
            skipped.append((str(path), decoded))
            continue
        images.append(decoded)
        labels.append(label)
        paths.append(str(path))
    next(rest, None)  # lets the decode's workers end now
    array = np.stack(images) if images else np.zeros((0, size_px, size_px, 3), np.uint8)
    return Split(array, np.asarray(labels, dtype=np.int64), tuple(paths))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _unreadable(path: Path, err: OSError) -> str:
    """Why a file cannot be opened, in words: a broken link or a loop says so."""
    if path.is_symlink() and err.errno == errno.ELOOP:
        return f"symbolic link loop (to {os.readlink(path)})"
    if path.is_symlink() and err.errno == errno.ENOENT:
        return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
    return f"{type(err).__name__}: {err.strerror}"


def _hashes(found: Scan, skipped: list[tuple[str, str]]) -> dict[Path, str]:
    """The sha256 of every file found; one that cannot be opened is skipped with the reason."""
    hashes = {}
    for items in found.files.values():
        for path, _ in items:
            try:
                hashes[path] = file_sha256(path)
            except OSError as err:
                skipped.append((str(path), _unreadable(path, err)))
    return hashes


def _fingerprint(root: Path, found: Scan, hashes: dict[Path, str], skipped: list[tuple[str, str]], size_px: int,
                 val_fraction: float, seed: int) -> str:
    # Content and paths inside the folder, not modification times nor where the folder lies: a
    # touched folder keeps its cache, an edited picture gets a new one, a moved or renamed folder
    # with the same files keeps it (`load` names the paths where the folder is now). Hashing is
    # ~100x cheaper than decoding.
    digest = hashlib.sha256(f"{CACHE_VERSION}|{size_px}|{val_fraction}|{seed}".encode())
    for split, items in found.files.items():
        for path, label in items:
            if path in hashes:
                digest.update(f"{split}|{_inside(path, root)}|{label}|{hashes[path]}\n".encode())
    for listed in (found.ignored, skipped):
        digest.update(repr([(_inside(path, root), reason) for path, reason in listed]).encode())
    return digest.hexdigest()[:16]


def _inside(path: str | Path, root: str | Path) -> str:
    """`path` relative to `root` where it lies inside it (as scanned), else as it is."""
    relative = os.path.relpath(path, root)
    return str(path) if relative.startswith(os.pardir) else relative


def _check_counts(root: Path, classes: tuple[str, ...], split: str, labels: np.ndarray, noun: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    for name, count in zip(classes, counts):
        if count < MIN_IMAGES_PER_CLASS:
            raise DataError(Path(root) / split / name,
                            f"has {count} {noun}; need at least {MIN_IMAGES_PER_CLASS} per class")


def prepare(root: Path, size_px: int, val_fraction: float, seed: int, cache_dir: Path | None = None,
            progress: Progress | None = None, prefetch: parallel.Prefetch | None = None) -> Prepared:
    """Decode the folder once into `cache_dir/arrays-<fingerprint>.npz`; reuse it when unchanged.
    Decoding runs on every core; `progress(done, total)` hears how far it got. The files that
    `prefetch` decoded already (at `size_px`) are taken from it, not decoded again."""
    found = scan(root)
    for split, items in found.files.items():
        _check_counts(root, found.classes, split, np.asarray([label for _, label in items], dtype=np.int64),
                      "image files")
    skipped: list[tuple[str, str]] = []
    hashes = _hashes(found, skipped)
    fingerprint = _fingerprint(root, found, hashes, skipped, size_px, val_fraction, seed)
    cache = Path(cache_dir or default_cache_dir()) / f"arrays-{fingerprint}.npz"
    if cache.exists():
        with contextlib.suppress(OSError):  # a use counts as recent for `evict`; another user's file may refuse
            os.utime(cache)
        return Prepared(cache, reused=True)
    classes = found.classes
    todo = {split: [item for item in found.files[split] if item[0] in hashes] for split in ("train", "test")}
    advance = parallel.counter(progress, sum(len(items) for items in todo.values()))
    prefetched = prefetch.take(advance) if prefetch is not None and prefetch.size_px == size_px else {}
    train_all, test = (_decode_all(todo[split], size_px, skipped, advance, prefetched) for split in ("train", "test"))
    del prefetched  # what no split took (files the scan left out): not kept alongside the arrays
    _check_counts(root, classes, "train", train_all.labels, "readable images")
    _check_counts(root, classes, "test", test.labels, "readable images")
    train_idx, val_idx = stratified_split(train_all.labels, val_fraction, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}.npz")
    paths = np.asarray(train_all.paths)
    try:
        np.savez(tmp, classes=np.asarray(classes), root=np.asarray(str(root)),
                 train_images=train_all.images[train_idx], train_labels=train_all.labels[train_idx],
                 train_paths=paths[train_idx] if len(paths) else paths,
                 val_images=train_all.images[val_idx], val_labels=train_all.labels[val_idx],
                 val_paths=paths[val_idx] if len(paths) else paths,
                 test_images=test.images, test_labels=test.labels, test_paths=np.asarray(test.paths),
                 skipped=np.asarray(skipped, dtype=str).reshape(-1, 2),
                 ignored=np.asarray(found.ignored, dtype=str).reshape(-1, 2))
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk (or a Ctrl-C) leaves no half-written cache behind
        raise
    os.replace(tmp, cache)  # atomic: a reader never sees a half-written cache
    return Prepared(cache, reused=False)


def evict(keep: Path, max_bytes: int) -> tuple[int, int]:
    """Remove the other decoded caches in `keep`'s folder, least recently used (oldest mtime)
    first, until all fit in `max_bytes`; (count, bytes) freed. `keep` (this run's) stays even
    when alone over the limit; files being written (`*.tmp-*`) and everything else stay too."""
    others = []
    for path in keep.parent.glob("arrays-*.npz"):
        if path == keep or ".tmp-" in path.name:
            continue
        with contextlib.suppress(FileNotFoundError):  # another run may evict at the same time
            stat = path.stat()
            others.append((stat.st_mtime, path, stat.st_size))
    total = keep.stat().st_size + sum(size for _, _, size in others)
    count = freed = 0
    for _, path, size in sorted(others):
        if total <= max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            count, freed = count + 1, freed + size
        total -= size
    return count, freed


def load(cache: Path, root: str | Path | None = None) -> ArrayData:
    """Read a cache written by `prepare`; with `root` (the folder it was prepared from), the
    paths it names are where that folder is now: it may have been moved since the cache was made."""
    with np.load(cache, allow_pickle=False) as z:
        made_in = str(z["root"])

        def here(path: str) -> str:
            return path if root is None else os.path.join(root, _inside(path, made_in))

        splits = {name: Split(z[f"{name}_images"], z[f"{name}_labels"],
                              tuple(here(p) for p in z[f"{name}_paths"].tolist())) for name in ("train", "val", "test")}
        skipped, ignored = (tuple((here(path), reason) for path, reason in z[key].tolist())
                            for key in ("skipped", "ignored"))
        return ArrayData(classes=tuple(z["classes"].tolist()), skipped=skipped, ignored=ignored, **splits)


def summary(arrays: ArrayData, root: Path) -> str:
    """One line per split: images per class, for the console."""
    lines = [f"Data {root}: {len(arrays.classes)} classes"]
    for name in ("train", "val", "test"):
        split: Split = getattr(arrays, name)
        counts = np.bincount(split.labels, minlength=len(arrays.classes))
        per_class = ", ".join(f"{c} {n}" for c, n in zip(arrays.classes, counts))
        lines.append(f"  {name:<5} {len(split.labels):>6} images: {per_class}")
    if arrays.skipped:
        lines.append(f"  skipped {len(arrays.skipped)} unreadable files:")
        lines += [f"    {path}: {reason}" for path, reason in arrays.skipped[:SHOWN_SKIPPED]]
        if len(arrays.skipped) > SHOWN_SKIPPED:
            lines.append(f"    ... and {len(arrays.skipped) - SHOWN_SKIPPED} more")
    if arrays.ignored:
        lines.append(f"  not read: {len(arrays.ignored)} non-image files or nested folders (listed in data_report.csv)")
    return "\n".join(lines)
