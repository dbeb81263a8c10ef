"""`python -m search.data`: flat Kaggle folders and class trees into train/ and test/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.data.layout import main


def write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), i % 255, dtype=np.uint8)).save(folder / name)


def tree(root: Path) -> dict[str, int]:
    return {str(d.relative_to(root)): len(list(d.iterdir())) for d in sorted(root.glob("*/*")) if d.is_dir()}


def test_flat_kaggle_folder_with_counts_per_class(tmp_path: Path, capsys) -> None:
    source = tmp_path / "kaggle_train"
    write_images(source, [f"cat.{i}.jpg" for i in range(12)] + [f"dog.{i}.jpg" for i in range(12)])
    before = sorted(os.listdir(source))
    assert main(["flat", str(source), str(tmp_path / "out"), "--counts", "4,2,3"]) == 0
    assert tree(tmp_path / "out") == {"test/cat": 2, "test/dog": 2, "train/cat": 4, "train/dog": 4,
                                      "val/cat": 3, "val/dog": 3}
    assert sorted(os.listdir(source)) == before  # the source is never moved or deleted
    files = [p.name for p in (tmp_path / "out").rglob("*.jpg")]
    assert len(files) == len(set(files)) == 18  # no image in two splits
    assert "copied 18 files" in capsys.readouterr().out


def test_split_tree_by_ratio_is_seeded_and_can_hard_link(tmp_path: Path) -> None:
    source = tmp_path / "bears"
    for name, count in (("grizzly", 10), ("panda", 5)):
        write_images(source / name, [f"{name}{i}.png" for i in range(count)])
    assert main(["split", str(source), str(tmp_path / "a"), "--test-fraction", "0.2", "--link", "--seed", "3"]) == 0
    assert tree(tmp_path / "a") == {"test/grizzly": 2, "test/panda": 1, "train/grizzly": 8, "train/panda": 4}
    linked = next((tmp_path / "a" / "test" / "grizzly").iterdir())
    assert os.path.samefile(linked, source / "grizzly" / linked.name)
    assert main(["split", str(source), str(tmp_path / "b"), "--seed", "3"]) == 0
    test_a, test_b = (sorted(os.listdir(tmp_path / run / "test" / "grizzly")) for run in ("a", "b"))
    assert test_a == test_b


@pytest.mark.parametrize("args, fragment", [
    (["flat", "{src}", "{out}", "--counts", "20,5"], "has 12 images; the counts ask for 25"),
    (["split", "{src}/missing", "{out}"], "not a folder"),
    (["split", "{src}", "{nonempty}"], "not an empty folder"),
    (["split", "{src}", "{out}", "--test-fraction", "1.5"], "--test-fraction 1.5"),
])
def test_errors_are_one_line_exit_2(tmp_path: Path, capsys, args: list[str], fragment: str) -> None:
    source = tmp_path / "src"
    write_images(source, [f"cat.{i}.jpg" for i in range(12)] + [f"dog.{i}.jpg" for i in range(12)])
    write_images(source / "sub_a", ["a1.jpg", "a2.jpg"])
    write_images(source / "sub_b", ["b1.jpg", "b2.jpg"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    values = {"src": source, "out": tmp_path / "out", "nonempty": tmp_path / "full"}
    assert main([a.format(**values) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and len(err.splitlines()) == 1
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
