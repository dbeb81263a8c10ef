"""The search's store of frozen features on Ray: one computation per key, waiters get it,
a claim given up by a stopped trial is taken over, and the store keeps to its size."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.driver import feature_store as features
from tests.conftest import write_experiment


def arrays(fill: float, n: int = 4) -> tuple[np.ndarray, np.ndarray, str]:
    return np.full((1, n, 8), fill, np.float32), np.full((n, 8), fill, np.float32), "float32"


def test_one_computes_the_others_wait_and_reuse(ray_session) -> None:
    store = features.start_store()
    share = features.sharing(store)
    calls, results = [], []

    def slow_compute() -> tuple[np.ndarray, np.ndarray, str]:
        calls.append(1)
        time.sleep(1.0)
        return arrays(1.0)

    threads = [threading.Thread(target=lambda: results.append(share("k", slow_compute))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and sorted(shared for _, shared in results) == [False, True, True]
    assert all(np.array_equal(found[0], arrays(1.0)[0]) for found, _ in results)
    assert ray_session.get(store.stats.remote()) == {"computed": 1, "shared": 2, "stored": 1}


def test_a_failed_computation_gives_the_claim_up(ray_session) -> None:
    share = features.sharing(features.start_store())

    def broken() -> tuple[np.ndarray, np.ndarray, str]:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        share("k", broken)
    found, shared = share("k", lambda: arrays(2.0))  # the next asker computes
    assert not shared and found[0][0, 0, 0] == 2.0
    found, shared = share("k", lambda: arrays(3.0))
    assert shared and found[0][0, 0, 0] == 2.0


def test_a_claim_not_renewed_is_taken_over(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    store = features.start_store(claim_stale_s=2.0)
    assert ray_session.get(store.get_or_claim.remote("k")) == ("compute", None)  # a trial that then died
    assert ray_session.get(store.get_or_claim.remote("k")) == ("wait", None)
    monkeypatch.setattr(features, "POLL_S", 0.05)
    started = time.monotonic()
    found, shared = features.sharing(store)("k", lambda: arrays(4.0))
    assert not shared and found[0][0, 0, 0] == 4.0 and time.monotonic() - started >= 1.0


def test_the_store_keeps_the_most_recent_within_its_size(ray_session) -> None:
    store = features.start_store(max_bytes=2 * sum(a.nbytes for a in arrays(0.0)[:2]))
    share = features.sharing(store)
    for key in ("a", "b", "c"):
        share(key, lambda: arrays(0.0))
    assert ray_session.get(store.stats.remote())["stored"] == 2
    assert share("a", lambda: arrays(5.0))[1] is False  # the oldest went first


FROZEN_SEARCH = """
name="tiny",
data="{data}",
image_size_px=75,
weights="imagenet",
space=Space(arch="inception_frozen", head_units=Choice(8, 16), batch_size=16, augment=0.0, dropout=0.0,
            optimizer="adam", lr={{"adam": LogUniform(1e-3, 1e-2)}}),
budget=Budget(trials=4, max_epochs=2, grace_period_epochs=2, reduction_factor=2),
resources=Resources(workers=1, cpus_per_worker=1),
"""


@pytest.mark.slow
def test_a_search_of_frozen_trials_runs_the_backbone_once(coats: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    import torch

    from bench.cases import stand_in_imagenet_weights
    from tests.conftest import cli_env
    from trainables import data
    from trainables.hparams import HParams

    cache = data.prepare(coats, 75, 0.2, 0, tmp_path / "cache")
    hp = HParams(arch="inception_frozen", optimizer="adam", lr=1e-3, batch_size=16, augment=0.0, dropout=0.0,
                 weights="imagenet", head_units=8)
    with stand_in_imagenet_weights(data.load(cache.path), hp, torch.device("cpu"), tmp_path / "torch"):
        pass  # the file stays: the search's workers load it from TORCH_HOME
    experiment = write_experiment(tmp_path, FROZEN_SEARCH.format(data=coats))
    proc = subprocess.run([sys.executable, "-m", "search.run", str(experiment), "--out", str(tmp_path / "out"),
                           "--concurrency", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env={**cli_env(), "TORCH_HOME": str(tmp_path / "torch")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = pd.read_csv(tmp_path / "out" / "report.csv")
    assert len(report) == 4 and report["features_s"].notna().all()
    # one trial ran the backbone; the others took its features (a trial that started while it
    # ran waited for them: its features_s is that wait)
    assert report["features_shared"].tolist().count(0) == 1, report[["trial_id", "features_s", "features_shared"]]
    assert "computed by 1 trial(s)" in (tmp_path / "out" / "report.md").read_text()
    assert "reused by 3" in (tmp_path / "out" / "report.md").read_text()
