"""What Ray's GCS knows of the cluster that no public API without the dashboard tells:
an actor's state, the autoscaler's largest cluster, and a cluster.yaml's validity.

Private modules of Ray (unchanged from Ray 2.59 to 2.60; `tests/search/seam/test_contracts.py`):
`ray._private.state` and `ray.autoscaler._private.util`. Ray's public state API
(`ray.util.state`) asks the dashboard, which a user's cluster may not run.
"""

from __future__ import annotations

from typing import Any


def actor_alive(actor_id: str) -> bool:
    """Whether the actor is known and not DEAD (a restarting actor counts as alive)."""
    from ray._private import state

    info = state.actors(actor_id=actor_id)
    return bool(info) and info.get("State") != "DEAD"


def live_actor_classes() -> list[str]:
    """The class names of every actor not DEAD."""
    return [a["ActorClassName"] for a in actors().values() if a["State"] != "DEAD"]


def autoscaler_ceiling() -> dict[str, float]:
    """The autoscaler's largest cluster (its node types x max workers), or {} without an
    autoscaler. Call it on the cluster (a Ray Client driver has no GCS state of its own)."""
    from ray._private.state import state as ray_state

    return ray_state.get_max_resources_from_cluster_config() or {}


def validate_cluster_config(config: dict[str, Any]) -> dict[str, Any]:
    """A cluster.yaml's content filled with Ray's defaults and checked against Ray's schema, as
    `ray up` does (no credentials needed); raises on an invalid one."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def actors() -> dict[str, dict[str, Any]]:
    """Every actor Ray's GCS knows of, by id: Ray's record (ActorClassName, State, StartTime, Address, Pid, ...)."""
    from ray._private import state

    return state.actors()


def session_dir() -> str:
    """The running local Ray's session folder (its logs are in `logs/`)."""
    from ray._private import worker

    return worker._global_node.get_session_dir_path()


def local_ray_processes() -> dict[str, Any]:
    """The raylet's and the GCS server's processes (`subprocess.Popen`) of the local Ray this
    process started (`ray._private.worker._global_node.all_processes`); {} for a Ray it joined."""
    from ray._private import worker

    processes = getattr(getattr(worker, "_global_node", None), "all_processes", None) or {}
    return {kind: info.process for kind in ("raylet", "gcs_server") for info in processes.get(kind, [])
            if getattr(info, "process", None) is not None}
