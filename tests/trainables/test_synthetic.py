"""The generated data set: deterministic, laid out like a user's folder, learnable by shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.synthetic import CLASSES, ensure_generated, generate_coats


def test_layout_counts_and_sizes(tmp_path: Path) -> None:
    root = generate_coats(tmp_path / "c", train_per_class=3, test_per_class=2, size_px=40)
    for split, count in (("train", 3), ("test", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(CLASSES)
        for name in CLASSES:
            files = sorted((root / split / name).glob("*.jpg"))
            assert len(files) == count
            with Image.open(files[0]) as img:
                assert img.format == "JPEG" and img.size == (40, 40) and img.mode == "RGB"


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = generate_coats(tmp_path / "a", 2, 1, 32, seed=0)
    b = generate_coats(tmp_path / "b", 2, 1, 32, seed=0)
    c = generate_coats(tmp_path / "c", 2, 1, 32, seed=1)
    rel = Path("train") / "spots" / "spots_0000.jpg"
    assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / rel).read_bytes() != (c / rel).read_bytes()


def test_class_names_can_stand_in_for_a_real_data_set(tmp_path: Path) -> None:
    root = generate_coats(tmp_path / "bears", 2, 1, 32, classes=("grizzly", "panda", "polar"))
    assert sorted(p.name for p in (root / "test").iterdir()) == ["grizzly", "panda", "polar"]
    with pytest.raises(ValueError, match="2 to 4"):
        generate_coats(tmp_path / "x", 1, 1, 32, classes=("a", "b", "c", "d", "e"))


def test_ensure_generated_generates_once(tmp_path: Path) -> None:
    root = tmp_path / "coats"
    assert ensure_generated(root, "coats", train_per_class=2, test_per_class=1, size_px=32)
    first = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    assert not ensure_generated(root, "coats", train_per_class=2, test_per_class=1, size_px=32)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == first
    assert [p.name for p in tmp_path.iterdir()] == ["coats"]  # no staging folder left behind
    with pytest.raises(ValueError, match="allowed: coats"):
        ensure_generated(tmp_path / "other", "cifar")


def test_colour_alone_does_not_give_the_class_away(tmp_path: Path) -> None:
    root = generate_coats(tmp_path / "c", train_per_class=40, test_per_class=0, size_px=32)
    means = {name: np.mean([np.asarray(Image.open(p), dtype=np.float64).mean(axis=(0, 1))
                            for p in (root / "train" / name).glob("*.jpg")], axis=0) for name in CLASSES}
    spread = np.ptp(np.stack(list(means.values())), axis=0)
    assert spread.max() < 30, means  # mean colours of the classes lie within 30 of 255 per channel
