"""Which checkpoints a search keeps (`Experiment.checkpoints="exportable"`, the default).

A running trial keeps what Ray Train keeps for it: its best checkpoint and its latest (the one
a resume starts from). A trial that has ended never trains again, so it keeps only its best
checkpoint, without the optimizer's state that only a resume needs, and only while it could
still be exported: by `select` (`reach`), with `select="accuracy"` while no ended trial is
strictly better, with `select="fastest_within=D"` while fewer than `TOP_K` ended trials are
strictly better (the rule picks among the top `TOP_K`) and the best ended trial is not more
than D better; or, with `ensemble="auto"` (the default), as a member of the ensemble: among the
top `TOP_K` ended trials, those that greedy selection (search/best/ensemble.py) gives a weight,
fitted on the val logits their best checkpoints keep, exactly as the export will. A trial whose
logits cannot be read (a checkpoint of an older version, its best folder unknown to this
process) is kept. The objective of an ended trial is fixed and a running trial's only improves,
so a trial that falls out of `select`'s reach never comes back; one the ensemble left out could
have joined a later ensemble, which is then chosen without it. Ties keep both.

Ended trials and their objectives are read from the study (the search's truth, across rounds
and resumes). Which of a trial's folders is its best is known from the reports this process
saw; a trial whose best epoch was reported before a resume keeps what Ray Train kept for it (two
folders at most) rather than a guess. A trial errored, or stopped by a full disk, is left
as it is: a --resume continues it from its latest checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pyarrow.fs as pafs
from ray import tune

from search.best.ensemble import fit
from search.best.select import TOP_K, Reach, exportable, reach
from search.driver.study import TUNE_TRIAL_ID, load, search_trials
from search.experiment.spec import Experiment
from search.seam.controller import CHECKPOINT_PATH_KEY
from search.state.names import TRAIN_DIR
from search.state.storage import Output
from search.trial.checkpoints import read_val_logits, slim_checkpoint
from search.trial.settings import CHECKPOINT_PREFIX, train_run_name

logger = logging.getLogger(__name__)


def ended(study: optuna.Study) -> dict[str, float]:
    """Tune trial id -> objective of the search's trials that ended with a value."""
    return {t.user_attrs[TUNE_TRIAL_ID]: float(t.value) for t in search_trials(study)
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None}


