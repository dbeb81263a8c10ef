"""Optuna's TPE as Ray Tune's searcher, with the study in `optuna.db` as the truth on resume.

Tune saves its experiment state (and the searcher's) every few seconds; the study is written
at once. A search killed in between resumes with Tune a little behind the study:
- a trial the study already finished looks unfinished to Tune, which would run it again and
  report it to a finished Optuna trial (`UpdateFinishedTrialError`, the crash of a resume):
  here it is marked done, its driver returns at once (`markers.finished_before_resume`), and
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

Private attributes of Ray's `OptunaSearch` (`_ot_study`, `_ot_trials`, `_completed_trials`,
`_storage`, `_sampler`, `_study_name`) and Optuna's `Trial._trial_id`, unchanged from Ray 2.59
to 2.60 and Optuna 4.5 to 5.1 (`tests/search/seam/test_contracts.py`).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search.driver.ending import EndRule
from search.driver.study import TUNE_TRIAL_ID, finished_values, study_storage
from search.seam import markers
from search.state.disk import full_reason

logger = logging.getLogger(__name__)
# The running search's study and end rule: Tune unpickles the searcher it saved, which cannot
# hold them (OUT may have moved; the rule is this run's), so `bind` sets them for the restore.
_study_url: str | None = None
_end_rule: EndRule | None = None


def bind(study_url: str | None, end_rule: EndRule | None = None) -> None:
    """The study of the search about to run or be restored (its OUT may have moved since), and
    the rule that ends it early (pickled searchers come back without it: it is this run's)."""
    global _study_url, _end_rule
    _study_url, _end_rule = study_url, end_rule




def study_of(search: ConcurrencyLimiter) -> optuna.Study:
    """The Optuna study a searcher made by `search.driver.tune_setup.searcher` asks and tells."""
    return search.driver.study._ot_study


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
        stored = {t._trial_id: t for t in self._ot_study.get_trials(deepcopy=False)}
        for tune_id, trial in self._ot_trials.items():
            frozen = stored.get(trial._trial_id)
            if frozen is not None and frozen.state.is_finished() and tune_id not in self._completed_trials:
                self._completed_trials.add(tune_id)
                markers.mark_finished_before_resume(self._study_name, tune_id)
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
        self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)  # for `search.driver.study.finished_trials`
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
        if error and markers.disk_full_reason(self.searcher._study_name, trial_id) is not None:
            return
        super().on_trial_complete(trial_id, result, error)


