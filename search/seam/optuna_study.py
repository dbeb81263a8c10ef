"""The searcher's study: which study a searcher Tune unpickles belongs to now, and an Optuna
trial still running, taken up again by its number.

Tune pickles the searcher (tuner.pkl, searcher-state-*.pkl) and `Tuner.restore` takes no
searcher, so a restored searcher learns from here where its study is now (OUT may have moved)
and the rule that ends this run early (`bind`): module state, because Tune's pickling forces it.

Optuna has no public way to take up a RUNNING trial again (`study.ask()` always makes a new
one): `live_trial` builds `optuna.trial.Trial` from the stored trial's private `_trial_id`
(Optuna 4.5 to 5.1; `tests/search/seam/test_contracts.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from search.driver.ending import EndRule

_study_url: str | None = None
_end_rule: EndRule | None = None


def bind(study_url: str | None, end_rule: EndRule | None = None) -> None:
    """The study of the search about to run or be restored (its OUT may have moved since), and
    the rule that ends it early (pickled searchers come back without it: it is this run's)."""
    global _study_url, _end_rule
    _study_url, _end_rule = study_url, end_rule


def bound_study_url() -> str | None:
    return _study_url


def bound_end_rule() -> EndRule | None:
    return _end_rule


def live_trial(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """The study's trial `number` as a live Optuna trial: its parameters, reports and user
    attributes go to the stored trial. Raises KeyError when the study has no such trial."""
    import optuna

    for frozen in study.get_trials(deepcopy=False):
        if frozen.number == number:
            return optuna.trial.Trial(study, frozen._trial_id)
    raise KeyError(f"trial {number} of study {study.study_name}")
