"""The tutorials' experiments run end to end (--smoke) on generated stand-ins of their data.

ImageNet weights cannot be downloaded here, so a randomly initialised Inception v3 state
dict is placed where torchvision looks for the real file: the experiments' real loading
path runs, only the numbers in the file are not ImageNet's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from search.data.generated import generate_coats
from search.experiment.space import recipe_points
from search.experiment.spec import load_experiment
from tests.conftest import REPO, cli_env

TUTORIALS = {
    "carnivores": ("cheetah", "hyena", "jaguar", "tiger"),
    "bears": ("grizzly", "panda", "polar"),
    "cats_vs_dogs": ("cat", "dog"),
}


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchvision.models import Inception_V3_Weights, inception_v3

    home = tmp_path_factory.mktemp("torch_home")
    target = home / "hub" / "checkpoints" / Path(Inception_V3_Weights.IMAGENET1K_V1.url).name
    target.parent.mkdir(parents=True)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), target)
    return home


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_recipe_is_the_tutorials_and_in_the_space(name: str) -> None:
    experiment = load_experiment(REPO / "experiments" / f"{name}.py")
    assert experiment.weights == "imagenet" and len(experiment.recipes) == 1
    assert recipe_points(experiment)  # every recipe value lies in the searched space


IN_CI = "carnivores"  # the others' files are checked above; `pytest --all-tutorials` runs them too


@pytest.mark.parametrize("name", sorted(TUTORIALS))
@pytest.mark.slow
def test_smoke_runs_on_a_stand_in_with_the_tutorials_classes(name: str, torch_home: Path, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    if name != IN_CI and not request.config.getoption("--all-tutorials"):
        pytest.skip(f"pytest --all-tutorials runs it (CI runs only {IN_CI})")
    classes = TUTORIALS[name]
    data = generate_coats(tmp_path / "data", train_per_class=10, test_per_class=2, size_px=100, classes=classes)
    env = {**cli_env(), "TORCH_HOME": str(torch_home)}
    proc = subprocess.run([sys.executable, "-m", "search.run", str(REPO / "experiments" / f"{name}.py"), "--smoke",
                           "--data", str(data), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((tmp_path / "out" / "best" / "meta.json").read_text())
    assert meta["classes"] == sorted(classes)
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert len(report) == 2
    first = report.loc[report["trial_number"] == 1].iloc[0]
    assert first["recipe"] == 1  # the tutorial's recipe ran first
    recipe = load_experiment(REPO / "experiments" / f"{name}.py").recipes[0]
    assert first["param.arch"] == recipe["arch"] and first["param.lr"] == pytest.approx(recipe["lr"])


def _check(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.run", str(REPO / "experiments" / "cats_vs_dogs.py"),
                           "--check", "--data", str(data), "--out", str(out), *extra],
                          capture_output=True, text=True, env=cli_env(), cwd=out.parent, timeout=300)


def test_check_reports_the_data_without_training_and_a_second_run_reuses_the_cache(tmp_path: Path) -> None:
    data = generate_coats(tmp_path / "data", train_per_class=4, test_per_class=2, size_px=80, classes=("cat", "dog"))
    (data / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (data / "train" / "dog" / "labels.csv").write_text("not an image")
    proc = _check(data, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "2 classes" in proc.stdout and "cat 3" in proc.stdout and "dog 3" in proc.stdout
    assert "skipped 1 unreadable files" in proc.stdout and "broken.jpg" in proc.stdout
    assert "decoded into the cache" in proc.stdout and "not read: 1" in proc.stdout
    assert "Ray dashboard" not in proc.stdout and not (tmp_path / "out" / "tune").exists()
    assert sorted(n for n in os.listdir(tmp_path / "out") if not n.startswith(".")) == ["data_report.csv"]  # .lock
    report = pd.read_csv(tmp_path / "out" / "data_report.csv")
    assert (report["status"] == "used").sum() == 8 + 4
    skipped = report[report["status"] == "skipped"].iloc[0]
    assert skipped["path"].endswith("broken.jpg") and skipped["class"] == "cat" and skipped["split"] == "train"
    assert "UnidentifiedImageError" in skipped["reason"]
    ignored = report[report["status"] == "ignored"].iloc[0]
    assert ignored["path"].endswith("labels.csv") and ignored["class"] == "dog" and "not an image" in ignored["reason"]

    again = _check(data, tmp_path / "another-out")
    assert again.returncode == 0 and "reused the decoded cache" in again.stdout
    assert pd.read_csv(tmp_path / "another-out" / "data_report.csv").equals(report)

    elsewhere = _check(data, tmp_path / "third-out", "--cache", str(tmp_path / "my-cache"))
    assert elsewhere.returncode == 0 and "decoded into the cache" in elsewhere.stdout
    assert [p.suffix for p in (tmp_path / "my-cache").iterdir()] == [".npz"]  # --cache is where it went


def test_a_picture_in_train_and_test_is_reported_as_leakage(tmp_path: Path) -> None:
    data = generate_coats(tmp_path / "data", train_per_class=4, test_per_class=2, size_px=80, classes=("cat", "dog"))
    shutil.copy(data / "train" / "dog" / "dog_0002.jpg", data / "test" / "dog" / "copied.jpg")
    proc = _check(data, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "warning: 1 pictures appear in two splits" in proc.stdout and "copied.jpg" in proc.stdout
    report = pd.read_csv(tmp_path / "out" / "data_report.csv")
    leak = report[report["status"] == "leakage"].iloc[0]
    assert leak["path"].endswith("dog_0002.jpg") and "copied.jpg" in leak["reason"]
    assert leak["split"] in ("train", "val")
