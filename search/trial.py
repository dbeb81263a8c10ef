"""One Tune trial = one Ray Train job.

`run_trial` is the Tune function trainable (the trial's driver): it builds a `TorchTrainer`
whose workers run `train_worker`, a thin Ray wrapper around `trainables.loop.fit` that turns
each epoch's report into `ray.train.report` with a checkpoint, and resumes from the last
checkpoint when Ray restarts the job. The job's Train controller runs in the trial's driver,
and rank 0's metrics reach Tune from there, the checkpoint's path with them (`_lean`).

A failed run is retried by `run_trial`, not by Ray Train (which would retry every failure
alike): from the last checkpoint after a dead worker, with half the batch size after an
out-of-memory, never after an exception of the training code (`search.failures`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from search.failures import Failure, classify
from search.files import STATE_FILE
from search.space import hparams
from trainables.hparams import HParams

logger = logging.getLogger(__name__)
BEST_STATE_KEY = "best_objective"
# Why a trial trains with another batch size than its config's (an out-of-memory retry): kept
# in the checkpoint's loop state, so a resumed trial keeps it, and reported with every epoch.
NOTE_KEY = "note"
# How Tune hears of a reported checkpoint (ray.tune.integration.ray_train; not imported: the worker needs no Tune).
CHECKPOINT_PATH_KEY = "checkpoint_path"
# The seconds a trial's worker spent in its earlier reports (writing checkpoints, handing
# results over to Ray), sent with every report: the cost of a report, measured where it is paid.
REPORT_S_KEY = "report_s"
BATCH_SIZE_KEY = "batch_size"  # the batch size a checkpoint was trained with (`trainables.loop.fit`)
KEEP_CHECKPOINTS = 2  # the best ones by the objective; Ray Train keeps the latest besides
# Ray Train's record of a run's registered checkpoints, in the run's folder (Ray 2.60).
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"
CHECKPOINT_PREFIX = "epoch-"  # a checkpoint's folder: epoch-0001, ...
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
    features: Any = None  # the search's `search.features.FeatureStore`, where frozen features are shared
    data_key: str = ""  # the data's fingerprint: part of what names shared features
    keep_checkpoints: int = KEEP_CHECKPOINTS
    max_failures: int = 2  # retries after a dead worker or node (search/failures.py), each from the last checkpoint
    on_epoch: EpochHook | None = None


def train_run_name(trial_id: str) -> str:
    """The folder of a trial's checkpoints under OUT/train: a fixed name, so a restored trial finds them."""
    return f"train-{trial_id}"


def remove_unregistered_checkpoints(train_dir: Path) -> list[Path]:
    """Remove the checkpoint folders Ray Train never registered (a write cut short by a full disk,
    or a kill between the write and its report); returns them. A run whose record of checkpoints
    is itself unreadable keeps all of its folders: which of them count is unknown."""
    removed = []
    for run in sorted(train_dir.glob(train_run_name("*"))):
        try:
            snapshot = json.loads((run / CHECKPOINT_SNAPSHOT).read_text())
            results = [*snapshot["checkpoint_results"], snapshot.get("latest_checkpoint_result") or {}]
            registered = {result.get("checkpoint_dir_name") for result in results}
        except FileNotFoundError:
            registered = set()  # Train writes it with the first checkpoint it registers
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        for folder in sorted(run.glob(f"{CHECKPOINT_PREFIX}*")):
            if folder.name not in registered:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def finished_marker(study_name: str, trial_id: str) -> str:
    """The GCS key that says: the study finished this trial before the search was resumed."""
    return f"finished-before-resume/{study_name}/{trial_id}"


def full_disk_marker(study_name: str, trial_id: str) -> str:
    """The GCS key that says: this trial's checkpoint found the disk full. Its value is the
    system's words for it."""
    return f"disk-full/{study_name}/{trial_id}"


@contextlib.contextmanager
def _full_disk_marked(study_name: str, trial_id: str) -> Iterator[None]:
    """Tell the driver when what runs inside failed because the disk is full: the trial did not
    fail, the disk did (see `full_disk_marker`)."""
    try:
        yield
    except Exception as error:
        from ray.experimental import internal_kv

        from search.disk import full_reason
        from search.reaper import KV_NAMESPACE

        reason = full_reason(error)
        if reason:
            internal_kv._internal_kv_put(full_disk_marker(study_name, trial_id), reason.encode(),
                                         namespace=KV_NAMESPACE)
        raise


