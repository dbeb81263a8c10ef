"""Ray Tune orchestration: Optuna's TPE proposes, ASHA stops weak trials, Train runs each.

This module owns every Ray Tune object of a search; the rest of the service sees only the
experiment going in and a `ResultGrid` coming out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from search.driver.ray_cluster import ON_HEAD
from search.driver.signals import ask_tune_to_stop
from search.driver.study import (
    end_unfinished,
    finished_trials,
    load,
    search_trials,
    study_storage,
)
from search.driver.study_searcher import StudyLimiter, StudySearch
from search.experiment.space import recipe_points, space_function
from search.experiment.spec import Experiment, SpecError
from search.seam import cluster_info, markers, tune_files, versions
from search.seam.tune_files import MovableASHA
from search.state.disk import DiskFull, text_reason
from search.state.names import STUDY_FILE, TRAIN_DIR, TUNE_DIR
from search.state.storage import Output
from search.trial.checkpoints import remove_unregistered_checkpoints
from search.trial.driver import run_trial
from search.trial.settings import KEEP_CHECKPOINTS, EpochHook, TrialSettings, best_metric, train_run_name
from trainables.data import ArrayData

if TYPE_CHECKING:
    import optuna

# The trial driver only waits on its Train job: it asks for memory, not a CPU, so a trial
# with one 1-CPU worker really fits on one CPU (Ray refuses an all-zero request); and it runs
# on the head node (search/driver/ray_cluster.py ON_HEAD).
DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2, **ON_HEAD}


class _WithoutTunesResumeHint(logging.Filter):
    """Tune's own messages on an interrupted run name its Python API (`Tuner.restore(...)`) and
    a Ctrl-C even when a full disk stopped it; `search.run` says what happened and prints the
    command a user types instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(words in message for words in ("Tuner.restore", "Trials did not complete",
                                                      "Stop signal received"))


logging.getLogger("ray.tune.tune").addFilter(_WithoutTunesResumeHint())


def scheduler(experiment: Experiment, storage_fs_path: str) -> MovableASHA:
    """ASHA on the experiment's budget, storing new trials under `storage_fs_path` (OUT now)."""
    MovableASHA.out_fs_path = storage_fs_path
    budget = experiment.budget
    # After a restore Tune's own iteration count restarts at 1; the epoch does not.
    return MovableASHA(time_attr="epoch", metric=experiment.objective, mode=experiment.mode,
                       max_t=budget.max_epochs, grace_period=budget.grace_period_epochs,
                       reduction_factor=budget.reduction_factor)


@dataclass(frozen=True)
class Plan:
    """What the search will actually run on this cluster, decided before it starts."""

    concurrency: int
    gpus_per_worker: float
    cluster_cpus: float
    cluster_gpus: float
    # Trials take the fast path (search.seam.versions): on a verified Ray unless forced off.
    fast_path: bool = True


def plan(experiment: Experiment, autoscaling: bool = False) -> Plan:
    """What the search will run on the Ray it is connected to (see `resolve`)."""
    # The most the autoscaler may bring up (its node types x max workers), asked on the
    # cluster itself (a Ray Client driver has no state API): a cluster.yaml that scales GPU
    # workers from 0 has no GPU yet when the search starts, and must still get GPU trials.
    ceiling = ray.get(_autoscaler_ceiling.remote()) if autoscaling else None
    return dataclasses.replace(resolve(experiment, ray.cluster_resources(), ceiling), fast_path=versions.fast_path())


@ray.remote(num_cpus=0)
def _autoscaler_ceiling() -> dict[str, float]:
    """The autoscaler's largest cluster, or {} on a cluster without an autoscaler."""
    return cluster_info.autoscaler_ceiling()


def resolve(experiment: Experiment, now: dict[str, float], ceiling: dict[str, float] | None = None) -> Plan:
    """Resolve `gpus_per_worker="auto"` and the concurrency from the cluster's resources.

    `now` is what the cluster has. `ceiling` is given for a cluster the user pointed us at:
    the most its autoscaler can grow to (empty when unknown); trials are sized and counted
    for that, and an explicit `concurrency` is taken as asked, since nodes may be added for
    it. Otherwise trials never outnumber what fits now: more would not fail, only wait.
    """
    room = {key: max(now.get(key, 0.0), (ceiling or {}).get(key, 0.0)) for key in ("CPU", "GPU")}
    cpus, gpus = room["CPU"], room["GPU"]
    res = experiment.resources
    gpus_per_worker = (1.0 if gpus >= 1 else 0.0) if res.gpus_per_worker == "auto" else float(res.gpus_per_worker)
    trial_cpus = res.workers * res.cpus_per_worker
    slots = math.floor(cpus / trial_cpus + 1e-9)
    if gpus_per_worker:
        slots = min(slots, math.floor(gpus / (res.workers * gpus_per_worker) + 1e-9))
    if ceiling is not None and experiment.concurrency:
        slots = max(slots, experiment.concurrency)
    if slots < 1:
        needs = f"{trial_cpus:g} CPUs" + (f" and {res.workers * gpus_per_worker:g} GPUs" if gpus_per_worker else "")
        raise SpecError("Resources", f"{res.workers} x {res.cpus_per_worker:g} CPU",
                        f"a trial needs {needs}, the cluster has {cpus:g} CPUs and {gpus:g} GPUs"
                        f"{' at most' if ceiling else ' now'}; ask for less, or on an autoscaling cluster "
                        "give --concurrency")
    concurrency = min(slots, experiment.budget.trials, experiment.concurrency or slots)
    return Plan(concurrency=concurrency, gpus_per_worker=gpus_per_worker, cluster_cpus=cpus, cluster_gpus=gpus)


