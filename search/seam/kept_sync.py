"""One Ray Train synchronisation actor per trial driver, kept from one of its trials to the next.

Ray Train starts a `SynchronizationActor` (the barrier every `ray.train.report` passes) for
each run and kills it when the run ends: a process of its own, which imports ray.train. On 2
cores that is ~1.5 s of CPU per trial, taken from the trial that is training beside it. A
trial's driver runs trial after trial (Tune's `reuse_actors`, search/driver/search_loop.py), always with
the same world size, so it keeps the actor and clears its barrier before each run, as Ray Train
itself does when it replaces a failed replica group.

Ray 2.60's private worker-group modules (pyproject.toml pins Ray): `install` points their
`SynchronizationActor` and `_shutdown_sync_actor` at this module, in the trial driver's process
only, where every Train run is a trial of ours.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

logger = logging.getLogger(__name__)
# A reset is one call to an idle actor; one that takes longer is stuck or gone: a new one is started.
RESET_TIMEOUT_S = 10.0
# The kept actor, by what it was started with (its node, timeouts): in this process, per Ray cluster.
_KEPT: dict[str, Any] = {}


def install() -> None:
    """Make this process's Ray Train runs share one synchronisation actor (idempotent)."""
    from ray.train.v2._internal.execution.worker_group import state, worker_group

    if worker_group.SynchronizationActor is not _KeptSynchronizationActor:
        _KeptSynchronizationActor.original = worker_group.SynchronizationActor
        worker_group.SynchronizationActor = _KeptSynchronizationActor
        kill = state._shutdown_sync_actor
        state._shutdown_sync_actor = lambda actor: None if _is_kept(actor) else kill(actor)


def _is_kept(actor: Any) -> bool:
    return any(actor is handle for handle in _KEPT.values())


class _KeptSynchronizationActor:
    """Stands in for `SynchronizationActor` where Ray Train's worker group starts one:
    `.options(...).remote(...)` returns the kept actor, its barrier cleared, or starts it."""

    original: Any = None  # Ray's SynchronizationActor

    @classmethod
    def options(cls, **options: Any) -> _Starter:
        return _Starter(cls.original, options)


class _Starter:
    def __init__(self, actor_class: Any, options: dict[str, Any]) -> None:
        self.actor_class, self.options = actor_class, options

    def remote(self, **kwargs: Any) -> Any:
        import ray

        # A new Ray cluster in the same process (tests) has new node ids: its actor is not an old one's.
        key = repr((ray.get_runtime_context().get_node_id(), sorted(self.options.items(), key=str),
                    sorted(kwargs.items())))
        handle = _KEPT.get(key)
        if handle is not None:
            try:
                # Wakes any rank left at the barrier by the last run's killed workers (they raise
                # and leave), and forgets a preemption's narrowed set of ranks.
                ray.get([handle.reset.remote(), handle.set_required_ranks.remote(None)], timeout=RESET_TIMEOUT_S)
                return handle
            except Exception as err:  # whatever the old one's trouble, a new one replaces it
                logger.warning("starting a new Ray Train synchronisation actor: the kept one failed its reset (%s)",
                               err)
                _KEPT.pop(key, None)
                with contextlib.suppress(Exception):
                    ray.kill(handle)
        handle = self.actor_class.options(**self.options).remote(**kwargs)
        _KEPT[key] = handle
        return handle