def trial_batch(batch_size: int, state: dict[str, Any] | None, halve: bool) -> tuple[int, str]:
    """The batch size an attempt trains with, and the note that says why it is not `batch_size`
    (the config's), or "". A checkpoint's batch size and note win: a resumed trial keeps its
    halved batch. `halve` (after an out-of-memory) halves it once: a checkpoint trained after
    the halving (it holds the note) is not halved again.
    """
    note = ""
    if state is not None:
        batch_size, note = int(state.get(BATCH_SIZE_KEY, batch_size)), state.get(NOTE_KEY, "")
    if halve and not note:
        halved = max(1, batch_size // 2)
        note = f"out of memory at batch_size {batch_size}: retried with {halved}"
        batch_size = halved
    return batch_size, note


def _quiet_reports() -> None:
    """Keep Ray Train's "Reporting training result ..." (every report, INFO) off the console.
    Its logger is named after its file, not `ray.train`, so RunConfig's LoggingConfig misses it
    (Ray 2.60, ray/train/v2/_internal/execution/context.py)."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray: its own logging, nothing of ours to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: load the cached arrays, resume if a checkpoint exists, run `fit`."""
    import pyarrow.fs
    import ray.train
    import ray.train.torch
    import torch

    from search import workerpool
    from search.reaper import register_placement_group
    from trainables.loop import LAST_METRICS, Stopped, fit
    from trainables.state import save_checkpoint

    workerpool.start_run()
    _quiet_reports()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # as TorchTrainer does; a one-worker trial runs without it (_trainer_class)
        torch.cuda.set_device(device)
    data = ray.get(config["data"])
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    if not config["workers_kept"]:  # a kept group is its driver's: it must outlive this trial
        register_placement_group(config["trial_id"])  # so the driver can free it (search/reaper.py)
    batch_size, note = trial_batch(config["hparams"].batch_size, state, config["halve_batch"])
    hp = config["hparams"].replace(batch_size=batch_size)
    # The note goes with every epoch, "" included: Tune's progress.csv keeps the first result's columns.
    extra = {"startup_s": time.time() - config["trial_started_at"], NOTE_KEY: note, BATCH_SIZE_KEY: batch_size}
    objective, better = config["objective"], max if config["mode"] == "max" else min
    storage = context.get_storage()
    direct = isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
    if direct and rank == 0:
        # Ray Train's check that this node sees OUT (a folder on the head alone is not shared),
        # which its own copy would make before every checkpoint (Ray 2.60, private).
        storage._check_validation_file()
    # Optuna is told a trial's best epoch, as the report ranks it, not its last (ASHA may stop
    # a trial just after a dip); kept in the checkpoint so a resumed trial remembers it.
    best = {"value": state.get(BEST_STATE_KEY) if state else None}
    if state is not None and state["epoch"] >= config["max_epochs"] and LAST_METRICS in state:
        # Trained to its last epoch before the search's driver was lost, whose Tune never heard
        # that epoch's report: said again, or the trial would end with no result at all (its
        # study trial pruned, without a value). Its checkpoint is in OUT already: named, not sent again.
        ray.train.report({**state[LAST_METRICS], **extra, best_metric(objective): best["value"],
                          CHECKPOINT_PATH_KEY: checkpoint.path})
        return

    reporting = {REPORT_S_KEY: 0.0}
    # The last checkpoint handed to Ray's upload thread, done when written: one at a time, so a
    # disk slower than the epochs holds one snapshot in memory, not one per epoch.
    writing: dict[str, threading.Event] = {}

    def report(metrics: dict[str, float], run_state: dict[str, Any]) -> None:
        if config["on_epoch"] is not None:
            config["on_epoch"](hp, metrics)
        started = time.perf_counter()
        try:
            hand_over(metrics, run_state)
        finally:
            reporting[REPORT_S_KEY] += time.perf_counter() - started

    def hand_over(metrics: dict[str, float], run_state: dict[str, Any]) -> None:
        value = metrics[objective]
        best["value"] = value if best["value"] is None else better(best["value"], value)
        run_state = {**run_state, BEST_STATE_KEY: best["value"], NOTE_KEY: note}
        metrics = {**metrics, **extra, **reporting, best_metric(objective): best["value"]}
        if rank != 0:  # report is a barrier: every rank calls it, only rank 0 saves
            ray.train.report(metrics)
            return
        name = f"{CHECKPOINT_PREFIX}{metrics['epoch']:04d}"
        folder = storage.build_checkpoint_path_from_name(name)
        snapshot = io.BytesIO()  # the state as it is now: the next epoch trains while it is written
        save_checkpoint(run_state, snapshot)
        if "last" in writing:
            writing["last"].wait()
        written = threading.Event()

        def write(checkpoint: Any, _name: str) -> Any:
            try:
                with _full_disk_marked(config["study_name"], config["trial_id"]):
                    write_checkpoint(storage.storage_filesystem, folder, snapshot.getbuffer(), direct)
            finally:
                written.set()
            return checkpoint

        # Written once, where Ray Train keeps it, in Ray's upload thread: Tune hears of the epoch
        # once its checkpoint is whole, and the worker does not wait for the disk (an unfrozen
        # Inception's 131 MB took 1.2-1.4 s an epoch at this machine's disk speed).
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint(folder, filesystem=storage.storage_filesystem),
                         checkpoint_dir_name=name, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=False, checkpoint_upload_fn=write)
        writing["last"] = written  # not when report raised: then no write was handed over

    share = None
    if config["features"] is not None:
        from search.features import sharing

        share = sharing(config["features"])
    try:
        fit(hp, data, config["max_epochs"], report, state=state,
            device=device, seed=config["seed"], rank=rank, world_size=world_size,
            prepare_model=ray.train.torch.prepare_model, share_features=share, data_key=config["data_key"] or None,
            stop=workerpool.STOP)
    except Stopped:
        return  # its driver ended the run (search/workerpool.py): not a failure, nothing to log
    except BaseException:
        # The epoch before a failure reaches Tune with its checkpoint, as when checkpoints were
        # written in line: a retry resumes from it. Ray flushes its upload thread only after a
        # train function that returned (Ray 2.60, worker_group/worker.py, private).
        from ray.train.v2._internal.execution.context import get_train_context

        get_train_context().checkpoint_upload_threadpool.shutdown(wait=True)
        raise


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """Tune function trainable: run this trial's Ray Train job to the end (or until stopped)."""
    from ray import tune
    from ray.experimental import internal_kv

    from search import workerpool
    from search.reaper import KV_NAMESPACE

    trial_id = tune.get_context().get_trial_id()
    if internal_kv._internal_kv_exists(finished_marker(settings.study_name, trial_id), namespace=KV_NAMESPACE):
        return  # its outcome is in the study already (search/searcher.py): nothing to run or report
    internal_kv._internal_kv_del(full_disk_marker(settings.study_name, trial_id), namespace=KV_NAMESPACE)
    # Not asdict(): it would deep-copy the data's ObjectRef.
    loop_config = {**{f.name: getattr(settings, f.name) for f in fields(settings)},
                   "hparams": hparams(config, settings.weights), "trial_started_at": time.time(), "trial_id": trial_id,
                   "halve_batch": False, "workers_kept": workerpool.keeps(settings.workers)}
    failures = 0
    while True:
        try:
            _trainer(loop_config, settings, trial_id).fit()
            return
        except Exception as err:
            kind = classify(err)
            full_disk = internal_kv._internal_kv_exists(full_disk_marker(settings.study_name, trial_id),
                                                        namespace=KV_NAMESPACE)
            if full_disk or kind is Failure.ERROR:
                raise  # the training code's own error: it would only happen again
            if kind is Failure.OUT_OF_MEMORY:
                if loop_config["halve_batch"]:
                    raise TrialOutOfMemory("out of memory again after halving the batch size once: choose smaller "
                                           "batch_size values in the experiment's Space, or give each worker more "
                                           "memory") from err
                loop_config["halve_batch"] = True
            elif failures < settings.max_failures:
                failures += 1
            else:
                raise
            how = " with half the batch size" if kind is Failure.OUT_OF_MEMORY else ""
            logger.warning("trial %s: %s (%s); retrying from its last checkpoint%s", trial_id, kind.value,
                           (str(err).strip().splitlines() or [""])[-1], how)


