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

A group a trial's driver keeps for its next trial (search/workerpool.py) is not its trial's: the
driver records it under its own actor id instead, and this callback removes it once that
driver is dead (Ray removes a group only when its creating actor and job are both gone);
search/rounds.py removes every such group when the round ends.

Trials start no such cleaner (search/trial.py leaves Train's callback out).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import tune

logger = logging.getLogger(__name__)
KV_NAMESPACE = "imagesearch"


def _trial_prefix(trial_id: str) -> str:
    import ray

    return f"placement-groups/{ray.get_runtime_context().get_job_id()}/{trial_id}/"


def register_placement_group(trial_id: str) -> None:
    """In a Train worker: record the worker group's placement group as this trial's."""
    import ray.util
    from ray.experimental import internal_kv

    group = ray.util.get_current_placement_group()
    if group is not None:
        internal_kv._internal_kv_put(_trial_prefix(trial_id) + group.id.hex(), b"", namespace=KV_NAMESPACE)


def remove_trial_placement_groups(trial_id: str) -> int:
    """Remove every placement group the trial's workers recorded; returns how many."""
    from ray.experimental import internal_kv

    prefix = _trial_prefix(trial_id)
    keys = internal_kv._internal_kv_list(prefix, namespace=KV_NAMESPACE)
    for key in keys:
        remove_placement_group(key.decode().rsplit("/", 1)[1])
    internal_kv._internal_kv_del(prefix, del_by_prefix=True, namespace=KV_NAMESPACE)
    return len(keys)


def remove_placement_group(group_hex: str) -> None:
    """Remove the placement group with this hex id; its actors (the workers) die with it."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup
    from ray.util.placement_group import remove_placement_group as remove

    try:
        remove(PlacementGroup(PlacementGroupID.from_hex(group_hex)))
    except Exception as err:  # already gone: nothing to free
        logger.debug("placement group %s not removed: %s", group_hex, err)


def _kept_prefix() -> str:
    import ray

    return f"kept-placement-groups/{ray.get_runtime_context().get_job_id()}/"


def _kept_key(group_hex: str) -> str:
    """The record of a group kept by the calling driver: its prefix, the driver's actor id, the group."""
    import ray

    return f"{_kept_prefix()}{ray.get_runtime_context().get_actor_id()}/{group_hex}"


def register_kept_group(group_hex: str) -> None:
    """In a trial's driver: record a placement group it keeps across its trials as its own."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_kept_key(group_hex), b"", namespace=KV_NAMESPACE)


def forget_kept_group(group_hex: str) -> None:
    """In a trial's driver: the group it kept is removed (or no longer kept)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(_kept_key(group_hex), namespace=KV_NAMESPACE)


def remove_kept_groups(everything: bool = False) -> int:
    """Remove the groups kept by drivers that are dead (all of them with `everything`); returns how many."""
    from ray._private import state
    from ray.experimental import internal_kv

    removed = 0
    for key in internal_kv._internal_kv_list(_kept_prefix(), namespace=KV_NAMESPACE):
        driver, group = key.decode().rsplit("/", 2)[1:]
        if not everything:
            info = state.actors(actor_id=driver)
            if info and info.get("State") != "DEAD":
                continue
        remove_placement_group(group)
        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
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
