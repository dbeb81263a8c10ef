"""Why a trial's Train run failed decides what happens next: the training code's own error
ends the trial, a dead worker is retried, an out-of-memory is retried with half the batch."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
import torch
from ray.exceptions import ActorDiedError, OutOfMemoryError, RayActorError
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from search.report.table import trial_note
from search.trial.failures import Failure, classify
from search.trial.settings import trial_batch

HOST_OOM = ("The actor is dead because its worker process has died. Worker exit type: USER_ERROR Worker exit detail: "
            "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.1) ...")

# A completed trial on Ray's documented path: Tune stops it at its last report and removes its placement
# group while Train is still closing the run; the controller and the worker are destroyed with it.
RELEASED = ("The actor is dead because its worker process has died. Worker exit type: INTENDED_SYSTEM_EXIT Worker "
            "exit detail: Destroying worker since its placement group was removed. Placement group id: 1c55931b, "
            "bundle index: -1")


def dead(message: str = ActorDiedError.BASE_ERROR_MSG) -> WorkerHealthCheckFailedError:
    """How Ray Train reports a worker whose process died: its health check failed with the actor's death."""
    return WorkerHealthCheckFailedError("Worker health check failed.", RayActorError(error_msg=message))


def workers(*failures: BaseException) -> WorkerGroupError:
    """The error `trainer.fit()` raises, after the trip from the controller (pickled) as in Ray."""
    error = WorkerGroupError("...", dict(enumerate(failures)))
    return pickle.loads(pickle.dumps(error))


@pytest.mark.parametrize("error, kind", [
    (workers(FloatingPointError("training loss became nan in epoch 1 (lr 10): diverged")), Failure.ERROR),
    (workers(ValueError("a bad hyperparameter")), Failure.ERROR),
    (workers(OSError(28, "No space left on device")), Failure.ERROR),
    (workers(dead()), Failure.INFRASTRUCTURE),
    # the other rank fails too once one is dead: its error is collateral
    (workers(RuntimeError("Connection closed by peer"), dead()), Failure.INFRASTRUCTURE),
    (workers(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")), Failure.OUT_OF_MEMORY),
    (workers(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")), Failure.OUT_OF_MEMORY),
    (workers(dead(HOST_OOM)), Failure.OUT_OF_MEMORY),
    (workers(OutOfMemoryError("Task was killed due to the node running low on memory.")), Failure.OUT_OF_MEMORY),
    (workers(dead(HOST_OOM), RuntimeError("Connection closed by peer")), Failure.OUT_OF_MEMORY),
    (ControllerError(ValueError("bad storage path")), Failure.ERROR),
    (RayActorError(error_msg="the controller's node was lost"), Failure.INFRASTRUCTURE),
    (ActorDiedError(), Failure.INFRASTRUCTURE),
    (RayActorError(error_msg=RELEASED), Failure.RELEASED),
    (ControllerError(RayActorError(error_msg=RELEASED)), Failure.RELEASED),
    (workers(dead(RELEASED)), Failure.RELEASED),
    (workers(RuntimeError("Connection closed by peer"), dead(RELEASED)), Failure.RELEASED),
    (KeyError("a bug of ours"), Failure.ERROR),
])
def test_a_failure_is_the_code_the_machine_or_memory(error: BaseException, kind: Failure) -> None:
    assert classify(error) is kind


def test_an_out_of_memory_halves_the_batch_once_and_a_checkpoint_keeps_it() -> None:
    assert trial_batch(64, None, halve=False) == (64, "")
    halved = (32, "out of memory at batch_size 64: retried with 32")
    assert trial_batch(64, None, halve=True) == halved
    # a checkpoint from before the out-of-memory: its batch size is halved
    assert trial_batch(64, {"epoch": 2, "batch_size": 64}, halve=True) == halved
    # one trained after the halving keeps it, on a retry or a resume of the search, and is not halved again
    after = {"epoch": 3, "batch_size": 32, "note": halved[1]}
    assert trial_batch(64, after, halve=True) == halved
    assert trial_batch(64, after, halve=False) == halved
    assert trial_batch(64, {"epoch": 1}, halve=False) == (64, "")  # a checkpoint written before notes existed
    assert trial_batch(1, None, halve=True)[0] == 1


def test_a_trials_note_is_its_latest() -> None:
    assert trial_note(None) is None
    assert trial_note(pd.DataFrame({"epoch": [1]})) is None
    assert trial_note(pd.DataFrame({"note": ["", float("nan")]})) is None
    assert trial_note(pd.DataFrame({"note": [float("nan"), "halved"]})) == "halved"


# A real out-of-memory on the CPU, not a raised one: a training step whose batch needs more
# memory than the process may have (RLIMIT_DATA, as a container's or a worker's limit), in a
# process of its own. It prints the exception it got, pickled, after a small batch trained
# under the same limit (the process survives its out-of-memory).
REAL_OOM = """
import base64, pickle, resource, sys
import torch
from trainables.models import SmallCNN

torch.manual_seed(0)
model = SmallCNN(4)
def step(batch):
    images = torch.rand(batch, 3, 160, 160)
    model(images).sum().backward()
step(2)  # allocator and autograd warmed up before the limit
used = int(next(line for line in open("/proc/self/status") if line.startswith("VmData")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_DATA, (used + 400 * 1024**2, resource.RLIM_INFINITY))
try:
    step(int(sys.argv[1]))
    error = None
except BaseException as err:
    error = err
step(int(sys.argv[1]) // 16)
print(base64.b64encode(pickle.dumps(error)).decode())
"""


def test_a_batch_too_large_for_the_memory_allowed_is_an_out_of_memory_not_a_bug() -> None:
    import base64
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", REAL_OOM, "256"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = pickle.loads(base64.b64decode(proc.stdout.strip().splitlines()[-1]))
    assert error is not None, "256 images of 160 px fit in 400 MB: the test needs a larger batch"
    assert classify(workers(error)) is Failure.OUT_OF_MEMORY, repr(error)