# Train V2's default callbacks that start a process of their own for every run and that a
# trial of ours does not need: the placement-group cleaner (a detached actor that polls the
# dashboard's State API; search/reaper.py frees a stopped trial's group instead, with or
# without the dashboard) and the datasets callback (a DatasetManager actor, though a trial
# passes no Ray Dataset). On 2 cores each such process costs a trial ~1 s of start-up.
UNNEEDED_TRAIN_CALLBACKS = ("PlacementGroupCleanerCallback", "DatasetsCallback")


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


def _lean(trainer_class: type) -> type:
    """`trainer_class` without `UNNEEDED_TRAIN_CALLBACKS`, and with its controller in the calling
    process (Ray 2.60's private `_create_default_callbacks` and `_initialize_and_run_controller`,
    which pyproject.toml pins), which keeps one synchronisation actor for all its runs
    (`search.syncpool`). On 2 cores the median trial start went from 8.7 s to 4.4 s and the
    hand-over at Tune from 0.15 s to 0.06 s an epoch (`python -m bench --cases overhead`)."""

    class LeanTrainer(trainer_class):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            return [callback for callback in super()._create_default_callbacks()
                    if type(callback).__name__ not in UNNEEDED_TRAIN_CALLBACKS]

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            # The controller in the trial's driver, not in an actor of its own: Ray Train runs it
            # as an actor so that a plain driver script survives it (Ray 2.60,
            # api/data_parallel_trainer.py); a trial's driver is already an actor, on the head.
            import asyncio

            from ray.train.v2._internal.execution.controller import TrainController

            from search import syncpool, workerpool

            syncpool.install()  # one synchronisation actor for all of this driver's trials
            workerpool.install()  # and one worker process, when a trial has one worker
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

    LeanTrainer.__name__ = LeanTrainer.__qualname__ = trainer_class.__name__
    return LeanTrainer


