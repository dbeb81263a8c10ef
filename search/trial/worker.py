"""A trial's Ray Train worker: `trainables.loop.fit` with each epoch's report turned into
`ray.train.report` and a checkpoint, resumed from the last checkpoint Ray Train hands it.

Checkpoints on the fast path are written once, straight where Ray Train keeps them, in Ray's
upload thread (`checkpoint_upload_fn`): Tune hears of an epoch once its checkpoint is whole and
the next epoch trains meanwhile (an unfrozen Inception's 131 MB took 1.2-1.4 s an epoch on this
machine's disk). On the plain path the worker hands Ray a local folder to copy, as Ray documents.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

from search.seam.controller import CHECKPOINT_PATH_KEY
from search.state.names import STATE_FILE
from search.trial.checkpoints import checkpoint_scratch, full_disk_marked, remove_orphaned_scratch, write_checkpoint
from search.trial.settings import (
    BATCH_SIZE_KEY,
    BEST_STATE_KEY,
    CHECKPOINT_PREFIX,
    NOTE_KEY,
    REPORT_S_KEY,
    best_metric,
    trial_batch,
)


class EpochReports:
    """What a run's reports share from epoch to epoch: the best objective so far (Optuna is told
    a trial's best epoch, as ASHA ranks it, not its last), the seconds spent reporting, and the
    checkpoint being written (one at a time: a disk slower than the epochs holds one snapshot in
    memory, not one per epoch)."""

    def __init__(self, config: dict[str, Any], rank: int, best: float | None, extra: dict[str, Any]) -> None:
        from search.seam import controller

        self.config, self.rank, self.best, self.extra = config, rank, best, extra
        self.objective = config["objective"]
        self.better = max if config["mode"] == "max" else min
        self.report_s = 0.0
        self.writing: threading.Event | None = None
        self.storage = controller.RunStorage() if config["fast_path"] else None
        if self.storage is None:  # once a run, not every epoch: what killed workers left on this machine
            remove_orphaned_scratch()

    def __call__(self, metrics: dict[str, float], run_state: dict[str, Any]) -> None:
        """`fit`'s report callback, after every epoch."""
        if self.config["on_epoch"] is not None:
            self.config["on_epoch"](self.config["hparams"], metrics)
        started = time.perf_counter()
        try:
            self._hand_over(metrics, run_state)
        finally:
            self.report_s += time.perf_counter() - started

    def _hand_over(self, metrics: dict[str, float], run_state: dict[str, Any]) -> None:
        import ray.train

        value = metrics[self.objective]
        self.best = value if self.best is None else self.better(self.best, value)
        run_state = {**run_state, BEST_STATE_KEY: self.best, NOTE_KEY: self.extra[NOTE_KEY]}
        metrics = {**metrics, **self.extra, REPORT_S_KEY: self.report_s, best_metric(self.objective): self.best}
        if self.rank != 0:  # report is a barrier: every rank calls it, only rank 0 saves
            ray.train.report(metrics)
            return
        name = f"{CHECKPOINT_PREFIX}{metrics['epoch']:04d}"
        if self.storage is None:
            self._report_through_ray(metrics, run_state, name)
        else:
            self._report_in_place(metrics, run_state, name)

    def _report_through_ray(self, metrics: dict[str, float], run_state: dict[str, Any], name: str) -> None:
        """Ray's documented way: a local folder Ray copies into the run's storage."""
        import ray.train

        from trainables.state import save_checkpoint

        with checkpoint_scratch() as folder, \
                full_disk_marked(self.config["study_name"], self.config["trial_id"]):
            with open(Path(folder) / STATE_FILE, "wb") as file:
                save_checkpoint(run_state, file)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder), checkpoint_dir_name=name)

    def _report_in_place(self, metrics: dict[str, float], run_state: dict[str, Any], name: str) -> None:
        import ray.train

        from trainables.state import save_checkpoint

        storage = self.storage
        folder = storage.folder_for(name)
        snapshot = io.BytesIO()  # the state as it is now: the next epoch trains while it is written
        save_checkpoint(run_state, snapshot)
        if self.writing is not None:
            self.writing.wait()
        written = threading.Event()
        study_name, trial_id = self.config["study_name"], self.config["trial_id"]

        def write(checkpoint: Any, _name: str) -> Any:
            try:
                with full_disk_marked(study_name, trial_id):
                    write_checkpoint(storage.filesystem, folder, snapshot.getbuffer(), storage.local)
            finally:
                written.set()
            return checkpoint

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint(folder, filesystem=storage.filesystem),
                         checkpoint_dir_name=name, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
                         delete_local_checkpoint_after_upload=False, checkpoint_upload_fn=write)
        self.writing = written  # not when report raised: then no write was handed over


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: load the cached arrays, resume if a checkpoint exists, run `fit`."""
    import ray.train
    import ray.train.torch
    import torch

    from search.driver.placement_groups import register_placement_group
    from search.seam import controller, kept_workers
    from trainables.loop import LAST_METRICS, Stopped, fit

    fast = config["fast_path"]
    if fast:
        kept_workers.start_run()
    controller.quiet_reports()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # as TorchTrainer does; a one-worker fast-path trial runs without it
        torch.cuda.set_device(device)
    data = ray.get(config["data"])
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    if not config["workers_kept"]:  # a kept group is its driver's: it must outlive this trial
        register_placement_group(config["trial_id"])  # so the driver can free it (search/driver/placement_groups.py)
    batch_size, note = trial_batch(config["hparams"].batch_size, state, config["halve_batch"])
    config = {**config, "hparams": config["hparams"].replace(batch_size=batch_size)}
    # The note goes with every epoch, "" included: Tune's progress.csv keeps the first result's columns.
    extra = {"startup_s": time.time() - config["trial_started_at"], NOTE_KEY: note, BATCH_SIZE_KEY: batch_size}
    reports = EpochReports(config, rank, state.get(BEST_STATE_KEY) if state else None, extra)
    if reports.storage is not None and reports.storage.local and rank == 0:
        reports.storage.check_visible()
    if state is not None and state["epoch"] >= config["max_epochs"] and LAST_METRICS in state:
        # Trained to its last epoch before the search's driver was lost, whose Tune never heard
        # that epoch's report: said again, or the trial would end with no result at all (its
        # study trial pruned, without a value). Its checkpoint is in OUT already: named, not sent again.
        ray.train.report({**state[LAST_METRICS], **extra, best_metric(config["objective"]): reports.best,
                          CHECKPOINT_PATH_KEY: checkpoint.path})
        return

    share = None
    if config["features"] is not None:
        from search.driver.feature_store import sharing

        share = sharing(config["features"])
    try:
        fit(config["hparams"], data, config["max_epochs"], reports, state=state,
            device=device, seed=config["seed"], rank=rank, world_size=world_size,
            prepare_model=ray.train.torch.prepare_model, share_features=share, data_key=config["data_key"] or None,
            stop=kept_workers.STOP if fast else None)
    except Stopped:
        return  # its driver ended the run (search/seam/kept_workers.py): not a failure, nothing to log
    except BaseException:
        if fast:  # the epoch before a failure reaches Tune with its checkpoint: a retry resumes from it
            controller.flush_checkpoint_writes()
        raise
