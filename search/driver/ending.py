"""When a search ends before its trials run out: a time budget spent, or an objective stalled.

Both end it gracefully, unlike Ctrl-C: no new trial starts (the searcher answers "finished"),
and with a time budget the running trials stop after the epoch they are in (its checkpoint
taken), while a stalled search lets them run out. The rule lives in the driver; the searcher
(`search.driver.study`) and Tune's stopper (`BudgetStopper`) consult it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune


@dataclass
class EndRule:
    """`time_s`: seconds of search left for this run (the budget less what earlier runs of the
    search spent); `stalled`: finished trials in a row without a better best value."""

    time_s: float | None = None
    stalled: int | None = None
    mode: str = "max"
    budget_s: float | None = None  # the whole budget, as the user gave it: for the messages
    started: float = field(default_factory=time.monotonic)
    ended_by: str | None = None
    stopped_trials: set[str] = field(default_factory=set)  # the trials the time budget stopped

    def time_up(self) -> bool:
        if self.time_s is None or time.monotonic() - self.started < self.time_s:
            return False
        if self.ended_by is None:
            self.ended_by = f"time budget of {_duration(self.budget_s or self.time_s)} spent"
        return True

    def stalled_after(self, values: list[float]) -> bool:
        """Whether `values` (the finished trials' objective, in the order they finished) end
        with `stalled` trials none of which beat the best before them."""
        if self.stalled is None or len(values) <= self.stalled:
            return False
        better = max if self.mode == "max" else min
        before = better(values[:-self.stalled])
        if better([before, *values[-self.stalled:]]) != before:
            return False
        if self.ended_by is None:
            self.ended_by = (f"stalled: {self.stalled} finished trials in a row without a better value "
                             f"than {before:.4g}")
        return True

    def should_end(self, values: list[float]) -> bool:
        """Whether the search should start no more trials."""
        return self.time_up() or self.stalled_after(values)


class BudgetStopper(tune.Stopper):
    """Stops each trial at the first epoch it reports once the time budget is spent: that
    epoch's checkpoint is taken, nothing trained is lost."""

    def __init__(self, rule: EndRule) -> None:
        self.rule = rule

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.rule.time_up():
            self.rule.stopped_trials.add(trial_id)
            return True
        return False

    def stop_all(self) -> bool:
        return False  # running trials finish their epoch first


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"
