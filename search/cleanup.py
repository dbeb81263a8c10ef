"""Free the Ray Train workers of a trial that Tune has stopped.

In Ray 2.60, when Tune stops a trial (ASHA, or the end of a search), it kills the trial's
driver actor, but the Train V2 worker group's placement group stays reserved: only a
cleaner that polls Ray's State API, served by the dashboard, would free it
(ray-project/ray#54305). Without the dashboard the next trials wait for those CPUs forever.
So every worker reports its placement group's id with its metrics, and this callback
removes the group when its trial ends, whatever the user's dashboard setting. Removing a
group that Train already removed is harmless.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import tune

from search.trial import PLACEMENT_GROUP_KEY

logger = logging.getLogger(__name__)


def remove_placement_group(group_hex: str) -> None:
    """Remove the placement group with this hex id; its actors (the workers) die with it."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group as remove

    try:
        remove(PlacementGroup(PlacementGroupID.from_hex(group_hex)))
    except Exception as err:  # already gone: nothing to free
        logger.debug("placement group %s not removed: %s", group_hex, err)


class PlacementGroupReaper(tune.Callback):
    """Remembers each trial's worker placement group and removes it when the trial ends."""

    def __init__(self) -> None:
        self._groups: dict[str, str] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        group = result.get(PLACEMENT_GROUP_KEY)
        if group:
            self._groups[trial.trial_id] = group

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap(trial)

    def _reap(self, trial: Any) -> None:
        group = self._groups.pop(trial.trial_id, None)
        if group:
            remove_placement_group(group)
