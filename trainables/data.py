"""Image folders in, decoded arrays out: scan, split, decode once, cache.

A data folder holds `train/` and `test/`, one subfolder per class (sorted names are the
class order). Images are decoded once, converted to RGB, resized to the experiment's size
and stored as uint8 arrays in one `.npz` file that every trial memory-maps, instead of
every trial decoding every JPEG in every epoch. Only the files directly inside a class
folder count; nested folders are ignored.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Bump when decoding changes, so caches built by older code are not reused.
CACHE_VERSION = "2"
SHOWN_SKIPPED = 10


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


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension (any case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted; hidden files and other types skipped."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _class_dirs(split_dir: Path) -> list[Path]:
    if not split_dir.exists():
        raise DataError(split_dir, "missing folder; expected one subfolder per class here")
    if not split_dir.is_dir():
        raise DataError(split_dir, "is a file; expected a folder with one subfolder per class")
    dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(split_dir, "has no class subfolders; expected one subfolder per class")
    return dirs


def scan(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """Classes and the (path, label) lists of `train` and `test`, checked for structure."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "missing data folder; expected a folder holding train/ and test/")
    train_dirs = _class_dirs(root / "train")
    classes = tuple(d.name for d in train_dirs)
    test_classes = tuple(d.name for d in _class_dirs(root / "test"))
    if test_classes != classes:
        raise DataError(root / "test", f"classes {list(test_classes)} differ from train/'s {list(classes)}")
    files = {}
    for split in ("train", "test"):
        files[split] = [(path, label) for label, name in enumerate(classes)
                        for path in image_files(root / split / name)]
    return classes, files


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
    with Image.open(path) as img:
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


def _fingerprint(files: dict[str, list[tuple[Path, int]]], size_px: int, val_fraction: float, seed: int) -> str:
    digest = hashlib.sha256(f"{CACHE_VERSION}|{size_px}|{val_fraction}|{seed}".encode())
    for split, items in files.items():
        for path, label in items:
            stat = path.stat()
            digest.update(f"{split}|{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def prepare(root: Path, size_px: int, val_fraction: float, seed: int, cache_dir: Path) -> Path:
    """Decode the folder once into `cache_dir/arrays-<fingerprint>.npz`; reuse it when unchanged."""
    classes, files = scan(root)
    for name in classes:
        count = sum(1 for _, label in files["train"] if classes[label] == name)
        if count < 2:
            raise DataError(Path(root) / "train" / name, f"has {count} images; need at least 2 per class")
    cache = Path(cache_dir) / f"arrays-{_fingerprint(files, size_px, val_fraction, seed)}.npz"
    if cache.exists():
        return cache
    skipped: list[tuple[str, str]] = []
    train_all = _decode_all(files["train"], size_px, skipped)
    test = _decode_all(files["test"], size_px, skipped)
    for label, name in enumerate(classes):
        if np.count_nonzero(train_all.labels == label) < 2:
            raise DataError(Path(root) / "train" / name, "has fewer than 2 readable images")
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
             skipped=np.asarray(skipped, dtype=str).reshape(-1, 2))
    os.replace(tmp, cache)  # atomic: a reader never sees a half-written cache
    return cache


def load(cache: Path) -> ArrayData:
    """Read a cache written by `prepare`."""
    with np.load(cache, allow_pickle=False) as z:
        splits = {name: Split(z[f"{name}_images"], z[f"{name}_labels"], tuple(z[f"{name}_paths"].tolist()))
                  for name in ("train", "val", "test")}
        skipped = tuple((path, reason) for path, reason in z["skipped"].tolist())
        return ArrayData(classes=tuple(z["classes"].tolist()), skipped=skipped, **splits)


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
    return "\n".join(lines)
