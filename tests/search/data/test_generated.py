"""The generated data set: deterministic, laid out like a user's folder, learnable by shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.data import generated as synthetic
from search.data.generated import CLASSES, GENERATORS, ensure_generated, generate_coats


def test_layout_counts_and_valid_jpegs(tmp_path: Path) -> None:
    root = generate_coats(tmp_path / "c", train_per_class=3, test_per_class=2, size_px=40)
    assert root == tmp_path / "c"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    for split, count in (("train", 3), ("test", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == list(CLASSES)
        for name in CLASSES:
            files = sorted((root / split / name).iterdir())
            assert [p.name for p in files] == [f"{name}_{i:04d}.jpg" for i in range(count)]
            for path in files:
                with Image.open(path) as img:
                    img.verify()
                with Image.open(path) as img:
                    assert img.format == "JPEG" and img.size == (40, 40) and img.mode == "RGB"


def test_classes_are_sorted_and_registered() -> None:
    assert CLASSES == tuple(sorted(CLASSES)) == ("blotches", "rosettes", "spots", "stripes")
    assert GENERATORS["coats"] is generate_coats


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = generate_coats(tmp_path / "a", 2, 1, 32, seed=0)
    b = generate_coats(tmp_path / "b", 2, 1, 32, seed=0)
    c = generate_coats(tmp_path / "c", 2, 1, 32, seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 12
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert all((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    assert len({(a / f).read_bytes() for f in files}) == len(files)  # no two images alike


def test_class_names_can_stand_in_for_a_real_data_set(tmp_path: Path) -> None:
    root = generate_coats(tmp_path / "bears", 2, 1, 32, classes=("grizzly", "panda", "polar"))
    assert sorted(p.name for p in (root / "test").iterdir()) == ["grizzly", "panda", "polar"]
    with pytest.raises(ValueError, match="2 to 4"):
        generate_coats(tmp_path / "x", 1, 1, 32, classes=("a", "b", "c", "d", "e"))


def test_ensure_generated_generates_once(tmp_path: Path) -> None:
    root = tmp_path / "coats"
    assert ensure_generated(root, "coats", train_per_class=2, test_per_class=1, size_px=32)
    first = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*.jpg")}
    assert len(first) == 12
    assert not ensure_generated(root, "coats", train_per_class=5, test_per_class=1, size_px=32)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*.jpg")} == first
    assert [p.name for p in tmp_path.iterdir()] == ["coats"]  # no staging folder left behind


def test_ensure_generated_rejects_unknown_generators(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'cifar'.*allowed: coats"):
        ensure_generated(tmp_path / "other", "cifar")
    assert not (tmp_path / "other").exists()


def test_a_crash_leaves_no_half_written_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(root: Path, **kwargs: object) -> Path:
        generate_coats(root, 1, 0, 16)
        raise KeyboardInterrupt

    monkeypatch.setitem(synthetic.GENERATORS, "crash", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(tmp_path / "coats", "crash")
    assert list(tmp_path.iterdir()) == []


def test_colour_alone_does_not_give_the_class_away(tmp_path: Path) -> None:
    root = generate_coats(tmp_path / "c", train_per_class=40, test_per_class=0, size_px=32)
    means = {name: np.mean([np.asarray(Image.open(p), dtype=np.float64).mean(axis=(0, 1))
                            for p in (root / "train" / name).glob("*.jpg")], axis=0) for name in CLASSES}
    spread = np.ptp(np.stack(list(means.values())), axis=0)
    assert spread.max() < 30, means  # the classes' mean colours lie within 30 of 255 per channel
