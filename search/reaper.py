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

That cleaner is itself a detached actor that polls the State API until its Train controller
is dead; without the dashboard it polls forever, one idle process per stopped trial. So
the callback also ends the cleaners of this job whose controller has died, reading actor
states from Ray's GCS, which needs no dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
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


CLEANER_CLASS = "PlacementGroupCleaner"
CONTROLLER_CLASS = "TrainController"


# Ray's cleaner polls every second; with the dashboard up it is done well within this.
CLEANER_GRACE_S = 5.0


def _address(info: dict) -> tuple[str, int]:
    return info.get("IPAddress", ""), info.get("Port", 0)


def _kill_process(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited on its own meanwhile
        os.kill(pid, signal.SIGKILL)


def _end(actors: list[dict]) -> None:
    """End actors we hold no handle for (Ray offers none for an anonymous detached actor):
    kill their processes, on their own node through a zero-CPU task when it is not ours."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    remote_kill = ray.remote(num_cpus=0)(_kill_process)
    pending = []
    for actor in actors:
        node = actor["Address"].get("NodeID")
        if node == here:
            _kill_process(actor["Pid"])
        else:
            pending.append(remote_kill.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(actor["Pid"]))
    ray.get(pending)


def end_orphaned_cleaners(wait_s: float = 0.0) -> int:
    """End this job's Train placement-group cleaners whose controller is dead; returns how many.

    A cleaner gets `CLEANER_GRACE_S` after its controller's death to finish by itself (it does
    when the dashboard is up). With `wait_s`, wait up to that long for this job's controllers
    to die and their cleaners' grace to pass (Tune kills stopped trials asynchronously).
    """
    import ray
    from ray._private import state

    job = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + wait_s
    while True:
        actors = [a for a in state.actors().values() if a.get("JobID") == job]
        controllers = {_address(a["Address"]): a for a in sorted(actors, key=lambda a: a.get("StartTime", 0))
                       if a["ActorClassName"] == CONTROLLER_CLASS}
        controllers_alive = any(a["State"] != "DEAD" for a in controllers.values())
        orphans, waiting = [], []
        for actor in actors:
            owner = controllers.get(_address(actor["OwnerAddress"]))
            if actor["ActorClassName"] != CLEANER_CLASS or actor["State"] != "ALIVE" or not owner \
                    or owner["State"] != "DEAD":
                continue
            dead_for_s = time.time() - owner.get("EndTime", 0) / 1000
            (orphans if dead_for_s > CLEANER_GRACE_S else waiting).append(actor)
        if (not controllers_alive and not waiting) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    orphans = [a for a in orphans if a.get("Pid")]
    if orphans:
        logger.info("Ending %d placement-group cleaners that Ray Train left polling (ray-project/ray#54305)",
                    len(orphans))
        _end(orphans)
    return len(orphans)


class PlacementGroupReaper(tune.Callback):
    """Removes a trial's worker placement groups when the trial ends, and orphaned cleaners."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._reap(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        end_orphaned_cleaners(wait_s=30.0)

    def _reap(self, trial: Any) -> None:
        remove_trial_placement_groups(trial.trial_id)
        end_orphaned_cleaners()  # those of trials stopped earlier; this one's controller may still run
