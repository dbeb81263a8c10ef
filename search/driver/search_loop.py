"""A search as Tune runs ("rounds") over one Optuna study: the first, and one more each time
a finished search is extended (`--resume --trials N` with N above the trials it ran).

Tune cannot add trials to a finished experiment (ray-project/ray#18847), but the study, the
search's truth, can take more: a new round is a new Tune run (`OUT/tune-2`, ...) whose TPE
learns from every trial before it. A --resume restores the last round and, when the budget
asks for more trials than the study holds, starts the next.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ray import tune

from search.driver import tune_setup as tuning
from search.driver.ending import BudgetStopper, EndRule
from search.driver.placement_groups import PlacementGroupReaper, remove_kept_groups
from search.driver.retention import KeepExportable, Retention
from search.driver.study import finished_values, load
from search.driver.study_searcher import study_of
from search.driver.tune_state_copy import KeepStateCopy, repair
from search.experiment.spec import Experiment
from search.seam import tune_files
from search.seam.optuna_study import bind
from search.state.disk import DiskFull
from search.state.names import STUDY_FILE, round_dir
from search.state.storage import Output
from search.trial.checkpoints import remove_orphaned_scratch
from search.trial.settings import EpochHook
from trainables.data import ArrayData

MAX_ROUNDS = 1000


def rounds_in(output: Output) -> list[str]:
    """The rounds a search folder holds, in order."""
    found = []
    while len(found) < MAX_ROUNDS and output.exists(round_dir(len(found) + 1)):
        found.append(round_dir(len(found) + 1))
    return found


@dataclass
class Outcome:
    """What the search's rounds gave: every round's results, and why it ended early, if it did."""

    grids: list[tune.ResultGrid] = field(default_factory=list)
    disk_full: DiskFull | None = None
    ended_by: str | None = None  # a time budget or a stalled objective (`search.driver.ending`)
    budget_stopped: set[str] = field(default_factory=set)  # trials the time budget stopped


def search(experiment: Experiment, output: Output, arrays: ArrayData, the_plan: tuning.Plan, *,
           resume: bool = False, on_epoch: EpochHook | None = None, stopped: Callable[[], bool] = lambda: False,
           spent_s: float = 0.0, warm_start: Path | None = None, data_key: str = "",
           callbacks: Sequence[tune.Callback] = ()) -> Outcome:
    """Run (or, with `resume`, continue) the search until its trials are run, a signal stops it
    (`stopped()` turns true), the disk fills, or its `EndRule` ends it.

    Tune and Train write straight to `output` (a local folder or a URI every node can reach);
    the Optuna study stays in the driver's local working folder. `spent_s`: search time the
    earlier runs of this search spent, counted against a time budget. `data_key`: the data's
    fingerprint, with which trials share a frozen backbone's features. `callbacks`: Tune
    callbacks of this run only (MLflow tracking, search.tracking), never stored with the Tune run.
    """
    budget = experiment.budget
    rule = EndRule(time_s=None if budget.time is None else budget.time - spent_s, stalled=budget.stop_when_stalled,
                   mode=experiment.mode, budget_s=budget.time)
    trainable = tuning.trainable(experiment, output, arrays, the_plan, on_epoch, data_key)
    bind(tuning.study_url(output.local), rule)  # the study of this OUT, wherever it was when the search began
    retention = None
    if experiment.checkpoints == "exportable":
        retention = Retention.of(experiment, output, tuning.study_url(output.local), arrays.val.labels)
    try:
        return _rounds(experiment, output, the_plan, trainable, rule, resume, stopped, warm_start, callbacks,
                       retention)
    finally:
        bind(None)  # this search's rule ends with it (a process may run another search after it)
        if retention is not None:
            retention.sweep(final=True)
        remove_orphaned_scratch()  # this machine's; a worker node's go at its next trial's first report


def _rounds(experiment: Experiment, output: Output, the_plan: tuning.Plan, trainable: tune.Trainable,
            rule: EndRule, resume: bool, stopped: Callable[[], bool], warm_start: Path | None,
            callbacks: Sequence[tune.Callback], retention: Retention | None) -> Outcome:
    budget = experiment.budget
    outcome = Outcome()
    if resume:
        # A trial the study finished just before a kill returns at once when restored, reporting
        # nothing (search/driver/study.py); Tune's check that every result names the objective
        # would call that an error (its own "no result" exception misses restored trials).
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    done = rounds_in(output) if resume else []
    if done and not output.remote:
        for line in repair(output.local / done[-1]):
            print(line, flush=True)
    for name in done[:-1]:
        outcome.grids.append(tune.Tuner.restore(output.child(name), trainable).get_results())
    if done and tune.Tuner.can_restore(output.child(done[-1])):
        # resume_errored keeps the trial id (Optuna knows it); restart_errored would not.
        tuner = tune.Tuner.restore(output.child(done[-1]), trainable, resume_unfinished=True, resume_errored=True)
        tuning.scheduler(experiment, output.path)  # new trials of a moved OUT go where it is now
    else:
        done = done[:-1]
        trials = budget.trials - (tuning.trials_run(experiment, output) if done else 0)
        tuner = _new_round(experiment, output, the_plan, trainable, len(done) + 1, trials,
                           warm_start=None if done else warm_start)
        done = [*done, round_dir(len(done) + 1)]
    while True:
        grid, outcome.disk_full = _fit(tuner, experiment, output, rule, callbacks, done[-1], retention)
        outcome.grids.append(grid)
        if outcome.disk_full or stopped() or rule.ended_by:
            break
        tuning.end_unfinished_trials(experiment, output)  # a later round must not inherit RUNNING trials
        remaining = budget.trials - tuning.trials_run(experiment, output)
        if remaining <= 0 or len(done) >= MAX_ROUNDS or rule.should_end(_values(experiment, output)):
            break
        done.append(round_dir(len(done) + 1))
        print(f"Extending the search: {remaining} more trials (round {len(done)}, {output.display(done[-1])})",
              flush=True)
        tuner = _new_round(experiment, output, the_plan, trainable, len(done), remaining)
    outcome.ended_by, outcome.budget_stopped = rule.ended_by, set(rule.stopped_trials)
    return outcome


def _values(experiment: Experiment, output: Output) -> list[float]:
    return finished_values(load(tuning.study_url(output.local), experiment.name))


def _new_round(experiment: Experiment, output: Output, the_plan: tuning.Plan, trainable: tune.Trainable,
               number: int, trials: int, warm_start: Path | None = None) -> tune.Tuner:
    search_alg = tuning.searcher(experiment, output.local, the_plan.concurrency, first_round=number == 1)
    if warm_start is not None:
        from search.driver.warm_start import warm_start as tell
        from search.experiment.space import space_function

        print(tell(study_of(search_alg), warm_start, experiment, space_function(experiment.space)),
              flush=True)
    output.upload_database(STUDY_FILE)  # before Tune saves a state (tuner.pkl) that names the study
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=tuning.scheduler(experiment, output.path), num_samples=max(1, trials),
            # On the fast path a trial's driver process goes on to the next trial (its controller,
            # in the driver, ends a stopped trial's workers at once: search/seam/controller.py): no
            # new process, imports and placement per trial. On Ray's documented path the
            # controller is an actor the driver owns: only the driver's end frees it.
            reuse_actors=the_plan.fast_path),
        run_config=tune.RunConfig(name=round_dir(number), storage_path=output.uri, callbacks=[PlacementGroupReaper()],
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=1),
    )


class UploadStudy(tune.Callback):
    """Copies the study to a remote OUT each time Tune saves its experiment state, before Tune
    uploads that state: the URI's study is never behind the URI's Tune state, the order a
    resume can reconcile (search/driver/study.py)."""

    def __init__(self, output: Output) -> None:
        self.output = output

    def get_state(self) -> None:
        # Tune asks every callback for its state while it saves the experiment's, after it
        # wrote the trials' and the searcher's and before the upload starts: the one hook there.
        self.output.upload_database(STUDY_FILE)


def _fit(tuner: tune.Tuner, experiment: Experiment, output: Output, rule: EndRule,
         callbacks: Sequence[tune.Callback] = (), name: str | None = None,
         retention: Retention | None = None) -> tuple[tune.ResultGrid, DiskFull | None]:
    """Run the round `name` (its folder in OUT) with this run's callbacks (and `retention`'s)."""
    disk_full = tuning.StopWhenDiskFull(experiment, output)
    run_config = tune_files.run_config_of(tuner)
    if run_config is not None:  # none under Ray Client: the search runs on the cluster
        # Set after the Tuner saved its settings (tuner.pkl), so never restored from them: on a
        # --resume they must act on this run's OUT and budget (Tuner.restore takes neither).
        keep = [KeepStateCopy(output.local / name)] if name and not output.remote else []
        upload = [UploadStudy(output)] if output.remote else []
        retain = [KeepExportable(retention)] if retention is not None else []
        run_config.callbacks.extend([disk_full, *keep, *upload, *retain, *callbacks])
        if rule.time_s is not None:
            run_config.stop = BudgetStopper(rule)
    elif callbacks:
        print("warning: trials are not tracked in MLflow through a ray:// address (Ray Client); run the search "
              "on the head node (--address auto) to track them", flush=True)
    try:
        return tuner.fit(), disk_full.full
    finally:
        with contextlib.suppress(Exception):  # what the drivers kept (search/seam/kept_workers.py): the round is over
            remove_kept_groups(everything=True)
