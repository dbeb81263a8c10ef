"""Image folders in, decoded arrays out: scan, split, decode once, cache.

A data folder holds `train/` and `test/`, one subfolder per class (sorted names are the
class order). Images are decoded once, converted to RGB, resized to the experiment's size
and stored as uint8 arrays in one `.npz` file, keyed by the files' content, the image size,
the split and this code's version, instead of every trial decoding every JPEG in every
epoch; the cache folder keeps to a size limit, the least recently used caches going first.
Only the image files directly inside a class folder count: nested folders, files outside
class folders and non-image files are not read, and are listed (with the reason) so the
data report shows them; hidden files are ignored silently.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Bump when decoding changes, so caches built by older code are not reused.
CACHE_VERSION = "3"
SHOWN_SKIPPED = 10
MIN_IMAGES_PER_CLASS = 2
# PIL's own threshold for a decompression bomb warning (~89 M pixels, a 1 GB RGBA image);
# larger images are skipped, never decoded: a small file can claim gigapixels.
MAX_PIXELS = 89_478_485
CACHE_ENV = "IMAGESEARCH_CACHE"
# A few data sets of a few thousand images at 299 px (~270 KB each decoded) fit.
DEFAULT_CACHE_MAX = "4GB"


class DataError(ValueError):
    """The data folder is not usable; the message names the path and what is expected."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


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
class Scan:
    """What a data folder holds: classes, the (path, label) lists of train and test, and
    the entries that were not read (non-images, nested folders) with the reason."""

    classes: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]
    ignored: list[tuple[str, str]] = field(default_factory=list)


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


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension (any case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted; hidden files and other types skipped."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _class_dirs(split_dir: Path, ignored: list[tuple[str, str]]) -> list[Path]:
    if not split_dir.exists():
        raise DataError(split_dir, "missing folder; expected one subfolder per class here")
    if not split_dir.is_dir():
        raise DataError(split_dir, "is a file; expected a folder with one subfolder per class")
    entries = _visible(split_dir)
    ignored += [(str(p), "file outside a class folder: not used") for p in entries if not p.is_dir()]
    dirs = [p for p in entries if p.is_dir()]
    if not dirs:
        raise DataError(split_dir, "has no class subfolders; expected one subfolder per class")
    return dirs


def _class_files(folder: Path, ignored: list[tuple[str, str]]) -> list[Path]:
    images = []
    for path in _visible(folder):
        if path.is_dir():
            ignored.append((str(path), "nested folder: not scanned; put images directly in the class folder"))
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            ignored.append((str(path), f"not an image file (extension {path.suffix or 'none'!r})"))
    return images


def scan(root: Path) -> Scan:
    """Classes, the image files of `train` and `test`, and what was not read, checked for structure."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "missing data folder; expected a folder holding train/ and test/")
    ignored: list[tuple[str, str]] = []
    classes = tuple(d.name for d in _class_dirs(root / "train", ignored))
    if len(classes) < 2:
        raise DataError(root / "train", f"has one class folder ({classes[0]!r}); a classifier needs at least two")
    test_classes = tuple(d.name for d in _class_dirs(root / "test", ignored))
    if test_classes != classes:
        raise DataError(root / "test", f"classes {list(test_classes)} differ from train/'s {list(classes)}")
    files = {split: [(path, label) for label, name in enumerate(classes)
                     for path in _class_files(root / split / name, ignored)]
             for split in ("train", "test")}
    return Scan(classes, files, ignored)


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


def decode(path: Path, size_px: int) -> np.ndarray:
    """One image as uint8 [size, size, 3]: EXIF orientation applied, RGB, resized."""
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its limit; the check below refuses those too.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"decompression bomb: {img.width}x{img.height} pixels, more than {MAX_PIXELS:,}")
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            img = background
        elif img.mode == "I;16" or img.mode == "I":
            img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        img = img.convert("RGB").resize((size_px, size_px), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _decode_all(items: list[tuple[Path, int]], size_px: int, skipped: list[tuple[str, str]]) -> Split:
    images, labels, paths = [], [], []
    for path, label in items:
        try:
            images.append(decode(path, size_px))
        except Exception as err:  # a corrupt file must not end a search: skip it, say why
            skipped.append((str(path), f"{type(err).__name__}: {err}"))
            continue
        labels.append(label)
        paths.append(str(path))
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


def _fingerprint(found: Scan, hashes: dict[Path, str], skipped: list[tuple[str, str]], size_px: int,
                 val_fraction: float, seed: int) -> str:
    # Content, not modification times: a copied or touched folder keeps its cache, an
    # edited picture gets a new one. Hashing is ~100x cheaper than decoding.
    digest = hashlib.sha256(f"{CACHE_VERSION}|{size_px}|{val_fraction}|{seed}".encode())
    for split, items in found.files.items():
        for path, label in items:
            if path in hashes:
                digest.update(f"{split}|{path}|{label}|{hashes[path]}\n".encode())
    digest.update(repr(found.ignored).encode())
    digest.update(repr(skipped).encode())
    return digest.hexdigest()[:16]


def _check_counts(root: Path, classes: tuple[str, ...], split: str, labels: np.ndarray, noun: str) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    for name, count in zip(classes, counts):
        if count < MIN_IMAGES_PER_CLASS:
            raise DataError(Path(root) / split / name,
                            f"has {count} {noun}; need at least {MIN_IMAGES_PER_CLASS} per class")


def prepare(root: Path, size_px: int, val_fraction: float, seed: int, cache_dir: Path | None = None) -> Prepared:
    """Decode the folder once into `cache_dir/arrays-<fingerprint>.npz`; reuse it when unchanged."""
    found = scan(root)
    for split, items in found.files.items():
        _check_counts(root, found.classes, split, np.asarray([label for _, label in items], dtype=np.int64),
                      "image files")
    skipped: list[tuple[str, str]] = []
    hashes = _hashes(found, skipped)
    fingerprint = _fingerprint(found, hashes, skipped, size_px, val_fraction, seed)
    cache = Path(cache_dir or default_cache_dir()) / f"arrays-{fingerprint}.npz"
    if cache.exists():
        with contextlib.suppress(OSError):  # a use counts as recent for `evict`; another user's file may refuse
            os.utime(cache)
        return Prepared(cache, reused=True)
    classes = found.classes
    train_all, test = (_decode_all([item for item in found.files[split] if item[0] in hashes], size_px, skipped)
                       for split in ("train", "test"))
    _check_counts(root, classes, "train", train_all.labels, "readable images")
    _check_counts(root, classes, "test", test.labels, "readable images")
    train_idx, val_idx = stratified_split(train_all.labels, val_fraction, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}.npz")
    paths = np.asarray(train_all.paths)
    np.savez(tmp, classes=np.asarray(classes),
             train_images=train_all.images[train_idx], train_labels=train_all.labels[train_idx],
             train_paths=paths[train_idx] if len(paths) else paths,
             val_images=train_all.images[val_idx], val_labels=train_all.labels[val_idx],
             val_paths=paths[val_idx] if len(paths) else paths,
             test_images=test.images, test_labels=test.labels, test_paths=np.asarray(test.paths),
             skipped=np.asarray(skipped, dtype=str).reshape(-1, 2),
             ignored=np.asarray(found.ignored, dtype=str).reshape(-1, 2))
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


def load(cache: Path) -> ArrayData:
    """Read a cache written by `prepare`."""
    with np.load(cache, allow_pickle=False) as z:
        splits = {name: Split(z[f"{name}_images"], z[f"{name}_labels"], tuple(z[f"{name}_paths"].tolist()))
                  for name in ("train", "val", "test")}
        skipped, ignored = (tuple((path, reason) for path, reason in z[key].tolist()) for key in ("skipped", "ignored"))
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
