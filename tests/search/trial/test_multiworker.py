"""A trial with two Ray Train workers (DDP over gloo on the CPU) trains and reports once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from search.run import main
from tests.conftest import write_experiment

TWO_WORKERS = """
name="ddp",
data="{data}",
image_size_px=32,
weights="none",
space=Space(arch="small_cnn", cnn_width=8, cnn_depth=2, batch_size=8, augment=0.0, dropout=0.0,
            optimizer="adam", lr={{"adam": 3e-3}}),
budget=Budget(trials=1, max_epochs=3, grace_period_epochs=3, reduction_factor=2),
resources=Resources(workers=2, cpus_per_worker=1),
"""


def test_two_worker_trial_trains_on_both_shards(ray_session, coats: Path, tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, TWO_WORKERS.format(data=coats))
    out = tmp_path / "out"
    assert main([str(experiment), "--out", str(out)]) == 0
    report = pd.read_csv(out / "report.csv")
    assert report["status"].tolist() == ["completed"] and report["epochs"].iloc[0] == 3
    history = pd.read_json(next(out.glob("tune/run_trial_*/result.json")), lines=True)
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    # Each rank trained on its own half; the metrics count both halves once.
    train_split = 4 * (16 - round(0.2 * 16))  # conftest's coats: 16 train images per class
    assert history["train_images"].tolist() == [train_split // 2 * 2] * 3
