"""`python -m search.predict` as a user runs it: tables, CSV, and its one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli_env
from tests.search.best.test_export import CLASSES, edit_meta, make_export, write_images


def run_predict(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.predict", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """out/best/ from a random small CNN, and photos/ with three images and a corrupt file."""
    root = tmp_path_factory.mktemp("predict")
    make_export(root / "out")
    write_images(root / "photos")
    return root


def test_a_folder_with_a_corrupt_file_is_labelled_and_written_to_csv(setup: Path) -> None:
    proc = run_predict("out", "photos", "missing.jpg", "--csv", "table.csv", cwd=setup)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(setup / "table.csv")
    assert list(table.columns) == ["file", "prediction", *CLASSES, "error"]
    assert len(table) == 5  # 3 images, the corrupt one, the missing path
    rows = {Path(f).name: row for f, row in zip(table["file"], table.itertuples())}
    assert rows["broken.jpg"].error.startswith("UnidentifiedImageError") and pd.isna(rows["broken.jpg"].prediction)
    assert rows["missing.jpg"].error.startswith("FileNotFoundError")
    for name in ("a.png", "b.jpg", "c.png"):
        assert rows[name].prediction in CLASSES and pd.isna(rows[name].error)
    assert table[list(CLASSES)].dropna().sum(axis=1).round(4).eq(1).all()
    assert "broken.jpg" in proc.stdout and "UnidentifiedImageError" in proc.stdout


def test_top_k_shows_the_likeliest_classes(setup: Path) -> None:
    proc = run_predict("out", "photos/a.png", "--top-k", "2", cwd=setup)
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header == ["file", "prediction", "top1", "top1_prob", "top2", "top2_prob", "error"]


PROBLEMS = ["tampered", "classes reordered", "class added, meta resealed", "no export", "top-k too large"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_a_bad_export_or_option_is_one_error_line_and_exit_2(setup: Path, tmp_path: Path, problem: str) -> None:
    out, extra = setup / "out", []
    if problem in PROBLEMS[:3]:
        out = tmp_path / "out"
        make_export(out)
    if problem == "tampered":
        with (out / "best" / "model.onnx").open("ab") as file:
            file.write(b"\0")
    elif problem == "classes reordered":  # once every label wrong, exit 0
        edit_meta(out, lambda meta: meta["classes"].reverse())
    elif problem == "class added, meta resealed":  # once load_state_dict's traceback
        edit_meta(out, lambda meta: meta["classes"].append("lion"), reseal=True)
    elif problem == "no export":
        out = tmp_path
    else:
        extra = ["--top-k", "4"]
    proc = run_predict(str(out), str(setup / "photos"), *extra, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    expected = {"tampered": "model.onnx: sha256 differs", "classes reordered": "meta.json: modified after export",
                "class added, meta resealed": "model.pt: does not fit meta.json",
                "no export": "no exported model here", "top-k too large": "1 to 3"}[problem]
    assert expected in lines[0]
