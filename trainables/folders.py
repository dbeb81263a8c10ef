"""What a data folder holds, found without reading a picture: its classes and image files.

A data folder holds `train/` and `test/`, one subfolder per class (sorted names are the
class order). Only the image files directly inside a class folder count: nested folders,
files outside class folders and non-image files are not read, and are listed (with the
reason) so the data report shows them; hidden files are ignored silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class DataError(ValueError):
    """The data folder is not usable; the message names the path and what is expected."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class Scan:
    """What a data folder holds: classes, the (path, label) lists of train and test, and
    the entries that were not read (non-images, nested folders) with the reason."""

    classes: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]
    ignored: list[tuple[str, str]] = field(default_factory=list)


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
