"""Failures by cause: a trial whose Ray Train worker is killed mid-run resumes from its last
checkpoint; one whose training raises ends at once; one out of memory goes on with half its batch."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path

import pandas as pd
import torch

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


def die_once_tune_holds_two_results(out: Path, marker: Path, hp, metrics: dict) -> None:
    """An epoch hook handed to the search: the trial's worker SIGKILLs itself once, before its
    report of epoch 3 or later, as soon as Tune holds two results: by then Train has registered
    a checkpoint (one it has not yet taken over dies with the worker). From inside the worker, so
    the kill cannot miss it, however fast the trial runs (a killer polling the actor list from
    outside found it too late about one run in three)."""
    if metrics["epoch"] < 3 or marker.exists():
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        results = list(out.glob("tune/run_trial_*/result.json"))
        if results and len(results[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_resumes_from_its_last_checkpoint(ray_session, coats: Path, tmp_path: Path) -> None:
    experiment = write_experiment(tmp_path, LONG_TRIAL.format(data=coats))
    out, marker = tmp_path / "out", tmp_path / "killed.pid"
    hook = functools.partial(die_once_tune_holds_two_results, out, marker)
    assert main([str(experiment), "--out", str(out)], on_epoch=hook) == 0
    assert marker.read_text().isdigit()  # the worker was killed
    report = pd.read_csv(out / "report.csv")
    assert report["status"].tolist() == ["completed"] and report["epochs"].iloc[0] == 40
    history = pd.read_json(next(out.glob("tune/run_trial_*/result.json")), lines=True)
    epochs = history["epoch"].tolist()
    assert epochs[0] == 1 and 1 not in epochs[1:]  # resumed, not started over
    assert epochs[-1] == 40
    assert history["startup_s"].nunique() == 2  # a second worker started after the kill


DIVERGED = "training loss became nan in epoch 2 (lr 0.02): diverged"


def diverge_the_recipe_at_epoch_2(attempts: Path, hp, metrics: dict) -> None:
    """An epoch hook handed to the search: the recipe trial (lr 0.02) diverges as `fit` says it
    when it reaches epoch 2; every epoch it runs is a line of `attempts`."""
    if hp.lr == 0.02:
        with open(attempts, "a") as file:
            file.write(f"{metrics['epoch']}\n")
        if metrics["epoch"] == 2:
            raise FloatingPointError(DIVERGED)


def test_a_trial_that_diverges_ends_as_error_at_once_and_the_search_goes_on(ray_session, coats: Path,
                                                                            tmp_path: Path) -> None:
    from tests.conftest import tiny_body

    body = tiny_body(coats, trials=3, epochs=2) + 'recipes=({"lr": 0.02},),\n'
    experiment = write_experiment(tmp_path, body)
    out = tmp_path / "out"
    attempts = tmp_path / "attempts.txt"
    hook = functools.partial(diverge_the_recipe_at_epoch_2, attempts)
    assert main([str(experiment), "--out", str(out)], on_epoch=hook) == 0
    report = pd.read_csv(out / "report.csv")
    assert len(report) == 3
    failed = report[report["recipe"] == 1].iloc[0]
    assert failed["status"] == "error" and failed["error"].endswith(DIVERGED), failed["error"]
    # one attempt: a diverged loss is the training's own error, not retried from epoch 1's checkpoint
    assert attempts.read_text().split() == ["1", "2"]
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


OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"


def out_of_memory_at_epoch_2(hp, metrics: dict) -> None:
    """An epoch hook: the GPU runs out of memory in epoch 2 while the batch is the config's (16)."""
    if hp.batch_size == 16 and metrics["epoch"] == 2:
        raise torch.OutOfMemoryError(OOM)


