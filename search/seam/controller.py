"""A trial's Ray Train run on the fast path: its controller in the trial's driver, Train's
callbacks a trial does not need left out, and its worker's checkpoints written in place.

Ray 2.60's private Train internals (verified: `search.seam.versions.VERIFIED_RAY`; contracts in
`tests/search/seam/test_contracts.py`): `DataParallelTrainer._create_default_callbacks` and
`._initialize_and_run_controller`, `TrainController` (its `run`, `get_worker_group`,
`_shutdown_worker_group`), `get_train_context().checkpoint_upload_threadpool`,
`StorageContext` (`storage_filesystem`, `build_checkpoint_path_from_name`, `_check_validation_file`),
and the logger of `execution/context.py`.
"""

from __future__ import annotations

import logging
from typing import Any

# Train V2's default callbacks that start a process of their own for every run and that a
# trial of ours does not need: the placement-group cleaner (a detached actor that polls the
# dashboard's State API; search/driver/placement_groups.py frees a stopped trial's group instead, with or
# without the dashboard) and the datasets callback (a DatasetManager actor, though a trial
# passes no Ray Dataset). On 2 cores each such process costs a trial ~1 s of start-up.
UNNEEDED_TRAIN_CALLBACKS = ("PlacementGroupCleanerCallback", "DatasetsCallback")
CHECKPOINT_PATH_KEY = "checkpoint_path"  # how Ray's TuneReportCallback names a report's checkpoint, as ours does


def _trainer_class(workers: int) -> type:
    """TorchTrainer, whose torch process group DDP needs; a one-worker trial has no group to form
    and runs as Ray Train's DataParallelTrainer, TorchTrainer's base: the same Ray Train job
    (controller, worker, reports, checkpoints, retries) without torch in the trial's driver and
    Train's controller, which import it only to unpickle TorchConfig (~2.5 s of a trial's
    start-up on 2 cores: `python -m bench --cases startup`)."""
    if workers > 1:
        from ray.train.torch import TorchTrainer

        return TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return DataParallelTrainer


def fast_trainer(workers: int) -> type:
    """The trainer class of a trial with `workers` workers: without `UNNEEDED_TRAIN_CALLBACKS`,
    and with its controller in the calling process, which keeps one synchronisation actor and
    (one worker) one worker for all its runs (`kept_sync`, `kept_workers`). On 2 cores the
    median trial start went from 8.7 s to 4.4 s and the hand-over at Tune from 0.15 s to 0.06 s
    an epoch (`python -m bench --cases overhead`)."""
    base = _trainer_class(workers)

    class LeanTrainer(base):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            return [callback for callback in super()._create_default_callbacks()
                    if type(callback).__name__ not in UNNEEDED_TRAIN_CALLBACKS]

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            # Ray Train runs the controller as an actor so that a plain driver script survives it
            # (api/data_parallel_trainer.py); a trial's driver is already an actor, on the head.
            import asyncio

            from ray.train.v2._internal.execution.controller import TrainController

            from search.seam import kept_sync, kept_workers

            kept_sync.install()
            kept_workers.install()
            controller = TrainController(**controller_init_kwargs)
            try:
                asyncio.run(controller.run())
            except BaseException:
                # Tune stopped the trial (ASHA): its report raised SystemExit in this thread. The
                # workers go now, not with this process, which Tune reuses for its next trial.
                if controller.get_worker_group() is not None:
                    controller._shutdown_worker_group()
                raise
            return controller.get_result()

    LeanTrainer.__name__ = LeanTrainer.__qualname__ = base.__name__
    return LeanTrainer


def tune_report() -> Any:
    """The Ray Train callback that hands rank 0's metrics of every report to Tune, with the
    checkpoint's path. Ray's own (ray.tune.integration.ray_train.TuneReportCallback) passes them
    through a queue actor, one more process per trial, because its controller runs in another
    process; on the fast path it runs in the trial's driver, whose thread reports to Tune directly."""
    from ray import tune
    from ray.train import UserCallback

    class TuneReport(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            result = dict(metrics[0])
            if checkpoint:
                result[CHECKPOINT_PATH_KEY] = checkpoint.path
            tune.report(result)

    return TuneReport()


def quiet_reports() -> None:
    """Keep Ray Train's "Reporting training result ..." (every report, INFO) off the console.
    Its logger is named after its file, not `ray.train`, so RunConfig's LoggingConfig misses it.
    Only a logger's level is set: harmless on a Ray whose module moved."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


class RunStorage:
    """Where this worker's Train run keeps its checkpoints (Ray Train's `StorageContext` of the
    run, from `TrainContext.get_storage()`): its filesystem, and each checkpoint's folder there."""

    def __init__(self) -> None:
        import pyarrow.fs
        import ray.train

        self._storage = ray.train.get_context().get_storage()
        self.filesystem = self._storage.storage_filesystem  # pyarrow's
        self.local = isinstance(self.filesystem, pyarrow.fs.LocalFileSystem)

    def folder_for(self, name: str) -> str:
        """The folder of the checkpoint `name` (`checkpoint_dir_name`) in the run's storage."""
        return self._storage.build_checkpoint_path_from_name(name)

    def check_visible(self) -> None:
        """Ray Train's check that this node sees the run's storage (a folder on the head alone is
        not shared), which its own upload makes before every checkpoint and a write of ours skips."""
        self._storage._check_validation_file()


def flush_checkpoint_writes() -> None:
    """Wait for the checkpoint writes handed to Ray's upload thread. Ray flushes it only after a
    train function that returned (worker_group/worker.py); after a failure the last epoch's
    checkpoint must still reach Tune, so a retry resumes from it."""
    from ray.train.v2._internal.execution.context import get_train_context

    get_train_context().checkpoint_upload_threadpool.shutdown(wait=True)
