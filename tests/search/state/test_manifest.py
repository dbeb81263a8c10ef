"""One truth per search folder: a second search on a folder in use is refused, and so is a
--resume with another experiment or other data; without Ray."""

from __future__ import annotations

import dataclasses
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.experiment.spec import Budget, Experiment, Resources, Space, SpecError, Uniform
from search.state import manifest
from tests.conftest import cli_env, tiny_experiment
from trainables.data import ArrayData, Split

EXPERIMENT = Experiment(name="m", data="d", image_size_px=32, weights="none", space=Space(arch="small_cnn"))


def arrays(seed: int = 0) -> ArrayData:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        return Split(rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 2, tuple(map(str, range(n))))

    return ArrayData(("a", "b"), split(6), split(2), split(2), (), ())


def _hold_until_told(out: Path, ready, release) -> None:  # a second process holding OUT
    with manifest.hold(out, str(out)):
        ready.set()
        release.wait(30)


def test_a_folder_in_use_is_refused_naming_who_holds_it_and_freed_when_the_holder_dies(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_until_told, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(SpecError, match=rf"in use by another search \(pid {holder.pid} on "), \
            manifest.hold(tmp_path, str(tmp_path)):
        pass
    holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
    holder.join()
    with manifest.hold(tmp_path, str(tmp_path)):
        pass


def test_resume_is_refused_when_what_a_trial_means_changed_and_allowed_for_the_budget(tmp_path: Path) -> None:
    data_sha = manifest.data_fingerprint(arrays())
    manifest.write(tmp_path, EXPERIMENT, data_sha, "running")
    stored = manifest.read(tmp_path)
    assert stored["state"] == "running" and stored["data"] == data_sha
    grown = dataclasses.replace(EXPERIMENT, budget=Budget(trials=40), concurrency=3, data="elsewhere",
                                resources=Resources(cpus_per_worker=2))
    manifest.check_resume(stored, grown, data_sha, "OUT")  # more trials, another cluster, moved data: fine
    # what acts at export only: fine, and a search stored before `ensemble` existed resumes
    exported = dataclasses.replace(EXPERIMENT, select="fastest_within=0.01", ensemble="off")
    manifest.check_resume(stored, exported, data_sha, "OUT")
    older = {**stored, "experiment": {k: v for k, v in stored["experiment"].items() if k != "ensemble"}}
    manifest.check_resume(older, EXPERIMENT, data_sha, "OUT")
    resized = dataclasses.replace(EXPERIMENT, image_size_px=48)
    with pytest.raises(SpecError, match=r"image_size_px 32 -> 48"):
        manifest.check_resume(stored, resized, data_sha, "OUT")
    respaced = dataclasses.replace(EXPERIMENT, space=Space(arch="small_cnn", augment=Uniform(0.0, 0.2)))
    with pytest.raises(SpecError, match=r"space\.augment"):
        manifest.check_resume(stored, respaced, data_sha, "OUT")
    with pytest.raises(SpecError, match="the data differ"):
        manifest.check_resume(stored, EXPERIMENT, manifest.data_fingerprint(arrays(seed=1)), "OUT")


def test_the_cli_refuses_a_resume_with_an_edited_experiment(coats: Path, tmp_path: Path) -> None:
    """Through the real CLI, before Ray starts: a stored manifest, then --resume with other images."""
    experiment = tiny_experiment(tmp_path, coats)
    out = tmp_path / "out"
    check = subprocess.run([sys.executable, "-m", "search.run", str(experiment), "--out", str(out), "--check"],
                           capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert check.returncode == 0, check.stderr
    from search.experiment.spec import load_experiment
    from search.run import apply_overrides, parse_args

    args = parse_args([str(experiment)])
    loaded = apply_overrides(load_experiment(experiment), args)
    from trainables import data

    cache = data.prepare(coats, loaded.image_size_px, loaded.val_fraction, loaded.seed)
    manifest.write(out, loaded, manifest.data_fingerprint(data.load(cache.path)), "interrupted")
    edited = tmp_path / "edited.py"
    edited.write_text(experiment.read_text().replace("image_size_px=32", "image_size_px=40"))
    proc = subprocess.run([sys.executable, "-m", "search.run", str(edited), "--out", str(out), "--resume"],
                          capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --resume") and "image_size_px 32 -> 40" in proc.stderr
