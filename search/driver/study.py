"""The search's Optuna study in `optuna.db`, the truth on resume: opened, read and closed here
(Tune's searcher over it is `search.driver.study_searcher.StudySearch`). Each trial the search ran carries
its Tune trial id (`TUNE_TRIAL_ID`); trials a warm start told it do not.
"""

from __future__ import annotations

import logging

import optuna

logger = logging.getLogger(__name__)
TUNE_TRIAL_ID = "tune_trial_id"
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
