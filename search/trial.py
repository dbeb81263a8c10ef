"""One Tune trial = one Ray Train job.

`run_trial` is the Tune function trainable (the trial's driver): it builds a `TorchTrainer`
whose workers run `train_worker`, a thin Ray wrapper around `trainables.loop.fit` that turns
each epoch's report into `ray.train.report` with a checkpoint, and resumes from the last
checkpoint when Ray restarts the job. Rank 0's metrics reach Tune through
`TuneReportCallback`, the checkpoint's path with them.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from search.files import STATE_FILE
from search.space import hparams
from trainables.hparams import HParams

BEST_STATE_KEY = "best_objective"
# Called in the worker after every epoch, before its report: a test hands one in to make a
# trial fail at a chosen moment (the service itself passes none).
EpochHook = Callable[[HParams, dict[str, float]], None]


def best_metric(objective: str) -> str:
    """The name of the running best of `objective` that each report carries (Optuna learns from it)."""
    return f"best_{objective}"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares, besides its sampled hyperparameters."""

    data: Any  # ray.ObjectRef of the trainables.data.ArrayData every trial shares
    storage_path: str
    weights: str
    max_epochs: int
    seed: int
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    objective: str
    mode: str
    study_name: str
    keep_checkpoints: int = 2
    max_failures: int = 2
    on_epoch: EpochHook | None = None


def finished_marker(study_name: str, trial_id: str) -> str:
    """The GCS key that says: the study finished this trial before the search was resumed."""
    return f"finished-before-resume/{study_name}/{trial_id}"


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: load the cached arrays, resume if a checkpoint exists, run `fit`."""
    import ray.train
    import ray.train.torch
    import torch

    from search.reaper import register_placement_group
    from trainables.loop import fit
    from trainables.state import save_checkpoint

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    data = ray.get(config["data"])
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    register_placement_group(config["trial_id"])  # so the driver can free it (search/reaper.py)
    extra = {"startup_s": time.time() - config["trial_started_at"]}
    objective, better = config["objective"], max if config["mode"] == "max" else min
    # Optuna is told a trial's best epoch, as the report ranks it, not its last (ASHA may stop
    # a trial just after a dip); kept in the checkpoint so a resumed trial remembers it.
    best = {"value": state.get(BEST_STATE_KEY) if state else None}

    def report(metrics: dict[str, float], run_state: dict[str, Any]) -> None:
        if config["on_epoch"] is not None:
            config["on_epoch"](config["hparams"], metrics)
        value = metrics[objective]
        best["value"] = value if best["value"] is None else better(best["value"], value)
        run_state = {**run_state, BEST_STATE_KEY: best["value"]}
        metrics = {**metrics, **extra, best_metric(objective): best["value"]}
        if rank != 0:  # report is a barrier: every rank calls it, only rank 0 saves
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(run_state, os.path.join(folder, STATE_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"epoch-{metrics['epoch']:04d}")

    fit(config["hparams"], data, config["max_epochs"], report, state=state,
        device=ray.train.torch.get_device(), seed=config["seed"], rank=rank, world_size=world_size,
        prepare_model=ray.train.torch.prepare_model)


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """Tune function trainable: run this trial's Ray Train job to the end (or until stopped)."""
    from ray import train, tune
    from ray.experimental import internal_kv
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from search.reaper import KV_NAMESPACE

    trial_id = tune.get_context().get_trial_id()
    if internal_kv._internal_kv_exists(finished_marker(settings.study_name, trial_id), namespace=KV_NAMESPACE):
        return  # its outcome is in the study already (search/searcher.py): nothing to run or report
    # Not asdict(): it would deep-copy the data's ObjectRef.
    loop_config = {**{f.name: getattr(settings, f.name) for f in fields(settings)},
                   "hparams": hparams(config, settings.weights), "trial_started_at": time.time(), "trial_id": trial_id}
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                                           resources_per_worker=resources),
        run_config=train.RunConfig(
            # A fixed name per trial, so a restored trial finds its own checkpoints.
            name=f"train-{trial_id}",
            storage_path=settings.storage_path,
            callbacks=[TuneReportCallback()],
            checkpoint_config=train.CheckpointConfig(
                num_to_keep=settings.keep_checkpoints, checkpoint_score_attribute=settings.objective,
                checkpoint_score_order=settings.mode),
            failure_config=train.FailureConfig(max_failures=settings.max_failures),
        ),
    )
    trainer.fit()
