"""`--warm-start OTHER_OUT`: tell a new study the finished trials of an earlier search.

TPE then starts from what that search learnt instead of from random points. Each earlier
trial is replayed through the new space (`optuna.trial.FixedTrial`): a parameter the new space
does not have is dropped, and a trial the new space cannot hold (a value outside a narrowed
range, a parameter it needs that the earlier search did not have) is left out; both are said
in one line.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from search.experiment.spec import Experiment, SpecError
from search.state.names import MANIFEST_FILE, STUDY_FILE

WARM_FROM = "warm_start_from"  # user attr of a told trial: the search it came from


def _other_study(other: Path, experiment: Experiment) -> optuna.Study:
    """The study in OTHER_OUT, checked to rank trials as this experiment does."""
    db = other / STUDY_FILE
    if not db.is_file():
        raise SpecError("--warm-start", str(other), f"a search folder holding {STUDY_FILE} (a finished or "
                                                     "interrupted search's --out)")
    storage = f"sqlite:///{db}"
    names = optuna.study.get_all_study_names(storage)
    if len(names) != 1:
        raise SpecError("--warm-start", str(other), f"a search folder with one study in {STUDY_FILE} "
                                                     f"(it has {len(names)})")
    manifest = other / MANIFEST_FILE
    if manifest.is_file():
        objective = json.loads(manifest.read_text()).get("experiment", {}).get("objective")
        if objective is not None and objective != repr(experiment.objective):
            raise SpecError("--warm-start", str(other), f"a search with the same objective: it ranked trials by "
                                                         f"{objective}, this one by {experiment.objective!r}")
    return optuna.load_study(study_name=names[0], storage=storage)


def _replay(params: dict[str, Any], space: Callable[[Any], Any]) -> optuna.trial.FixedTrial | None:
    """The earlier trial's parameters as the new space draws them, or None where it cannot."""
    fixed = optuna.trial.FixedTrial(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FixedTrial only warns of a value outside a distribution
        try:
            space(fixed)
        except (ValueError, UserWarning):
            return None
    return fixed


def warm_start(study: optuna.Study, other: Path, experiment: Experiment, space: Callable[[Any], Any]) -> str:
    """Tell `study` the completed trials of the search in `other`; one line saying what was told."""
    earlier = _other_study(other, experiment)
    done = earlier.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    told, left_out, dropped = 0, 0, set()
    for trial in done:
        fixed = _replay(trial.params, space)
        if fixed is None or trial.value is None:
            left_out += 1
            continue
        dropped |= set(trial.params) - set(fixed.params)
        study.add_trial(optuna.trial.create_trial(
            params=fixed.params, distributions=fixed.distributions, value=trial.value,
            intermediate_values=trial.intermediate_values,
            user_attrs={WARM_FROM: str(other), "warm_start_trial": trial.number}))
        told += 1
    line = f"Warm start: told the study {told} completed trials of {other}"
    if left_out:
        line += f"; left out {left_out} this space cannot hold (a value outside it, or a parameter it lacks)"
    if dropped:
        line += f"; dropped parameters this space does not have: {', '.join(sorted(dropped))}"
    return line
