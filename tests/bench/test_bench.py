"""`python -m bench` as a user runs it, on a tiny generated data set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as cli
from tests.conftest import REPO, cli_env


def run_bench(tmp_path: Path, *argv: str) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess]:
    """`python -m bench --quick --device cpu ARGV` in a work folder of its own: its records and process."""
    work, out = tmp_path / "work", tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--device", "cpu", *argv,
                           "--work", str(work), "--json", str(out)],
                          capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not work.exists()
    return json.loads(out.read_text()), proc


@pytest.mark.slow  # every case of the benchmark, ~20 s
def test_quick_bench_measures_every_case_and_cleans_up(tmp_path: Path) -> None:
    # Tiny on purpose: this checks that every case runs and reports, not how fast (seconds on 2 cores).
    records, proc = run_bench(tmp_path, "--images", "64", "--size-px", "64", "--batches", "1", "--batch-size", "4",
                              "--rounds", "2", "--sharing", "2")
    assert records and all(r["case"] and r["images_per_s"] > 0 and r["images"] > 0 for r in records)
    assert all(len(r["images_per_s_rounds"]) == 2 and r["images_per_s"] == max(r["images_per_s_rounds"])
               for r in records)
    cases = [r["case"] for r in records]
    assert len(cases) == len({(r["case"], r["arch"]) for r in records})
    assert any("naive" in c and "data epoch" in c for c in cases)
    assert any(c.startswith("cache build") for c in cases) and any(c.startswith("cache reuse") for c in cases)
    for arch in cli.parse_args([]).archs:  # the default: the tutorials' architectures
        mine = {r["case"].split(" train step")[0] for r in records if r["arch"] == arch and "train step" in r["case"]}
        assert mine == {"naive", "ours", "model only"}, arch
    assert all(r["ratio_vs_naive"] > 0 for r in records if r["case"].startswith("ours"))
    assert not any(c.startswith("startup") for c in cases)  # Ray's case is asked for by name only

    features = {r["case"]: r for r in records if r["case"].startswith("features:")}
    assert set(features) == {"features: backbone every epoch", "features: cached, head only",
                             "features: extraction (once)"}
    assert all(r["arch"] == "inception_frozen" and r["baseline"] == "features: backbone every epoch"
               for r in features.values())
    # How much cheaper is the benchmark's to say (bench/RESULTS.md), not a timed test's: a busy
    # machine brought it to 1.3x here once.
    assert features["features: cached, head only"]["ratio_vs_baseline"] > 0

    sharing = [r for r in records if r["case"].startswith("sharing:")]
    assert [r["processes"] for r in sharing] == [1, 2] and sharing[0]["ratio_vs_baseline"] == 1
    assert sharing[1]["images"] == 2 * sharing[0]["images"] and sharing[1]["ratio_vs_baseline"] > 0
    assert "images/s" in proc.stdout and "vs baseline" in proc.stdout and "note: sharing on a CPU" in proc.stdout


@pytest.mark.slow  # a real search under Ray
def test_startup_case_reports_each_trials_start_from_a_real_search(tmp_path: Path) -> None:
    records, proc = run_bench(tmp_path, "--cases", "startup", "--startup-trials", "2", "--images", "32",
                              "--size-px", "32")
    [startup] = records
    assert startup["case"].startswith("startup") and startup["trials"] == 2 and len(startup["startup_s"]) == 2
    assert 0 < startup["seconds_min"] <= startup["seconds"] <= startup["seconds_max"] < 120
    assert "startup_s of 2 trials" in proc.stdout


@pytest.mark.slow  # Ray Serve's start, three applications
def test_serve_case_loads_the_endpoint_against_serves_no_op_floor(tmp_path: Path) -> None:
    from bench import serve_load

    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, "-m", "bench.serve_load", "--clients", "2", "--requests", "12",
                           "--size-px", "32", "--json", str(out)],
                          capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["case"] for r in records] == [f"HTTP {name}" for name in
                                           (serve_load.DEFAULT_FLOOR, serve_load.FLOOR, serve_load.OURS)]
    assert all(r["images"] == 12 and r["errors"] == 0 and r["images_per_s"] > 0 for r in records), records
    ours = records[-1]
    assert ours["baseline"] in {r["case"] for r in records[:2]} and ours["ratio_vs_baseline"] > 0
    assert set(ours["inside_replica_ms"]) >= {"decode_ms", "model_1_ms", "json_ms"}
    assert "requests/s" in proc.stdout and "goal >= 0.5" in proc.stdout


def test_bench_imports_no_ray() -> None:
    code = "import sys, bench.__main__; print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), cwd=REPO,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("argv, fragment", [(["--images", "3"], "--images"), (["--batches", "0"], "--batches"),
                                            (["--sharing", "1"], "--sharing")])
def test_bad_arguments_are_one_line_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith(f"error: {fragment}")


def test_all_means_every_case_but_the_searches_and_cases_combine() -> None:
    assert cli.parse_args([]).cases == ["data", "train", "features", "sharing"]
    assert cli.parse_args(["--cases", "startup", "features"]).cases == ["features", "startup"]
    assert cli.parse_args(["--cases", "all", "startup"]).cases == [*cli.IN_ALL, "startup"]
    assert cli.parse_args(["--cases", "all", "startup", "overhead", "liar", "decode", "remote", "serve"]).cases == \
        list(cli.CASES)
    assert cli.parse_args(["--quick", "--cases", "decode"]).photos == cli.PHOTOS["quick"]
    assert cli.parse_args(["--quick", "--cases", "overhead"]).cases == ["overhead"]


def test_archs_default_to_the_tutorials_and_name_any_of_the_table() -> None:
    assert cli.parse_args([]).archs == ["small_cnn", "inception_frozen", "inception_partial"]
    assert cli.parse_args(["--archs", "resnet50_frozen", "small_cnn", "resnet50_frozen"]).archs == \
        ["resnet50_frozen", "small_cnn"]


def test_a_non_empty_work_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        cli.parse_args(["--work", str(tmp_path)])
    assert (tmp_path / "mine.txt").exists()


def test_the_decode_case_sets_the_parallel_reduced_decode_against_the_serial_full_one(tmp_path: Path) -> None:
    from bench.cases_data import decode_cases
    from search.data.photos import photo_folder

    photos = photo_folder(tmp_path / "photos", classes=2, per_class=4, width=600, height=450)
    records = decode_cases(photos, 64, rounds=1)
    assert [r["case"].split(":")[0] for r in records] == ["decode"] * 4
    assert records[0]["case"].endswith("(before)") and records[-1]["case"].endswith("(now)")
    assert all(r["images"] == 12 and r["photos"] == 12 for r in records)
    assert records[0]["ratio_vs_baseline"] == 1.0 and all(r["ratio_vs_baseline"] > 0 for r in records)


def test_the_remote_case_sets_decoding_as_downloads_land_against_mirroring_first(tmp_path: Path) -> None:
    from bench.cases_data import remote_cases
    from search.data.photos import photo_folder

    photos = photo_folder(tmp_path / "photos", classes=2, per_class=4, width=600, height=450)
    records = remote_cases(photos, 64, rounds=1, work=tmp_path)
    assert [r["case"].split(",")[0] for r in records] == ["s3 data"] * 2
    assert records[0]["case"].endswith("(before)") and records[-1]["case"].endswith("(now)")
    assert all(r["images"] == 12 and r["photos"] == 12 for r in records)
    assert records[0]["ratio_vs_baseline"] == 1.0 and records[1]["ratio_vs_baseline"] > 0
    assert not list(tmp_path.glob("remote-*"))  # each round's cache removed: the next starts cold