def _tune_report() -> Any:
    """The Ray Train callback that hands rank 0's metrics of every report to Tune, with the
    checkpoint's path. Ray's own (ray.tune.integration.ray_train.TuneReportCallback) passes them
    through a queue actor, one more process per trial, because its controller runs in another
    process; ours runs in the trial's driver (`_lean`), whose thread reports to Tune directly."""
    from ray import tune
    from ray.train.v2.api.callback import UserCallback

    class TuneReport(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            result = dict(metrics[0])
            if checkpoint:
                result[CHECKPOINT_PATH_KEY] = checkpoint.path
            tune.report(result)

    return TuneReport()


def write_checkpoint(filesystem: Any, folder: str, data: memoryview, local: bool) -> None:
    """Write a serialised checkpoint as `folder`/STATE_FILE of `filesystem` (pyarrow's). A local
    folder is written by Python, whose OSError names a full disk as such."""
    if local:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, STATE_FILE), "wb") as file:
            file.write(data)
        return
    filesystem.create_dir(folder)
    with filesystem.open_output_stream(f"{folder}/{STATE_FILE}") as stream:
        stream.write(data)


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of memory again with half its batch size."""


def _trainer(loop_config: dict[str, Any], settings: TrialSettings, trial_id: str) -> Any:
    """The trial's Ray Train trainer; every attempt gets the same run name and storage, so it
    resumes from the checkpoints the earlier attempts registered."""
    from ray import train

    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    return _lean(_trainer_class(settings.workers))(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                                           resources_per_worker=resources),
        run_config=train.RunConfig(
            name=train_run_name(trial_id),
            storage_path=settings.storage_path,
            callbacks=[_tune_report()],
            checkpoint_config=train.CheckpointConfig(
                num_to_keep=settings.keep_checkpoints, checkpoint_score_attribute=settings.objective,
                checkpoint_score_order=settings.mode),
            # run_trial retries, by cause; Ray Train would retry a diverged loss as a dead worker.
            failure_config=train.FailureConfig(max_failures=0),
            # Train's INFO lines (every report, every worker group started, and a page of
            # "Training failed" for each trial ASHA stops) would bury Tune's status table; Train's
            # own log files under the Ray session keep them all.
            logging_config=train.LoggingConfig(log_level="WARNING"),
        ),
    )
