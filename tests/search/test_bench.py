"""`python -m search.bench` as a user runs it, on a tiny generated data set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from search import bench
from tests.conftest import REPO, cli_env


def test_quick_bench_measures_every_case_and_cleans_up(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "bench.json"
    # Tiny on purpose: this checks that every case runs and reports, not how fast (seconds on 2 cores).
    tiny = ["--images", "64", "--size-px", "64", "--batches", "1", "--batch-size", "4", "--rounds", "2"]
    proc = subprocess.run([sys.executable, "-m", "search.bench", "--quick", "--device", "cpu", *tiny,
                           "--work", str(work), "--json", str(out)],
                          capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert records and all(r["case"] and r["images_per_s"] > 0 and r["images"] > 0 for r in records)
    assert all(len(r["images_per_s_rounds"]) == 2 and r["images_per_s"] == max(r["images_per_s_rounds"])
               for r in records)
    cases = [r["case"] for r in records]
    assert len(cases) == len(set((r["case"], r["arch"]) for r in records))
    assert any("naive" in c and "data epoch" in c for c in cases)
    assert any(c.startswith("cache build") for c in cases) and any(c.startswith("cache reuse") for c in cases)
    for arch in bench.ARCHS:
        mine = {r["case"].split(" train step")[0] for r in records if r["arch"] == arch}
        assert mine == {"naive", "ours", "model only"}, arch
    assert all(r["ratio_vs_naive"] > 0 for r in records if r["case"].startswith("ours"))
    assert "images/s" in proc.stdout and "vs naive" in proc.stdout
    assert not work.exists()


def test_bench_imports_no_ray() -> None:
    code = "import sys, search.bench; print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("argv, fragment", [(["--images", "3"], "--images"), (["--batches", "0"], "--batches")])
def test_bad_arguments_are_one_line_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith(f"error: {fragment}")


def test_a_non_empty_work_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        bench.parse_args(["--work", str(tmp_path)])
    assert (tmp_path / "mine.txt").exists()
