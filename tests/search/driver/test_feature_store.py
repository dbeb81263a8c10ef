"""The search's store of frozen features on Ray: one computation per key, waiters get it,
a claim given up by a stopped trial is taken over, and the store keeps to its size."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.driver import feature_store as features
from tests.conftest import write_experiment


def part(fill: float, n: int = 4) -> tuple[np.ndarray, str]:
    return np.full((n, 8), fill, np.float32), "float32"


def test_the_runs_waiting_for_one_pass_compute_its_parts_side_by_side_each_part_once(ray_session) -> None:
    store = features.start_store()
    share = features.sharing(store)
    calls: list[tuple[str, int]] = []
    results: dict[str, tuple[list, int]] = {}

    def run(name: str) -> None:
        def compute(index: int) -> tuple[np.ndarray, str]:
            calls.append((name, index))
            time.sleep(0.5)
            return part(float(index))

        results[name] = share("k", 6, compute)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(index for _, index in calls) == list(range(6))  # each part once
    assert {name for name, _ in calls} == {"a", "b", "c"}  # every waiting run helped
    assert sum(mine for _, mine in results.values()) == 6
    for parts, _ in results.values():  # everyone gets every part, in order
        assert [p[0][0, 0] for p in parts] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    stats = ray_session.get(store.stats.remote())
    assert (stats["computed"], stats["parts_computed"], stats["stored"]) == (1, 6, 1)
    again, mine = share("k", 6, lambda index: part(-1.0))  # later runs get it ready
    assert mine == 0 and again[5][0][0, 0] == 5.0


def test_a_failed_part_gives_its_claim_up(ray_session) -> None:
    share = features.sharing(features.start_store())

    def broken(index: int) -> tuple[np.ndarray, str]:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        share("k", 2, broken)
    found, mine = share("k", 2, lambda index: part(2.0))  # the next asker computes both
    assert mine == 2 and found[0][0][0, 0] == 2.0
    found, mine = share("k", 2, lambda index: part(3.0))
    assert mine == 0 and found[1][0][0, 0] == 2.0


def test_a_claim_not_renewed_is_taken_over(ray_session, monkeypatch: pytest.MonkeyPatch) -> None:
    store = features.start_store(claim_stale_s=2.0)
    assert ray_session.get(store.claim.remote("k", 1)) == ("work", 0)  # a trial that then died
    assert ray_session.get(store.claim.remote("k", 1)) == ("wait", None)
    monkeypatch.setattr(features, "POLL_S", 0.05)
    started = time.monotonic()
    found, mine = features.sharing(store)("k", 1, lambda index: part(4.0))
    assert mine == 1 and found[0][0][0, 0] == 4.0 and time.monotonic() - started >= 1.0


def test_the_store_keeps_the_most_recent_within_its_size(ray_session) -> None:
    store = features.start_store(max_bytes=2 * part(0.0)[0].nbytes)
    share = features.sharing(store)
    for key in ("a", "b", "c"):
        share(key, 1, lambda index: part(0.0))
    assert ray_session.get(store.stats.remote())["stored"] == 2
    assert share("a", 1, lambda index: part(5.0))[1] == 1  # the oldest went first
    big = features.start_store(max_bytes=1)
    share = features.sharing(big)
    share("x", 2, lambda index: part(0.0))
    assert share("x", 2, lambda index: part(1.0))[1] == 0  # the newest stays, whatever its size


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
    # The backbone ran once over the images: the two trials that started together shared its parts
    # out (each computed a share), the later ones took the features.
    shares = [json.loads(path.read_text().splitlines()[0])["features_parts"]
              for path in (tmp_path / "out").glob("tune/run_trial_*/result.json")]
    assert sum(shares) == pytest.approx(1.0), shares  # each part once, whoever computed it
    computed = report["features_shared"].tolist().count(0)
    assert computed == sum(share > 0 for share in shares) and 1 <= computed <= 2
    assert f"computed by {computed} trial(s)" in (tmp_path / "out" / "report.md").read_text()
    assert f"reused by {4 - computed}" in (tmp_path / "out" / "report.md").read_text()