@dataclass
class Retention:
    """Frees the checkpoints of ended trials that are no longer needed, in a search's `output`."""

    @classmethod
    def of(cls, experiment: Experiment, output: Output, study_url: str,
           val_labels: np.ndarray | None = None) -> Retention:
        """`val_labels`: the val split's, with which an ensemble's members are chosen; without
        them (or with `ensemble="off"`) only `select` keeps trials."""
        return cls(output, study_url, experiment.name, experiment.objective, experiment.mode,
                   reach(experiment.tolerance), val_labels if experiment.ensemble == "auto" else None)

    output: Output
    study_url: str
    study_name: str
    objective: str
    mode: str
    rule: Reach
    val_labels: np.ndarray | None = None
    # trial id -> (its best objective reported to this process, that epoch's checkpoint folder)
    best_seen: dict[str, tuple[float, str]] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)  # trials freed entirely: nothing more to do
    trimmed: set[str] = field(default_factory=set)  # trials left with their best checkpoint alone
    slimmed: set[str] = field(default_factory=set)  # ... and that checkpoint without the optimizer's state
    freed_bytes: int = 0
    logits: dict[str, np.ndarray] = field(default_factory=dict)  # trial id -> its best checkpoint's val logits
    # The last greedy selection: (the readable top trials, best first; their weights). Most sweeps
    # find the same top trials, whose fit (a temperature each, then greedy) would give the same weights.
    weighed: tuple[tuple[str, ...], list[float]] = ((), [])

    def note(self, trial_id: str, result: dict[str, Any]) -> None:
        """Remember the folder of a trial's best report so far (the latest, on ties: as Ray Train)."""
        value, path = result.get(self.objective), result.get(CHECKPOINT_PATH_KEY)
        if value is None or not path:
            return
        seen = self.best_seen.get(trial_id)
        sign = 1.0 if self.mode == "max" else -1.0
        if seen is None or sign * float(value) >= sign * seen[0]:
            self.best_seen[trial_id] = (float(value), str(path).rstrip("/").rsplit("/", 1)[-1])

    def sweep(self, final: bool = False, later: Iterable[str] = ()) -> None:
        """Free what the ended trials no longer need; the trials `later` are left to a later
        sweep. `final` (the search's end) looks at every ended trial again: a stopped trial's
        worker may have written one more checkpoint before it stopped.
        A failure is logged, never raised: a checkpoint left behind costs disk, a search
        stopped for it costs the search."""
        if final:
            self.settled.clear()
            self.trimmed.clear()
        try:
            values = ended(load(self.study_url, self.study_name))
        except Exception as err:  # noqa: BLE001 (see the docstring)
            logger.warning("checkpoints of ended trials not freed: the study could not be read (%s)", err)
            return
        kept = exportable(values, self.mode, self.rule)
        if self.val_labels is not None:
            kept |= self._members(exportable(values, self.mode, Reach(TOP_K)), values)
        for trial_id in values.keys() - self.settled - set(later):
            try:
                self._settle(trial_id, values[trial_id], trial_id in kept)
            except Exception as err:  # noqa: BLE001 (see the docstring)
                logger.warning("checkpoints of trial %s not freed: %s", trial_id, err)

    def _members(self, top: set[str], values: dict[str, float]) -> set[str]:
        """The trials of `top` the ensemble could use: those greedy selection weighs, and those
        whose val logits cannot be read (kept: nothing is freed on what could not be read)."""
        sign = 1.0 if self.mode == "max" else -1.0
        ranked = sorted(top, key=lambda t: -sign * values[t])  # the best first, as the export ranks them
        found = {t: self._val_logits(t, values[t]) for t in ranked}
        readable = [t for t in ranked if found[t] is not None]
        if len(readable) < 2:
            return set(ranked)
        if self.weighed[0] != tuple(readable):
            self.weighed = (tuple(readable), fit(np.stack([found[t] for t in readable]), self.val_labels).weights)
        weights = self.weighed[1]
        return {t for t in ranked if found[t] is None} | {t for t, w in zip(readable, weights) if w > 0}

    def _val_logits(self, trial_id: str, value: float) -> np.ndarray | None:
        if trial_id in self.logits:
            return self.logits[trial_id]
        best = self.best_seen.get(trial_id)
        if best is None or best[0] != value:
            return None
        try:
            logits = read_val_logits(self.output.filesystem, f"{self._run(trial_id)}/{best[1]}")
        except Exception as err:  # noqa: BLE001 (the trial is kept: see _members)
            logger.warning("val logits of trial %s not read: %s", trial_id, err)
            return None
        if logits is None or logits.shape[0] != len(self.val_labels):
            return None
        self.logits[trial_id] = logits
        return logits

    def _settle(self, trial_id: str, value: float, in_reach: bool) -> None:
        if not in_reach:
            self._free(trial_id, keep=())
            self.settled.add(trial_id)
            return
        best = self.best_seen.get(trial_id)
        if trial_id in self.trimmed or best is None or best[0] != value:
            return  # done already, or its best folder unknown to this process: it keeps what Ray Train kept
        self._free(trial_id, keep=(best[1],))
        self.trimmed.add(trial_id)
        if trial_id not in self.slimmed:
            self.freed_bytes += slim_checkpoint(self.output.filesystem, f"{self._run(trial_id)}/{best[1]}")
            self.slimmed.add(trial_id)

    def _run(self, trial_id: str) -> str:
        return f"{self.output.path}/{TRAIN_DIR}/{train_run_name(trial_id)}"

    def _free(self, trial_id: str, keep: Iterable[str]) -> None:
        fs, keep = self.output.filesystem, set(keep)
        for info in fs.get_file_info(pafs.FileSelector(self._run(trial_id), allow_not_found=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX) \
                    and info.base_name not in keep:
                self.freed_bytes += _size(fs, info.path)
                fs.delete_dir(info.path)


def _size(fs: pafs.FileSystem, folder: str) -> int:
    return sum(i.size or 0 for i in fs.get_file_info(pafs.FileSelector(folder, recursive=True))
               if i.type == pafs.FileType.File)


class KeepExportable(tune.Callback):
    """Tune's side of `Retention`: notes every report, and sweeps once a trial that ended has
    had `GRACE_S` to stop: Tune stops a trial after its callbacks, and on Ray's documented path
    its Train controller may still register (and rank, and delete) one more checkpoint meanwhile."""

    GRACE_S = 15.0

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self.ended: dict[str, float] = {}  # trial id -> when it ended, until it is swept

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        self.retention.note(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        # The study hears of the end first: the searcher's on_trial_complete runs before callbacks'.
        self.ended[trial.trial_id] = time.monotonic()
        self._sweep()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if any(time.monotonic() - at >= self.GRACE_S for at in self.ended.values()):
            self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        self.ended = {t: at for t, at in self.ended.items() if now - at < self.GRACE_S}
        self.retention.sweep(later=self.ended)
