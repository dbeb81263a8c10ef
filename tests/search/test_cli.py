"""`python -m search.run` as a user runs it: end to end, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, cli_env, tiny_experiment, write_experiment
from tests.search.report.test_table import assert_report_rebuilds
from tests.trainables.test_data import make_folder


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.run", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_cli_runs_a_search_end_to_end(coats: Path, tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, Path("elsewhere"), trials=3, epochs=2)
    proc = run_cli(str(experiment), "--data", str(coats), "--out", "out", "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    # Ray Train's INFO lines (each report; a page per trial ASHA stops) and warnings of our own
    # code stay off the console
    console = proc.stdout + proc.stderr
    assert "Reporting training result" not in console and "[FailurePolicy]" not in console
    assert "Error in training function" not in console, console  # a stopped trial's kept worker is no error
    assert "UserWarning" not in console, console
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert len(report) == 3 and report["status"].isin(["completed", "early_stopped"]).all()
    meta = json.loads((tmp_path / "out" / "best" / "meta.json").read_text())
    assert meta["classes"] == ["blotches", "rosettes", "spots", "stripes"]
    assert "Best trial" in proc.stdout and meta["trial_id"] in proc.stdout
    assert_report_rebuilds(tmp_path / "out", trials=3)
    # Optuna learned each trial's best epoch, the value the report ranks by
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}")
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(report["val_acc"]))
    # an existing search is never overwritten silently
    again = run_cli(str(experiment), "--data", str(coats), "--out", "out", cwd=tmp_path)
    assert_user_error(again, "--out", "--resume")


def test_typo_field_is_one_line_exit_2(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, 'name="x", data="d", budget=Budget(trails=3)')
    assert_user_error(run_cli(str(experiment), cwd=tmp_path), "Budget.trails", "did you mean 'trials'")


def test_bad_value_is_one_line_exit_2(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, 'name="x", data="d", val_fraction=1.5')
    assert_user_error(run_cli(str(experiment), cwd=tmp_path), "Experiment.val_fraction", "1.5", "between 0 and 1")


def test_bad_override_is_one_line_exit_2(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, 'name="x", data="d"')
    assert_user_error(run_cli(str(experiment), "--trials", "0", cwd=tmp_path), "Budget.trials", "0")


def test_missing_data_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, tmp_path / "nowhere")
    assert_user_error(run_cli(str(experiment), cwd=tmp_path), str(tmp_path / "nowhere"), "missing data folder")


def test_missing_experiment_file_is_one_line_exit_2(tmp_path: Path) -> None:
    assert_user_error(run_cli("experiments/nope.py", cwd=tmp_path), "nope.py")


def test_missing_imagenet_weights_stop_before_any_trial(tmp_path: Path, coats: Path) -> None:
    experiment = write_experiment(tmp_path, f'name="x", data="{coats}", image_size_px=75, '
                                  'space=Space(arch="inception_frozen")')
    env = cli_env()
    proc = subprocess.run([sys.executable, "-m", "search.run", str(experiment)], capture_output=True, text=True,
                          env={**env, "TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9",
                               "https_proxy": "http://127.0.0.1:9"}, cwd=tmp_path, timeout=300)
    assert_user_error(proc, "inception_v3_google-0cc3c7bd.pth", str(tmp_path / "torch"), "weights='none'")


@pytest.mark.parametrize("option", ["--out", "--cache"])
@pytest.mark.parametrize("value, fragment", [("a_file", "(it is a file)"), ("a_file/sub", "a_file is a file")])
def test_out_or_cache_under_a_file_is_one_line_exit_2(tmp_path: Path, option: str, value: str, fragment: str) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    experiment = tiny_experiment(tmp_path, tmp_path / "nowhere")
    proc = run_cli(str(experiment), option, value, "--check", cwd=tmp_path)
    assert_user_error(proc, f"{option}: {value!r}", "a folder, or a path where one can be made", fragment)


def test_out_or_cache_that_cannot_be_written_is_one_line_exit_2(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        (locked / "probe").touch()
    except PermissionError:
        pass
    else:
        pytest.skip("chmod does not stop this user (root) from writing: nothing to refuse")
    experiment = tiny_experiment(tmp_path, tmp_path / "nowhere")
    for option, value in (("--out", "locked"), ("--cache", "locked/cache")):
        proc = run_cli(str(experiment), option, value, "--check", cwd=tmp_path)
        assert_user_error(proc, f"{option}: {value!r}", f"a folder you can write to ({locked}: Permission denied)")


def test_negative_seed_is_one_line_exit_2(tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, 'name="x", data="d"')
    assert_user_error(run_cli(str(experiment), "--seed", "-5", "--check", cwd=tmp_path),
                      "Experiment.seed: -5", "must lie in [0, 4294967295]")


@pytest.mark.parametrize("content, fragment", [
    (b"from search.spec import *\n\nexperiment = foo\n", "(line 3: NameError: name 'foo' is not defined)"),
    (b"import search.no_such_module\n", "(line 1: ModuleNotFoundError: No module named 'search.no_such_module')"),
    (np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes(), "a UTF-8 text file (byte 0x"),
])
def test_experiment_file_that_cannot_run_is_one_line_exit_2(tmp_path: Path, content: bytes, fragment: str) -> None:
    (tmp_path / "x.py").write_bytes(content)
    assert_user_error(run_cli("x.py", "--check", cwd=tmp_path), "experiment: 'x.py'", fragment)


def test_recipe_outside_the_space_is_one_line_exit_2_with_check(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path, tmp_path / "nowhere")
    experiment.write_text(experiment.read_text().replace("\n)\n", '\n    recipes=[{"lr": 5.0}],\n)\n'))
    assert_user_error(run_cli(str(experiment), "--check", cwd=tmp_path),
                      "Experiment.recipes[0].lr: 5.0", "must lie in the searched domain")


def test_broken_and_looping_links_in_a_class_folder_are_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", train=3)
    (root / "train" / "a" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "train" / "b" / "loop.png").symlink_to("loop.png")
    experiment = tiny_experiment(tmp_path, root)
    proc = run_cli(str(experiment), "--check", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped 2 unreadable files" in proc.stdout
    report = pd.read_csv(tmp_path / "out" / "data_report.csv").set_index("path")
    dangling, loop = (report.loc[str(root / "train" / c / n)] for c, n in (("a", "dangling.png"), ("b", "loop.png")))
    assert (dangling["status"], dangling["class"]) == ("skipped", "a")
    assert dangling["reason"].startswith("broken symbolic link")
    assert (loop["status"], loop["reason"]) == ("skipped", "symbolic link loop (to loop.png)")


def test_one_class_is_one_line_exit_2(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", classes=("cats",))
    experiment = tiny_experiment(tmp_path, root)
    assert_user_error(run_cli(str(experiment), "--check", cwd=tmp_path),
                      f"{root / 'train'}: has one class folder ('cats')", "needs at least two")


def test_cache_max_frees_the_least_recently_used_caches_and_says_so(tmp_path: Path, coats: Path) -> None:
    from tests.trainables.test_data import aged

    cache, experiment = tmp_path / "cache", tiny_experiment(tmp_path, coats)
    older = aged(cache / "arrays-older.npz", 200, size=2_000_000)
    newer = aged(cache / "arrays-newer.npz", 100, size=1_000_000)
    kept = [aged(cache / "arrays-other.tmp-1.npz", 300, size=1000), aged(cache / "runs" / "abc" / "x.csv", 300, size=1),
            aged(cache / "notes.txt", 300, size=1)]
    assert_user_error(run_cli(str(experiment), "--check", "--cache", str(cache), "--cache-max", "4XB", cwd=tmp_path),
                      "--cache-max: '4XB' is not allowed", "a size such as 4GB, 500MB or 0")

    proc = run_cli(str(experiment), "--check", "--cache", str(cache), "--cache-max", "2MB", "--out", "a", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [current] = [p for p in cache.glob("arrays-*.npz") if p not in (older, newer, kept[0])]
    assert f"Freed 1 least recently used decoded caches (2.0 MB) in {cache} to keep it under --cache-max 2MB" \
        in proc.stdout
    assert not older.exists() and newer.exists() and current.stat().st_size < 1_000_000

    again = run_cli(str(experiment), "--check", "--cache", str(cache), "--cache-max", "0", "--out", "b", cwd=tmp_path)
    assert again.returncode == 0 and "reused the decoded cache" in again.stdout
    assert "Freed 1 least recently used decoded caches (1.0 MB)" in again.stdout
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == sorted([current, *kept])

    third = run_cli(str(experiment), "--check", "--cache", str(cache), "--cache-max", "0", "--out", "c", cwd=tmp_path)
    assert third.returncode == 0 and "Freed" not in third.stdout and current.exists()


def test_every_option_is_accepted(tmp_path: Path) -> None:
    from search.run import parse_args

    args = parse_args(["e.py", "--data", "d", "--trials", "3", "--max-epochs", "2", "--concurrency", "1",
                       "--out", "o", "--name", "n", "--address", "auto", "--resume", "--smoke", "--seed", "5"])
    assert (args.trials, args.max_epochs, args.concurrency, args.address, args.resume, args.smoke, args.seed) == \
        (3, 2, 1, "auto", True, True, 5)


def test_smoke_shrinks_the_budget_images_and_workers() -> None:
    from search.experiment.spec import load_experiment
    from search.run import SMOKE_SIZE_PX, apply_overrides, parse_args

    carnivores = load_experiment(REPO / "experiments" / "carnivores.py")
    assert carnivores.image_size_px > SMOKE_SIZE_PX and carnivores.resources.cpus_per_worker > 1
    smoke = apply_overrides(carnivores, parse_args(["e.py", "--smoke"]))
    assert (smoke.budget.trials, smoke.budget.max_epochs) == (2, 1)
    assert smoke.image_size_px == SMOKE_SIZE_PX
    assert (smoke.resources.workers, smoke.resources.cpus_per_worker) == (1, 1)
    assert (smoke.space, smoke.recipes, smoke.data) == (carnivores.space, carnivores.recipes, carnivores.data)
    # an experiment already smaller than the smoke size keeps its images
    quickstart = load_experiment(REPO / "experiments" / "quickstart.py")
    assert quickstart.image_size_px < SMOKE_SIZE_PX
    assert apply_overrides(quickstart, parse_args(["e.py", "--smoke"])).image_size_px == quickstart.image_size_px
