"""A trial driver keeps its Ray Train worker process, and the worker's placement group, from
one of its trials to the next.

Ray Train starts a new worker group for every run: a placement group, then a worker actor,
a new process that imports torch and ray.train before the trial's first batch (2-4 s of CPU
on 2 cores, taken from the trial training beside it). A trial's driver runs trial after trial
(Tune's `reuse_actors`, search/driver/search_loop.py) with the same resources, so when a run ends (its
last epoch, or Tune stopping it: `search.seam.controller.fast_trainer`) this module stops the worker's training
thread between two batches (`trainables.loop.fit`'s `stop`), keeps the actor and its
placement group, and hands both to the driver's next run instead of new ones. Ray Train then
sets up its context on the kept worker as on a new one (`init_train_context` builds every
piece of a run's state afresh).

Only one-worker groups are kept (the default on one machine, and a GPU a trial): a group of
several would also keep torch's process group between runs. A worker whose training thread
does not end within `STOP_TIMEOUT_S` (a batch that long, a backbone pass over a large data
set), or that fails to answer, is killed as Ray Train would, and the next run starts anew.
The kept worker is the driver's actor and dies with it; the kept placement group is recorded
under the driver's id, not under a trial's, for `search.driver.placement_groups` to remove once the driver is
gone (Ray keeps a group until its creating job ends too).

Ray 2.60's private worker-group modules (pyproject.toml pins Ray): `install` points
`WorkerGroup._create_placement_group`, `WorkerGroup._create_workers` and
`state._shutdown_workers` at this module, in the trial driver's process only.
`KEEP_WORKERS_ENV` set to 0 turns it off (a measurement's other arm).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)
KEEP_WORKERS_ENV = "IMAGESEARCH_KEEP_WORKERS"
# A stopped run's training thread ends before its next batch: seconds on a CPU for a large
# batch; a thread still running after this is in something longer (a backbone pass). Kept
# below Tune's wait for a reused driver's last trial (search/driver/search_loop.py, 10 s) with the rest.
STOP_TIMEOUT_S = 4.0
# A kept worker answers at once when idle; one that does not within this is gone or stuck.
ALIVE_TIMEOUT_S = 3.0
# Set in a worker's process to end its run (search/trial.py passes it to `fit`).
STOP = threading.Event()


def enabled() -> bool:
    """Whether trial drivers keep their workers (the default; `KEEP_WORKERS_ENV`=0 turns it off)."""
    return os.environ.get(KEEP_WORKERS_ENV, "1") != "0"


def keeps(num_workers: int) -> bool:
    """Whether a run of `num_workers` workers runs on a kept worker (see the module's doc)."""
    return enabled() and num_workers == 1


# --- in the worker's process ---------------------------------------------------------------


def stop_run(timeout_s: float) -> bool:
    """Run by the driver on a worker (`RayTrainWorker.execute`): end its run's training thread and
    its checkpoint writes; True when the worker is idle, ready for another run (not after a run
    that failed). A write waiting
    for the driver to take its report (a queue of one that nobody reads once Tune stopped the
    trial) is let through: the report is dropped, the checkpoint is on disk."""
    from ray.train.v2._internal.execution.context import get_train_context

    STOP.set()
    context = get_train_context()
    execution = context.execution_context
    deadline = time.monotonic() + timeout_s
    while True:
        _drain(execution.result_queue)
        if not execution.training_thread_runner.is_running():
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    # The thread flushed its writes on its way out (search/trial.py, Ray's own flush after a
    # train function that returned); their reports are dropped here.
    _drain(execution.result_queue)
    if execution.training_thread_runner.get_error() is not None:
        # A run that failed (out of memory, a limit its code set, a diverged loss) may have left
        # the process in a state of its own: the retry and the next trial get a new one.
        return False
    gc.collect()  # the last run's model and optimizer, before the next one builds its own
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return True


def _drain(results: Any) -> None:
    import queue

    while True:
        try:
            results.get_nowait()
        except queue.Empty:
            return
        results.task_done()


def start_run() -> None:
    """At a run's start in a worker: clear a stop left by the last run, and give the run a
    checkpoint-writing thread pool of its own. Ray 2.60's `TrainContext` shares one pool, a
    dataclass default, among every context of a process and shuts it down when a run's train
    function returns: a second run in the same process could not write its checkpoints."""
    from concurrent.futures import ThreadPoolExecutor

    from ray.train.v2._internal.execution.context import MAX_CHECKPOINT_UPLOAD_THREADS, get_train_context

    STOP.clear()
    get_train_context().checkpoint_upload_threadpool = ThreadPoolExecutor(max_workers=MAX_CHECKPOINT_UPLOAD_THREADS)


# --- in the driver's process ---------------------------------------------------------------


class _KeptHandle:
    """Ray Train's placement-group handle, removed only when its workers are not kept."""

    def __init__(self, handle: Any, key: tuple) -> None:
        self.inner, self.key = handle, key
        self.kept = False  # its workers are idle and kept (`_shutdown_workers`): its removal is skipped
        self.reused = False  # taken from the pool for the run starting now: its workers are kept ones
        self.actors: list[Any] = []  # its workers, by bundle index

    @property
    def placement_group(self) -> Any:
        return self.inner.placement_group

    def ready(self) -> Any:
        return self.inner.ready()

    def wait(self, timeout_seconds: float = 30) -> bool:
        return self.inner.wait(timeout_seconds)

    def shutdown(self) -> None:
        if not self.kept:
            from search.seam.markers import forget_kept_group

            group = self.placement_group.id.hex()
            _HANDLES.pop(group, None)
            self.inner.shutdown()
            with contextlib.suppress(Exception):  # a record left behind names a removed group: harmless
                forget_kept_group(group)


class _Pool:
    """The driver's idle kept group: at most one (a driver runs one trial at a time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: _KeptHandle | None = None

    def take(self, key: tuple) -> _KeptHandle | None:
        with self.lock:
            handle, self.idle = self.idle, None
        if handle is not None and handle.key != key:  # another search's resources (tests): not this run's
            _discard(handle)
            return None
        return handle

    def give_back(self, handle: _KeptHandle) -> bool:
        with self.lock:
            if self.idle is None:
                self.idle = handle
                return True
        return False


_POOL = _Pool()
# The kept-eligible handles of this process, by placement group id: `_create_workers` gets the
# group, `_shutdown_workers` only the workers.
_HANDLES: dict[str, _KeptHandle] = {}


def _discard(handle: _KeptHandle) -> None:
    import ray

    for actor in handle.actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
    handle.kept = False
    with contextlib.suppress(Exception):
        handle.shutdown()


def install() -> None:
    """Make this process's one-worker Ray Train runs keep their worker (idempotent)."""
    from ray.train.v2._internal.execution.worker_group import state
    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

    if getattr(WorkerGroup._create_workers, "__module__", None) == __name__:
        return
    create_group, create_workers = WorkerGroup._create_placement_group, WorkerGroup._create_workers
    shutdown_workers = state._shutdown_workers

    def _create_placement_group(self: Any, scaling_config: Any, context: Any) -> Any:
        if not keeps(context.num_workers) or getattr(scaling_config, "use_tpu", False):
            return create_group(self, scaling_config, context)
        key = (context.num_workers, repr(sorted(context.resources_per_worker.items())), context.placement_strategy,
               repr(context.label_selector))
        handle = _POOL.take(key)
        if handle is None:
            from search.seam.markers import record_kept_group

            handle = _KeptHandle(create_group(self, scaling_config, context), key)
            _HANDLES[handle.placement_group.id.hex()] = handle
            record_kept_group(handle.placement_group.id.hex())  # removed after this driver, if not by it
        else:
            handle.kept, handle.reused = False, True
        return handle

    def _create_workers(self: Any, num_workers: int, placement_group: Any, resources_per_worker: dict[str, float],
                        placement_group_bundle_indices: list[int] | None = None, starting_world_rank: int = 0,
                        world_size: int | None = None, replica_group_size: int | None = None) -> list[Any]:
        handle = _HANDLES.get(placement_group.id.hex())
        whole = handle is not None and placement_group_bundle_indices is None
        if whole and handle.reused and len(handle.actors) == num_workers:
            handle.reused = False
            workers = _revive(handle.actors, resources_per_worker)
            if workers is not None:
                return WorkerGroup._assign_worker_ranks(workers, starting_world_rank, world_size, replica_group_size)
        workers = create_workers(self, num_workers, placement_group, resources_per_worker,
                                 placement_group_bundle_indices, starting_world_rank, world_size, replica_group_size)
        if whole:
            handle.actors = [w.actor for w in workers]
        elif handle is not None:  # a replaced replica (not a one-worker group's way): not kept
            handle.actors = []
        return workers

    def _shutdown_workers(workers: list[Any], patience_s: float = 5) -> None:
        handle = _owner(workers)
        if handle is not None and _stop_all(workers) and _POOL.give_back(handle):
            handle.kept = True
            return
        shutdown_workers(workers, patience_s)

    for patch in (_create_placement_group, _create_workers, _shutdown_workers):
        patch.__module__ = __name__
    WorkerGroup._create_placement_group = _create_placement_group
    WorkerGroup._create_workers = _create_workers
    state._shutdown_workers = _shutdown_workers


def _owner(workers: list[Any]) -> _KeptHandle | None:
    """The kept-eligible handle whose workers are exactly `workers`."""
    actors = sorted(id(w.actor) for w in workers)
    for handle in list(_HANDLES.values()):
        if handle.actors and sorted(id(a) for a in handle.actors) == actors:
            return handle
    return None


def _revive(actors: list[Any], resources_per_worker: dict[str, float]) -> list[Any] | None:
    """Kept actors as Ray Train's `Worker`s, their metadata asked again; None (and the actors
    killed) when one does not answer."""
    import ray
    from ray.train.v2._internal.execution.worker_group.worker import Worker

    try:
        metadata = ray.get([actor.get_metadata.remote() for actor in actors], timeout=ALIVE_TIMEOUT_S)
    except Exception as err:
        logger.warning("starting a new Ray Train worker: the kept one did not answer (%s)", err)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        return None
    return [Worker(actor, meta, resources_per_worker, placement_group_bundle_index=i)
            for i, (actor, meta) in enumerate(zip(actors, metadata))]


def _stop_all(workers: list[Any]) -> bool:
    """Stop every worker's run (`stop_run`); whether all are idle now."""
    import ray

    try:
        for worker in workers:
            worker.actor.shutdown.remote()  # Ray Train's worker callbacks' end of a run, as before a kill
        return all(ray.get([w.actor.execute.remote(stop_run, STOP_TIMEOUT_S) for w in workers],
                           timeout=STOP_TIMEOUT_S + ALIVE_TIMEOUT_S))
    except Exception as err:  # a dead or stuck worker: Ray Train's shutdown kills it
        logger.debug("not keeping the Ray Train worker: %s", err)
        return False
