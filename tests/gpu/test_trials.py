"""Trials on a real GPU through `search.run.main`: two trials on a quarter of the GPU each, and
one 2-worker DDP trial whose workers share the GPU (half each, NCCL).

Every test skips without CUDA; `bash bench/gpu_suite.sh` runs them on a lent GPU (`-m gpu`).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from search.run import main
from tests.conftest import leftovers, tiny_experiment
from trainables.hparams import HParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a GPU)")]


def where_it_ran(folder: Path, hp: HParams, metrics: dict[str, float]) -> None:
    """An epoch hook (it runs in each Train worker): what the worker was given and used, as a file."""
    import ray

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    seen = {"epoch": metrics["epoch"], "pid": os.getpid(), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "cuda_bytes": torch.cuda.memory_allocated(),
            "backend": torch.distributed.get_backend() if distributed else None,
            "world_size": torch.distributed.get_world_size() if distributed else 1}
    (folder / f"{os.getpid()}-{metrics['epoch']}.json").write_text(json.dumps(seen))


def search(tmp_path: Path, coats: Path, trials: int, workers: int, gpus: float) -> tuple[pd.DataFrame, list[dict]]:
    """A search on the session's Ray; its report and what every worker saw in every epoch."""
    experiment = tiny_experiment(tmp_path, coats, trials=trials, epochs=2, cpus=0.5, workers=workers, gpus=gpus)
    seen = tmp_path / "seen"
    seen.mkdir()
    out = tmp_path / "out"
    assert main([str(experiment), "--out", str(out)], on_epoch=functools.partial(where_it_ran, seen)) == 0
    report = pd.read_csv(out / "report.csv")
    assert len(report) == trials and (report["status"] != "error").all(), report["error"].tolist()
    return report, [json.loads(path.read_text()) for path in sorted(seen.iterdir())]


def assert_on_the_gpu(seen: list[dict[str, Any]], share: float) -> None:
    assert seen and all(s["gpu_ids"] and s["cuda_bytes"] > 0 for s in seen), seen
    assert all(s["resources"].get("GPU") == pytest.approx(share) for s in seen), [s["resources"] for s in seen]


def test_trials_on_a_quarter_of_the_gpu_each(ray_session, coats: Path, tmp_path: Path) -> None:
    report, seen = search(tmp_path, coats, trials=2, workers=1, gpus=0.25)
    assert_on_the_gpu(seen, 0.25)
    assert len({s["pid"] for s in seen}) == 2  # a worker each (ASHA may stop one after its first epoch)
    assert leftovers(ray_session) == ([], [])


def test_a_two_worker_ddp_trial_shares_one_gpu(ray_session, coats: Path, tmp_path: Path) -> None:
    # NCCL refuses two ranks on one device ("Duplicate GPU detected", ray-project/ray#48012): if this
    # fails so, trials whose workers share a GPU need the gloo backend.
    report, seen = search(tmp_path, coats, trials=1, workers=2, gpus=0.5)
    assert report["status"].tolist() == ["completed"] and report["epochs"].tolist() == [2]
    assert_on_the_gpu(seen, 0.5)
    assert len({s["pid"] for s in seen}) == 2 and {s["world_size"] for s in seen} == {2}
    assert len({tuple(s["gpu_ids"]) for s in seen}) == 1  # both workers on the one GPU
    assert {s["backend"] for s in seen} == {"nccl"}
    history = pd.read_json(next((tmp_path / "out").glob("tune/run_trial_*/result.json")), lines=True)
    train_split = 4 * (16 - round(0.2 * 16))  # conftest's coats: 16 train images per class
    assert history["train_images"].tolist() == [train_split // 2 * 2] * 2  # each rank its half
    assert leftovers(ray_session) == ([], [])
