"""`bash bench/gpu_suite.sh --device cpu --quick`: the GPU suite's dry run, so that the command a
GPU session runs cannot rot between the sessions that are lent one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

STEPS = ["gpu-tests", "bench", "bench-overhead", "bench-decode", "search-asha", "search-full"]
# CI's dry run leaves out the steps whose code other tests run: `bench` is `python -m bench --quick`
# (tests/bench/test_bench.py), `search-asha` the same `bench.suite search` as `search-full`, ASHA on.
IN_CI = ["gpu-tests", "bench-overhead", "bench-decode", "search-full"]


@pytest.mark.slow  # every step of the suite, three Ray searches among them: ~3.5 minutes on 2 cores (CI's: ~2.5)
def test_the_gpu_suites_dry_run_records_every_step_and_the_searches(tmp_path: Path,
                                                                     request: pytest.FixtureRequest) -> None:
    every = request.config.getoption("--all-gpu-steps")
    expected = STEPS if every else IN_CI
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**cli_env(), "OUT": str(out), "WORK": str(work), "PYTHON": sys.executable}
    if not every:
        env["SUITE_STEPS"] = " ".join(IN_CI)
    proc = subprocess.run(["bash", "bench/gpu_suite.sh", "--device", "cpu", "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=2700, check=False)
    suite = json.loads((out / "suite.json").read_text())
    steps = {step["step"]: step for step in suite["steps"]}
    assert list(steps) == expected, proc.stdout[-3000:] + proc.stderr[-3000:]
    failed = {name: step["log_tail"] for name, step in steps.items() if step["exit_code"] != 0}
    assert not failed and proc.returncode == 0, failed or proc.stdout[-3000:]
    assert suite["device"] == "cpu" and suite["quick"] and suite["wheels"] == "none"
    # The CUDA tests pass by skipping here, and their report says so.
    assert suite["gpu_tests"]["tests"] > 0 and suite["gpu_tests"]["skipped"] == suite["gpu_tests"]["tests"]
    modes = [name.removeprefix("search-") for name in expected if name.startswith("search-")]
    assert sorted(suite["search"]) == sorted(modes)
    for mode in modes:
        figures = suite["search"][mode]
        assert figures["wall_time_s"] > 0 and 0 < figures["useful_fraction"] < 1 and figures["trials"] == 2
    assert suite["search"]["full"]["epochs_run"] == 2 * 2  # no early stop: every trial ran every epoch
    if every:
        assert suite["search"]["asha"]["epochs_run"] <= suite["search"]["full"]["epochs_run"]
    # What a lent machine hands back: at most 8 files, none deeper than OUT.
    files = sorted(path.name for path in out.iterdir())
    bench_file = ["bench.json"] if every else []
    assert files == sorted(["bench-decode.json", "bench-overhead.json", *bench_file, "gpu-results.json",
                            "gpu-tests.xml", "suite.json", "suite.log"])
    records = json.loads((out / "gpu-results.json").read_text())
    assert {r["device"] for r in records} == {"cpu"} and all(r["case"] for r in records)
    cases = [r["case"] for r in records]
    assert any(c.startswith("features:") for c in cases) == every
    assert any(c.startswith("overhead:") for c in cases)
    assert any(c.startswith("decode:") and c.endswith("(now)") for c in cases)
    assert sum(c.startswith("search:") for c in cases) == len(modes)
    assert "=== search-full: exit code 0" in (out / "suite.log").read_text()


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--fast"]])
def test_a_bad_option_is_one_line_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "bench/gpu_suite.sh", *argv], cwd=REPO, env={**cli_env(), "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing ran
