"""Free the Ray Train workers of a trial that Tune has stopped.

In Ray 2.60, when Tune stops a trial (ASHA, or the end of a search), it kills the trial's
driver actor, but the Train V2 worker group's placement group stays reserved: only a
cleaner that polls Ray's State API, served by the dashboard, would free it
(ray-project/ray#54305). Without the dashboard the next trials wait for those CPUs forever.
So every Train worker records its placement group's id under its trial's id in Ray's GCS
key-value store when it starts (every attempt: Train makes a new group when it restarts
failed workers, and a trial whose last attempt fails leaves that group behind too), and this
callback removes the trial's groups when it ends, whatever the user's dashboard setting.
Removing a group that Train already removed is harmless.

A group a trial's driver keeps for its next trial (search/seam/kept_workers.py) is not its trial's: the
driver records it under its own actor id instead, and this callback removes it once that
driver is dead (Ray removes a group only when its creating actor and job are both gone);
search/driver/search_loop.py removes every such group when the round ends.

Trials start no such cleaner (search/trial.py leaves Train's callback out).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray import tune

from search.seam import cluster_info, markers

logger = logging.getLogger(__name__)


def register_placement_group(trial_id: str) -> None:
    """In a Train worker: record the worker group's placement group as this trial's."""
    group = ray.util.get_current_placement_group()
    if group is not None:
        markers.record_trial_group(trial_id, group.id.hex())


def remove_trial_placement_groups(trial_id: str) -> int:
    """Remove every placement group the trial's workers recorded; returns how many."""
    groups = markers.take_trial_groups(trial_id)
    for group in groups:
        remove_placement_group(group)
    return len(groups)


def remove_placement_group(group_hex: str) -> None:
    """Remove the placement group with this hex id; its actors (the workers) die with it."""
    from ray.util.placement_group import PlacementGroup

    try:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_hex)))
    except Exception as err:  # already gone: nothing to free
        logger.debug("placement group %s not removed: %s", group_hex, err)


def remove_kept_groups(everything: bool = False) -> int:
    """Remove the groups kept by drivers that are dead (all of them with `everything`); returns how many."""
    removed = 0
    for key, driver, group in markers.kept_groups():
        if not everything and cluster_info.actor_alive(driver):
            continue
        remove_placement_group(group)
        markers.forget(key)
        removed += 1
    return removed


class PlacementGroupReaper(tune.Callback):
    """Removes a trial's worker placement groups when the trial ends, and those of drivers gone."""

    SWEEP_EVERY_S = 5.0  # a look at the kept groups' drivers: a few calls to Ray's GCS

    def __init__(self) -> None:
        self.swept = time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.swept >= self.SWEEP_EVERY_S:
            self.swept = time.monotonic()
            remove_kept_groups()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap(trial)

    def _reap(self, trial: Any) -> None:
        remove_trial_placement_groups(trial.trial_id)
