"""A trial whose Ray Train worker is killed mid-run resumes from its last checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd

from search.run import main
from tests.conftest import leftovers, write_experiment

LONG_TRIAL = """
name="faults",
data="{data}",
image_size_px=32,
weights="none",
space=Space(arch="small_cnn", cnn_width=8, cnn_depth=2, batch_size=16, augment=0.0, dropout=0.0,
            optimizer="adam", lr={{"adam": 1e-3}}),
budget=Budget(trials=1, max_epochs=40, grace_period_epochs=40, reduction_factor=2),
resources=Resources(workers=1, cpus_per_worker=1),
"""


def kill_worker_after_two_results(out: Path, done: threading.Event, killed: list[int]) -> None:
    """SIGKILL the trial's worker once Tune holds two results: by then Train has registered
    a checkpoint (one it has not yet taken over dies with the worker)."""
    from ray._private import state

    deadline = time.monotonic() + 300
    while not done.is_set() and time.monotonic() < deadline:
        results = list(out.glob("tune/run_trial_*/result.json"))
        if results and len(results[0].read_text().splitlines()) >= 2:
            workers = [a for a in state.actors().values()
                       if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]
            for worker in workers:
                os.kill(worker["Pid"], signal.SIGKILL)
                killed.append(worker["Pid"])
            if workers:
                return
        time.sleep(0.02)


def test_killed_worker_resumes_from_its_last_checkpoint(ray_session, coats: Path, tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, LONG_TRIAL.format(data=coats))
    out = tmp_path / "out"
    done, killed = threading.Event(), []
    killer = threading.Thread(target=kill_worker_after_two_results, args=(out, done, killed))
    killer.start()
    try:
        code = main([str(experiment), "--out", str(out)])
    finally:
        done.set()
        killer.join()
    assert code == 0 and killed
    report = pd.read_csv(out / "report.csv")
    assert report["status"].tolist() == ["completed"] and report["epochs"].iloc[0] == 40
    history = pd.read_json(next(out.glob("tune/run_trial_*/result.json")), lines=True)
    epochs = history["epoch"].tolist()
    assert epochs[0] == 1 and 1 not in epochs[1:]  # resumed, not started over
    assert epochs[-1] == 40
    assert history["startup_s"].nunique() == 2  # a second worker started after the kill


class InjectedFault(RuntimeError):
    """The failure `fail_the_recipe_at_epoch_2` raises."""


def fail_the_recipe_at_epoch_2(hp, metrics: dict) -> None:
    """An epoch hook handed to the search: the recipe trial (lr 0.02) raises when it reaches epoch 2."""
    if hp.lr == 0.02 and metrics["epoch"] == 2:
        raise InjectedFault("injected fault at epoch 2")


def test_a_trial_that_raises_ends_as_error_and_the_search_goes_on(ray_session, coats: Path, tmp_path: Path) -> None:
    from tests.conftest import tiny_body

    body = tiny_body(coats, trials=3, epochs=2) + 'recipes=({"lr": 0.02},),\n'
    experiment = write_experiment(tmp_path, body)
    out = tmp_path / "out"
    assert main([str(experiment), "--out", str(out)], on_epoch=fail_the_recipe_at_epoch_2) == 0
    report = pd.read_csv(out / "report.csv")
    assert len(report) == 3
    failed = report[report["recipe"] == 1].iloc[0]
    assert failed["status"] == "error" and "injected fault at epoch 2" in failed["error"]
    # its first epoch is kept: the row holds what that epoch reported
    history = pd.read_parquet(out / "history.parquet")
    first = history[(history["trial_id"] == failed["trial_id"]) & (history["epoch"] == 1)].iloc[0]
    assert failed["epochs"] == 1 and failed["val_acc"] == first["val_acc"] and 0 <= first["val_acc"] <= 1
    others = report[report["recipe"] != 1]
    assert (others["status"] != "error").all() and others["epochs"].min() >= 1
    assert (out / "best" / "meta.json").is_file()
    # every attempt's workers were freed: Train's retries make a new placement group each
    groups, actors = leftovers(ray_session)
    assert groups == [] and actors == []
