"""Scanning a data folder, splitting it, decoding it once into a cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables import data


def make_folder(root: Path, classes=("a", "b"), train: int = 5, test: int = 2, size: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("breakage, fragment", [
    (lambda r: None, "missing data folder"),
    (lambda r: (r / "test").mkdir(parents=True), "train: missing folder"),
    (lambda r: ((r / "train").mkdir(parents=True), (r / "test").mkdir()), "no class subfolders"),
    (lambda r: (r.mkdir(), (r / "train").write_text("x")), "is a file"),
])
def test_structure_errors_name_the_path(tmp_path: Path, breakage, fragment: str) -> None:
    root = tmp_path / "d"
    breakage(root)
    with pytest.raises(data.DataError) as err:
        data.scan(root)
    assert fragment in str(err.value) and str(root) in str(err.value)


def test_test_classes_must_match_train(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d")
    (root / "test" / "c").mkdir()
    with pytest.raises(data.DataError, match="differ from train"):
        data.scan(root)


def test_scan_matches_extensions_in_any_case_and_skips_hidden_and_nested(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=2)
    folder = root / "train" / "a"
    os.rename(folder / "0.png", folder / "0.PNG")
    (folder / ".hidden.png").write_bytes((folder / "1.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    (folder / "nested" / "x.png").write_bytes((folder / "1.png").read_bytes())
    classes, files = data.scan(root)
    assert classes == ("a", "b")
    assert sorted(p.name for p, label in files["train"] if label == 0) == ["0.PNG", "1.png"]


def test_stratified_split_is_seeded_and_keeps_each_class() -> None:
    labels = np.array([0] * 10 + [1] * 30)
    train, val = data.stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val]).tolist() == [2, 6]
    assert set(train) | set(val) == set(range(40)) and not set(train) & set(val)
    assert np.array_equal(val, data.stratified_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(val, data.stratified_split(labels, 0.2, seed=4)[1])


def test_prepare_decodes_once_and_rebuilds_when_a_file_changes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d")
    cache = data.prepare(root, 16, 0.2, 0, tmp_path / "cache")
    arrays = data.load(cache)
    assert arrays.classes == ("a", "b")
    assert arrays.train.images.shape[1:] == (16, 16, 3) and arrays.train.images.dtype == np.uint8
    assert len(arrays.train.labels) + len(arrays.val.labels) == 10 and len(arrays.test.labels) == 4
    assert data.prepare(root, 16, 0.2, 0, tmp_path / "cache") == cache
    Image.new("RGB", (20, 20), "red").save(root / "train" / "a" / "0.png")
    os.utime(root / "train" / "a" / "0.png", ns=(1, 1))
    assert data.prepare(root, 16, 0.2, 0, tmp_path / "cache") != cache
    assert data.prepare(root, 24, 0.2, 0, tmp_path / "cache") != cache


def test_unreadable_images_are_skipped_and_odd_modes_converted(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=3)
    folder = root / "train" / "a"
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "random.jpg").write_bytes(os.urandom(500))
    Image.new("L", (30, 10), 128).save(folder / "gray.png")
    Image.new("RGBA", (10, 30), (0, 0, 0, 0)).save(folder / "transparent.png")
    Image.new("P", (12, 12)).save(folder / "palette.gif")
    Image.fromarray(np.full((8, 8), 60000, dtype=np.uint16)).save(folder / "deep.png")
    arrays = data.load(data.prepare(root, 16, 0.2, 0, tmp_path / "cache"))
    paths = arrays.train.paths + arrays.val.paths
    assert not any(p.endswith(("zero.jpg", "random.jpg")) for p in paths)
    assert sorted(Path(p).name for p, _ in arrays.skipped) == ["random.jpg", "zero.jpg"]
    assert all("UnidentifiedImageError" in reason for _, reason in arrays.skipped)
    report = data.summary(arrays, root)
    assert "skipped 2 unreadable files" in report and "zero.jpg" in report
    assert sum(p.endswith(("gray.png", "transparent.png", "palette.gif", "deep.png")) for p in paths) == 4


def test_a_class_needs_two_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=1)
    with pytest.raises(data.DataError, match="need at least 2"):
        data.prepare(root, 16, 0.2, 0, tmp_path / "cache")
