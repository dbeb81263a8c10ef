"""Why a trial's Ray Train run failed: the training code, the machine, or memory.

`trainer.fit()` raises Ray Train's `TrainingFailedError`; a `WorkerGroupError` holds each
failed rank's exception (the training code's own, or Ray's word that the worker process
died). The trial driver (`search.trial.driver.run_trial`) decides from `classify`:

- `ERROR`: a Python exception raised by the training code (a diverged loss, a bug, a bad
  hyperparameter, a full disk). Running it again from the same checkpoint raises it again,
  so the trial ends at once.
- `INFRASTRUCTURE`: a worker process or its node died (killed, lost, preempted, a hung
  health check). Retried from the last checkpoint, up to `TrialSettings.max_failures` times.
- `RELEASED`: Ray destroyed the run's processes because their placement group was removed:
  Tune stopped the trial (its last epoch reported while Train was still closing the run, or
  ASHA, or the search ending) and gave its resources back. Nothing failed, nothing is retried.
- `OUT_OF_MEMORY`: the GPU ran out of memory (`torch.OutOfMemoryError` raised in a worker),
  torch's CPU allocator or Python could not get the memory a batch needs (a worker's memory
  limit, a host without overcommit), or Ray's memory monitor killed a worker because the
  node ran low on memory. Retried once, with half the batch size.

Ray-only: torch is not imported (the driver never needs it), its OOM is told by name.
"""

from __future__ import annotations

import enum

# Ray's memory monitor's words when it kills a worker ("Task was killed due to the node
# running low on memory"), inside the ActorDiedError of the dead worker (Ray 2.60).
HOST_OOM_TEXT = "running low on memory"
# torch's CUDA OOM message; also how a torch.OutOfMemoryError reads once it is only text.
CUDA_OOM_TEXT = "CUDA out of memory"
# torch's CPU allocator when the process may not have more memory: a RuntimeError that reads
# "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes".
CPU_OOM_TEXT = "can't allocate memory"
# Ray's exit detail for a process it destroyed on purpose because its placement group was
# removed ("Worker exit type: INTENDED_SYSTEM_EXIT Worker exit detail: Destroying worker since
# its placement group was removed", Ray 2.59 and 2.60): the owner gave the resources back.
RELEASED_TEXT = "placement group was removed"


class Failure(enum.Enum):
    """What a failed run of a trial's training was caused by (see the module docstring)."""

    ERROR = "error"
    INFRASTRUCTURE = "infrastructure"
    RELEASED = "released"
    OUT_OF_MEMORY = "out of memory"


def _is_torch_oom(error: BaseException) -> bool:
    names = {(cls.__module__.split(".")[0], cls.__name__) for cls in type(error).__mro__}
    text = str(error)
    return (("torch", "OutOfMemoryError") in names or isinstance(error, MemoryError) or CUDA_OOM_TEXT in text
            or CPU_OOM_TEXT in text)


def _is_ray_failure(error: BaseException) -> bool:
    """An exception Ray raised about a process, an actor or a node, not one of the training code."""
    from ray.exceptions import RayError
    from ray.train.v2.api.exceptions import RayTrainError

    return isinstance(error, (RayError, RayTrainError))


def _dead_worker(error: BaseException) -> Failure | None:
    """INFRASTRUCTURE, OUT_OF_MEMORY (the memory monitor killed it) or RELEASED (destroyed with
    its placement group) when `error` says a worker process or node died; None for an exception
    of the training code."""
    from ray.exceptions import OutOfMemoryError as HostOutOfMemory

    if not _is_ray_failure(error):
        return None
    if RELEASED_TEXT in str(error):
        return Failure.RELEASED
    host_oom = isinstance(error, HostOutOfMemory) or HOST_OOM_TEXT in str(error)
    return Failure.OUT_OF_MEMORY if host_oom else Failure.INFRASTRUCTURE


def classify_failures(failures: list[BaseException]) -> Failure:
    """Why the ranks of one run failed, from each failed rank's exception.

    With several workers, one rank's death makes the others fail too (a collective aborts,
    a connection resets: Python exceptions of their own), so a dead worker on any rank
    decides; then an out-of-memory on any rank; else it is the training code's own error. A
    rank destroyed with its placement group means the run was released on purpose, whatever
    the other ranks say.
    """
    deaths = {_dead_worker(failure) for failure in failures} - {None}
    if Failure.RELEASED in deaths:
        return Failure.RELEASED
    if deaths:
        return Failure.OUT_OF_MEMORY if Failure.OUT_OF_MEMORY in deaths else Failure.INFRASTRUCTURE
    return Failure.OUT_OF_MEMORY if any(map(_is_torch_oom, failures)) else Failure.ERROR


def classify(error: BaseException) -> Failure:
    """Why `trainer.fit()` raised `error` (Ray Train's `TrainingFailedError`, or a Ray error
    when the run's controller itself died)."""
    from ray.train.v2.api.exceptions import ControllerError, PreemptionError, WorkerGroupError

    if isinstance(error, PreemptionError):
        return Failure.INFRASTRUCTURE
    if isinstance(error, WorkerGroupError):
        return classify_failures(list(error.worker_failures.values()))
    if isinstance(error, ControllerError):
        # Ray Train retries its retryable controller errors (the worker group's start-up) itself.
        error = error.controller_failure
    return classify_failures([error])