def new_study_storage(out: Path, study_name: str) -> optuna.storages.RDBStorage:
    """The SQLite storage for a new search's study in `out`, without an earlier study of that name.

    Only the driver's searcher writes to it, so a local file is enough. On `Tuner.restore`
    Ray unpickles the searcher with this storage (its URL; the engine is rebuilt) and does
    not create the study again: a resumed search keeps adding to the same study.
    """
    import optuna

    storage = study_storage(study_url(out))
    if study_name in optuna.study.get_all_study_names(storage):
        # A new search and no Tune state to resume (run.py checked): this study is from a start
        # that never got going, and its trials would mix with this search's.
        optuna.delete_study(study_name=study_name, storage=storage)
    return storage


def study_url(out: Path) -> str:
    """The study's storage URL in the driver's working folder of a search."""
    return f"sqlite:///{out / STUDY_FILE}"


def end_unfinished_trials(experiment: Experiment, output: Output) -> int:
    """After a search that ran to its end, no study trial is left RUNNING (see `searcher.end_unfinished`)."""
    return end_unfinished(study_url(output.local), experiment.name)


def trials_run(experiment: Experiment, output: Output) -> int:
    """How many trials the search has run (or started), in all its rounds."""
    return len(search_trials(load(study_url(output.local), experiment.name)))


def finished_trial_ids(experiment: Experiment, output: Output) -> set[str]:
    """The trials the study has finished: after an interruption, the others are unfinished."""
    return finished_trials(study_url(output.local), experiment.name)


def searcher(experiment: Experiment, out: Path, concurrency: int, first_round: bool = True) -> StudyLimiter:
    """TPE over the experiment's space, its recipes first, in OUT's study: a new one for the
    first round of a search, the search's own for a later round (its trials inform TPE)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # group=True is "experimental" in Optuna 5.0, and what conditional spaces need:
        # TPE then models each branch (small_cnn, inception_partial, sgd, ...) on its own.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar (experimental too): a trial still running counts as a poor result, so
        # trials started together are not proposed the same point.
        sampler = optuna.samplers.TPESampler(seed=experiment.seed, multivariate=True, group=True,
                                             n_startup_trials=max(2, min(10, experiment.budget.trials // 3)),
                                             constant_liar=concurrency > 1)
    search = StudySearch(space=space_function(experiment.space), metric=best_metric(experiment.objective),
                         mode=experiment.mode,
                         points_to_evaluate=(recipe_points(experiment) or None) if first_round else None,
                         sampler=sampler, study_name=experiment.name,
                         storage=new_study_storage(out, experiment.name) if first_round
                         else study_storage(study_url(out)))
    return StudyLimiter(search, max_concurrent=concurrency)


def trainable(experiment: Experiment, output: Output, arrays: ArrayData, the_plan: Plan,
               on_epoch: EpochHook | None, data_key: str = "") -> tune.Trainable:
    """Every trial's driver, with what the trials share: the data, and where a frozen
    backbone's features are shared (when the space has a frozen backbone)."""
    from trainables.archs import ARCHS

    res = experiment.resources
    features = None
    if data_key and any(ARCHS[name].freeze == "all" for name in experiment.space.archs()):
        from search.driver.feature_store import start_store

        features = start_store()
    settings = TrialSettings(
        # Decoded once, put in Ray's object store once: every trial on every node reads
        # this one copy (zero-copy on a node), with no shared filesystem needed.
        data=ray.put(arrays), storage_path=output.child(TRAIN_DIR), weights=experiment.weights,
        max_epochs=experiment.budget.max_epochs, seed=experiment.seed, workers=res.workers,
        cpus_per_worker=res.cpus_per_worker, gpus_per_worker=the_plan.gpus_per_worker,
        objective=experiment.objective, mode=experiment.mode, study_name=experiment.name, on_epoch=on_epoch,
        features=features, data_key=data_key, fast_path=the_plan.fast_path,
        keep_checkpoints=KEEP_CHECKPOINTS if experiment.checkpoints == "exportable" else None)
    return tune.with_resources(tune.with_parameters(run_trial, settings=settings), DRIVER_RESOURCES)


class StopWhenDiskFull(tune.Callback):
    """A trial whose checkpoint found the disk full stops the search, as Ctrl-C does: the other
    trials would only fail the same way, and the unfinished ones continue on --resume.

    Once the trials have stopped, the checkpoints the full disk cut short are removed, and Tune's
    files, which its copies into a full OUT may have cut short too, are written again from the
    driver's own copy (the space freed is usually enough), so the results read whole files.
    """

    def __init__(self, experiment: Experiment, output: Output) -> None:
        self.study_name, self.output = experiment.name, output
        self.full: DiskFull | None = None

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = markers.disk_full_reason(self.study_name, trial.trial_id)
        if reason is None:  # the write that failed was not the worker's (Train's record of checkpoints, Tune's files)
            error_file = Path(trial.error_file or "")  # the driver's copy: the one in OUT may be cut short
            reason = text_reason(error_file.read_text(errors="replace")) if error_file.is_file() else None
        if reason and self.full is None:
            self.full = DiskFull(self.output.display(TRAIN_DIR, train_run_name(trial.trial_id)), reason)
            ask_tune_to_stop()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.full is None or not trials:
            return
        if not self.output.remote:
            remove_unregistered_checkpoints(self.output.local / TRAIN_DIR)
        try:
            tune_files.rewrite_tune_files(trials)
        except Exception as err:
            logging.getLogger(__name__).warning("Tune's files in %s may be incomplete: %s",
                                                self.output.display(TUNE_DIR), err)
            tune_files.forget_error_pickles(trials)
