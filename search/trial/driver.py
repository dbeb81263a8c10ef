"""A trial's driver: the Tune function trainable that runs the trial's Ray Train job, and runs
it again after a failure that a retry can fix.

A failed run is retried here, not by Ray Train (which would retry every failure alike): from
the last checkpoint after a dead worker, with half the batch size after an out-of-memory, never
after an exception of the training code, nor after Tune stopped the trial and removed its
placement group (`search.trial.failures`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from typing import Any

from search.experiment.space import hparams
from search.trial.failures import Failure, classify
from search.trial.settings import TrialSettings, train_run_name
from search.trial.worker import train_worker

logger = logging.getLogger(__name__)


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """Tune function trainable: run this trial's Ray Train job to the end (or until stopped)."""
    from ray import tune

    from search.seam import kept_workers, markers

    trial_id = tune.get_context().get_trial_id()
    if markers.finished_before_resume(settings.study_name, trial_id):
        return  # its outcome is in the study already (search/driver/study.py): nothing to run or report
    markers.clear_disk_full(settings.study_name, trial_id)
    # Not asdict(): it would deep-copy the data's ObjectRef.
    loop_config = {**{f.name: getattr(settings, f.name) for f in fields(settings)},
                   "hparams": hparams(config, settings.weights), "trial_started_at": time.time(), "trial_id": trial_id,
                   "halve_batch": False, "workers_kept": settings.fast_path and kept_workers.keeps(settings.workers)}
    failures = 0
    while True:
        try:
            _trainer(loop_config, settings, trial_id).fit()
            return
        except Exception as err:
            kind = classify(err)
            if kind is Failure.RELEASED:
                # Tune stopped the trial and took its placement group back: a new run would only be
                # destroyed in turn (and start a controller that outlives nothing useful).
                logger.debug("trial %s: its Train run was released with its placement group", trial_id)
                return
            full_disk = markers.disk_full_reason(settings.study_name, trial_id) is not None
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


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of memory again with half its batch size."""


def _trainer(loop_config: dict[str, Any], settings: TrialSettings, trial_id: str) -> Any:
    """The trial's Ray Train trainer; every attempt gets the same run name and storage, so it
    resumes from the checkpoints the earlier attempts registered."""
    from ray import train

    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker:
        resources["GPU"] = settings.gpus_per_worker
    if settings.fast_path:
        from search.seam.controller import fast_trainer, tune_report

        trainer_class, report = fast_trainer(settings.workers), tune_report()
    else:  # Ray's documented way: its controller an actor, its reports through Tune's callback
        from ray.train.torch import TorchTrainer
        from ray.tune.integration.ray_train import TuneReportCallback

        trainer_class, report = TorchTrainer, TuneReportCallback()
    return trainer_class(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=train.ScalingConfig(num_workers=settings.workers, use_gpu=settings.gpus_per_worker > 0,
                                           resources_per_worker=resources),
        run_config=train.RunConfig(
            name=train_run_name(trial_id),
            storage_path=settings.storage_path,
            callbacks=[report],
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
