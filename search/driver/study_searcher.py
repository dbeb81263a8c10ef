"""Optuna's TPE as Ray Tune's searcher: Tune's public `Searcher` interface over the study's
public ask-and-tell, with the study in `optuna.db` as the truth on resume.

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
The study is reopened from the OUT being resumed, not the path it was pickled with
(`search.seam.optuna_study.bind`), so a search folder can be moved, copied or resumed on another
machine. Several Tune runs (rounds: a finished search extended with more trials) share one
study; so does a study warm-started with another search's trials, which are told to it, not
run. Once the search's `EndRule` says so (a time budget, a stalled objective), no trial starts.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter, Searcher

from search.driver.study import TUNE_TRIAL_ID, finished_values, study_storage
from search.seam import markers
from search.seam.optuna_study import bound_end_rule, bound_study_url, live_trial
from search.state.disk import full_reason

logger = logging.getLogger(__name__)
SpaceFunction = Callable[[Any], dict[str, Any]]  # define-by-run: asks a trial, returns the pinned constants


class StudySearch(Searcher):
    """Each Tune trial is one trial of the Optuna study: asked for its configuration, told each
    epoch's result at its `epoch` (Tune's iteration count restarts on resume) and its outcome.
    A trial ASHA stopped is told COMPLETE with the last value it reported, as Ray's OptunaSearch does."""

    def __init__(self, space: SpaceFunction, metric: str, mode: str, study_name: str,
                 storage: optuna.storages.BaseStorage, sampler: optuna.samplers.BaseSampler,
                 points_to_evaluate: list[dict[str, Any]] | None = None) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space, self.study_name, self.sampler = space, study_name, sampler
        self.points = list(points_to_evaluate or [])  # asked first, in order (the experiment's recipes)
        self.numbers: dict[str, int] = {}  # Tune trial id -> the study's trial number
        self.completed: set[str] = set()
        self.orphans: list[int] = []  # RUNNING study trials unknown to the Tune run restored
        self.storage_url = getattr(storage, "url", None)
        self.study = optuna.create_study(storage=storage, sampler=sampler, study_name=study_name,
                                         direction="maximize" if mode == "max" else "minimize", load_if_exists=True,
                                         pruner=optuna.pruners.NopPruner())
        self.live: dict[str, optuna.trial.Trial] = {}

    # Tune pickles the searcher twice (tuner.pkl at the start, searcher-state-*.pkl as it goes).
    # The pickles hold the study's URL and the trials' numbers, never the study itself, which is
    # reopened from the OUT being resumed when they are read back.

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "study": None, "live": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reopen()

    def _reopen(self) -> None:
        url = bound_study_url() or self.storage_url
        if url is None:
            return
        self.storage_url = url
        self.study = optuna.load_study(study_name=self.study_name, storage=study_storage(url), sampler=self.sampler)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__getstate__(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__setstate__(pickle.load(file))
        self._reconcile()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is the define-by-run function, metric and mode were given

    def _reconcile(self) -> None:
        stored = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for tune_id, number in self.numbers.items():
            frozen = stored.get(number)
            if frozen is not None and frozen.state.is_finished() and tune_id not in self.completed:
                self.completed.add(tune_id)
                markers.mark_finished_before_resume(self.study_name, tune_id)
        known = set(self.numbers.values())
        self.orphans = [t.number for t in stored.values()
                        if t.state == optuna.trial.TrialState.RUNNING and t.number not in known]

    def _trial(self, trial_id: str) -> optuna.trial.Trial:
        if trial_id not in self.live:
            self.live[trial_id] = live_trial(self.study, self.numbers[trial_id])
        return self.live[trial_id]

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id not in self.numbers:
            rule = bound_end_rule()
            if not self.orphans and rule is not None and rule.should_end(
                    finished_values(self.study) if rule.stalled else []):
                return Searcher.FINISHED
            if self.orphans:  # its parameters are in the study already: the space function gets them back
                self.numbers[trial_id] = self.orphans.pop(0)
            else:
                if self.points:
                    self.study.enqueue_trial(self.points.pop(0))
                trial = self.study.ask()
                self.numbers[trial_id], self.live[trial_id] = trial.number, trial
        trial = self._trial(trial_id)
        constants = self.space(trial)
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)  # for `search.driver.study.finished_trials`
        return {**trial.params, **constants}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.completed or trial_id not in self.numbers or self.metric not in result:
            return
        try:
            self._trial(trial_id).report(result[self.metric], int(result["epoch"]))
        except optuna.exceptions.UpdateFinishedTrialError:
            self.completed.add(trial_id)  # finished in the study: its outcome stands
        except Exception as err:  # a full disk under optuna.db: TPE learns from final values, not these
            if full_reason(err) is None:
                raise
            logger.warning("trial %s: epoch %s not recorded in the study (%s)", trial_id, result["epoch"], err)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self.completed or trial_id not in self.numbers:
            return
        value = (result or {}).get(self.metric)
        if value is not None:
            state = optuna.trial.TrialState.COMPLETE
        else:
            state = optuna.trial.TrialState.FAIL if error else optuna.trial.TrialState.PRUNED
        try:
            self.study.tell(self.numbers[trial_id], value, state=state)
        except Exception as err:  # a NaN, or a trial the study finished meanwhile: logged, as Ray's OptunaSearch does
            logger.warning("trial %s: not told to the study (%s)", trial_id, err)
        self.completed.add(trial_id)
        self.live.pop(trial_id, None)


class StudyLimiter(ConcurrencyLimiter):
    """Tune's limit on trials at once, around a `StudySearch`, where a trial whose checkpoint found
    the disk full is neither told to the study nor forgotten: it stays running and live, so a
    --resume continues it (Tune's own limiter would drop the completion of a resumed errored trial)."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if error and markers.disk_full_reason(self.searcher.study_name, trial_id) is not None:
            return
        super().on_trial_complete(trial_id, result, error)


def study_of(search: ConcurrencyLimiter) -> optuna.Study:
    """The Optuna study a searcher made by `search.driver.tune_setup.searcher` asks and tells."""
    return search.searcher.study
