"""Optuna's TPE as Ray Tune's searcher, with the study in `optuna.db` as the truth on resume.

Tune saves its experiment state (and the searcher's) every few seconds; the study is written
at once. A search killed in between resumes with Tune a little behind the study:
- a trial the study already finished looks unfinished to Tune, which would run it again and
  report it to a finished Optuna trial (`UpdateFinishedTrialError`, the crash of a resume):
  here it is marked done, its driver returns at once (`trial.finished_marker`), and
  nothing more is reported for it;
- a trial the study handed out after Tune's last save is unknown to Tune, which will ask
  for a new one: it gets that trial back, so the study holds exactly the search's trials.
A trial whose checkpoint found the disk full did not fail, the disk did: the study keeps it
running, so a --resume once there is room continues it from its last checkpoint.
The study is also reopened from the OUT being resumed, not the path it was pickled with,
so a search folder can be moved, copied or resumed on another machine. Several Tune runs
(rounds: a finished search extended with more trials) share one study; so does a study
warm-started with another search's trials (`warm_start`), which are told to it, not run.
Once the search's `EndRule` says so (a time budget, a stalled objective), no trial starts.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search.disk import full_reason
from search.ending import EndRule
from search.reaper import KV_NAMESPACE
from search.trial import finished_marker, full_disk_marker

logger = logging.getLogger(__name__)
_study_url: str | None = None
_end_rule: EndRule | None = None
TUNE_TRIAL_ID = "tune_trial_id"


def bind(study_url: str | None, end_rule: EndRule | None = None) -> None:
    """The study of the search about to run or be restored (its OUT may have moved since), and
    the rule that ends it early (pickled searchers come back without it: it is this run's)."""
    global _study_url, _end_rule
    _study_url, _end_rule = study_url, end_rule


# How long a write waits for a reader of optuna.db (optuna-dashboard polling it during the
# search) to let go, instead of SQLite's 5 s and "database is locked" (optuna/optuna-dashboard#545).
SQLITE_BUSY_TIMEOUT_S = 120


def study_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage at `url`, patient with other readers and writers of the file."""
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def load(study_url: str, study_name: str) -> optuna.Study:
    """The study of a search, read or written while the search may run."""
    return optuna.load_study(study_name=study_name, storage=study_storage(study_url))


def search_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that this search ran (not those told to it by a warm start)."""
    return [t for t in study.get_trials(deepcopy=False) if TUNE_TRIAL_ID in t.user_attrs]


def finished_values(study: optuna.Study) -> list[float]:
    """The objective of the search's completed trials, in the order they completed."""
    done = [t for t in search_trials(study) if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    return [t.value for t in sorted(done, key=lambda t: (t.datetime_complete, t.number))]


class StudySearch(OptunaSearch):
    """`OptunaSearch` that reconciles Tune's restored trials with the study (module docstring),
    and reports each result at its `epoch` (Tune's iteration count restarts on resume)."""

    # Tune pickles the searcher twice (tuner.pkl at the start, searcher-state-*.pkl as it goes).
    # An Optuna study unpickles by reconnecting to its storage's URL, which fails once OUT has
    # moved; so the pickles hold the URL and the trials' ids, and the study is reopened from
    # the OUT being resumed (`bind`) when they are read back.

    def _portable(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_storage_url"] = self._storage.url if self._storage is not None else state.get("_storage_url")
        state["_ot_trial_ids"] = {tune_id: trial._trial_id for tune_id, trial in self._ot_trials.items()}
        state.update(_storage=None, _ot_study=None, _ot_trials={})
        return state

    def _reopen(self) -> None:
        url = _study_url or self.__dict__.get("_storage_url")
        if url is None:
            return
        self._storage = study_storage(url)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler)
        self._ot_trials = {tune_id: optuna.trial.Trial(self._ot_study, trial_id)
                           for tune_id, trial_id in self.__dict__.pop("_ot_trial_ids", {}).items()}

    def __getstate__(self) -> dict[str, Any]:
        return self._portable()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reopen()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self._portable(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
        self._reopen()
        self._reconcile()

    def _reconcile(self) -> None:
        from ray.experimental import internal_kv

        stored = {t._trial_id: t for t in self._ot_study.get_trials(deepcopy=False)}
        for tune_id, trial in self._ot_trials.items():
            frozen = stored.get(trial._trial_id)
            if frozen is not None and frozen.state.is_finished() and tune_id not in self._completed_trials:
                self._completed_trials.add(tune_id)
                internal_kv._internal_kv_put(finished_marker(self._study_name, tune_id), b"", namespace=KV_NAMESPACE)
        known = {trial._trial_id for trial in self._ot_trials.values()}
        self._orphans = [t._trial_id for t in stored.values()
                         if t.state == optuna.trial.TrialState.RUNNING and t._trial_id not in known]

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        orphans = getattr(self, "_orphans", [])
        if trial_id not in self._ot_trials and not orphans and _end_rule is not None:
            values = finished_values(self._ot_study) if _end_rule.stalled else []
            if _end_rule.should_end(values):
                return Searcher.FINISHED
        if trial_id not in self._ot_trials and orphans:
            # Its parameters are in the study already: the space function gets them back.
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphans.pop(0))
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)  # for `finished_trials`
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials or self.metric not in result:
            return
        try:
            self._ot_trials[trial_id].report(result[self.metric], int(result["epoch"]))
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)  # finished in the study: its outcome stands
        except Exception as err:  # a full disk under optuna.db: TPE learns from final values, not these
            if full_reason(err) is None:
                raise
            logger.warning("trial %s: epoch %s not recorded in the study (%s)", trial_id, result["epoch"], err)


class StudyLimiter(ConcurrencyLimiter):
    """Tune's limit on trials at once, around a `StudySearch`, where a trial whose checkpoint found
    the disk full is neither told to the study nor forgotten: it stays running and live, so a
    --resume continues it (Tune's own limiter would drop the completion of a resumed errored trial)."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        from ray.experimental import internal_kv

        if error and internal_kv._internal_kv_exists(full_disk_marker(self.searcher._study_name, trial_id),
                                                     namespace=KV_NAMESPACE):
            return
        super().on_trial_complete(trial_id, result, error)


def finished_trials(study_url: str, study_name: str) -> set[str]:
    """The Tune trial ids whose study trial is finished (complete, pruned or failed)."""
    study = load(study_url, study_name)
    return {t.user_attrs[TUNE_TRIAL_ID] for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and TUNE_TRIAL_ID in t.user_attrs}


def end_unfinished(study_url: str, study_name: str) -> int:
    """After a search that ran to its end: a study trial still RUNNING was never going to
    finish (Tune ended without telling it): mark it FAIL. Returns how many."""
    study = load(study_url, study_name)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(running)