def test_an_out_of_memory_is_retried_once_with_half_the_batch_and_noted(ray_session, coats: Path,
                                                                       tmp_path: Path) -> None:
    from tests.conftest import tiny_body

    body = tiny_body(coats, trials=1, epochs=3).replace("grace_period_epochs=1", "grace_period_epochs=3") \
        + 'checkpoints="all",\n'  # every epoch's checkpoint stays: the test reads epoch 3's
    experiment = write_experiment(tmp_path, body)
    out = tmp_path / "out"
    assert main([str(experiment), "--out", str(out)], on_epoch=out_of_memory_at_epoch_2) == 0
    note = "out of memory at batch_size 16: retried with 8"
    report = pd.read_csv(out / "report.csv")
    assert report[["status", "epochs", "note", "param.batch_size"]].values.tolist() == [["completed", 3, note, 16]]
    history = pd.read_json(next(out.glob("tune/run_trial_*/result.json")), lines=True)
    # epoch 2 ran again from epoch 1's checkpoint, with half the batch, and every epoch after it is noted
    assert history["epoch"].tolist()[-2:] == [2, 3] and 1 not in history["epoch"].tolist()[1:]
    assert history["batch_size"].tolist()[-2:] == [8, 8] and history["note"].tolist()[-2:] == [note, note]
    # the checkpoints after the retry keep the halved batch and its note: a resumed search goes on with them
    state = torch.load(next(out.glob("train/*/epoch-0003/state.pt")), weights_only=True)
    assert (state["batch_size"], state["note"]) == (8, note)
    assert pd.read_parquet(out / "history.parquet")["note"].tolist()[-1] == note


def memory_limited_after_epoch_1(hp, metrics: dict) -> None:
    """An epoch hook: after epoch 1, a worker training with the config's batch (64) may have only
    100 MB more than it holds (RLIMIT_DATA, a worker's memory limit), less than one conv layer's
    output for that batch at 160 px (~170 MB for the 51 training images): epoch 2 runs out of
    memory for real, in torch's CPU allocator. The retry is a new worker process, without the limit."""
    import resource

    if hp.batch_size == 64 and metrics["epoch"] == 1:
        status = Path("/proc/self/status").read_text().splitlines()
        used = int(next(line for line in status if line.startswith("VmData")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (used + 100 * 1024**2, resource.RLIM_INFINITY))


def test_a_real_out_of_memory_is_retried_with_half_the_batch(ray_session, coats: Path, tmp_path: Path) -> None:
    from tests.conftest import tiny_body

    body = (tiny_body(coats, trials=1, epochs=2).replace("grace_period_epochs=1", "grace_period_epochs=2")
            .replace("image_size_px=32", "image_size_px=160").replace("cnn_width=8", "cnn_width=32")
            .replace("batch_size=16", "batch_size=64"))
    out = tmp_path / "out"
    assert main([str(write_experiment(tmp_path, body)), "--out", str(out)], on_epoch=memory_limited_after_epoch_1) == 0
    report = pd.read_csv(out / "report.csv")
    note = "out of memory at batch_size 64: retried with 32"
    assert report[["status", "epochs", "note"]].values.tolist() == [["completed", 2, note]]


def rank_1_diverges_in_epoch_1(attempts: Path, hp, metrics: dict) -> None:
    """An epoch hook: rank 1 of a two-worker trial diverges in epoch 1, while rank 0 goes on to
    the report, a barrier that rank 1 never reaches; every call is a line `rank:epoch` of `attempts`."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    with open(attempts, "a") as file:
        file.write(f"{rank}:{metrics['epoch']}\n")
    if rank == 1:
        raise FloatingPointError("training loss became nan in epoch 1 (lr 0.003): diverged")


def test_a_rank_that_raises_ends_its_trial_without_leaving_the_others_waiting(ray_session, coats: Path,
                                                                              tmp_path: Path) -> None:
    from tests.search.trial.test_multiworker import TWO_WORKERS

    experiment = write_experiment(tmp_path, TWO_WORKERS.format(data=coats))
    out, attempts = tmp_path / "out", tmp_path / "attempts.txt"
    started = time.monotonic()
    assert main([str(experiment), "--out", str(out)], on_epoch=functools.partial(rank_1_diverges_in_epoch_1,
                                                                                 attempts)) == 0
    assert time.monotonic() - started < 240  # not a hang: rank 0's wait ended with rank 1's error
    report = pd.read_csv(out / "report.csv")
    assert report["status"].tolist() == ["error"] and report["error"].iloc[0].endswith("diverged")
    assert attempts.read_text().split().count("1:1") == 1
    groups, actors = leftovers(ray_session)
    assert groups == [] and actors == []
