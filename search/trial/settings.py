"""What every trial of one search shares, and the names its reports and checkpoints carry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.hparams import HParams

BEST_STATE_KEY = "best_objective"
# Why a trial trains with another batch size than its config's (an out-of-memory retry): kept
# in the checkpoint's loop state, so a resumed trial keeps it, and reported with every epoch.
NOTE_KEY = "note"
# The seconds a trial's worker spent in its earlier reports (writing checkpoints, handing
# results over to Ray), sent with every report: the cost of a report, measured where it is paid.
REPORT_S_KEY = "report_s"
BATCH_SIZE_KEY = "batch_size"  # the batch size a checkpoint was trained with (`trainables.loop.fit`)
# A running trial's best checkpoint by the objective; Ray Train keeps the latest besides (None: all).
KEEP_CHECKPOINTS = 1
CHECKPOINT_PREFIX = "epoch-"  # a checkpoint's folder: epoch-0001, ...
# Called in the worker after every epoch, before its report: a test hands one in to make a
# trial fail at a chosen moment (the service itself passes none).
EpochHook = Callable[[HParams, dict[str, float]], None]


def best_metric(objective: str) -> str:
    """The name of the running best of `objective` that each report carries (Optuna learns from it)."""
    return f"best_{objective}"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares, besides its sampled hyperparameters."""

    data: Any  # ray.ObjectRef of the trainables.data.ArrayData every trial shares
    storage_path: str
    weights: str
    max_epochs: int
    seed: int
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    objective: str
    mode: str
    study_name: str
    features: Any = None  # the search's `search.driver.feature_store.FeatureStore`, where frozen features are shared
    data_key: str = ""  # the data's fingerprint: part of what names shared features
    keep_checkpoints: int | None = KEEP_CHECKPOINTS
    # retries after a dead worker or node (search/trial/failures.py), each from the last checkpoint
    max_failures: int = 2
    on_epoch: EpochHook | None = None
    # Ray Train's private internals patched for speed, on a verified Ray (`search.seam.versions.fast_path`);
    # decided once, in the search's driver, so every trial of a search takes the same path.
    fast_path: bool = True


def train_run_name(trial_id: str) -> str:
    """The folder of a trial's checkpoints under OUT/train: a fixed name, so a restored trial finds them."""
    return f"train-{trial_id}"


def trial_batch(batch_size: int, state: dict[str, Any] | None, halve: bool) -> tuple[int, str]:
    """The batch size an attempt trains with, and the note that says why it is not `batch_size`
    (the config's), or "". A checkpoint's batch size and note win: a resumed trial keeps its
    halved batch. `halve` (after an out-of-memory) halves it once: a checkpoint trained after
    the halving (it holds the note) is not halved again.
    """
    note = ""
    if state is not None:
        batch_size, note = int(state.get(BATCH_SIZE_KEY, batch_size)), state.get(NOTE_KEY, "")
    if halve and not note:
        halved = max(1, batch_size // 2)
        note = f"out of memory at batch_size {batch_size}: retried with {halved}"
        batch_size = halved
    return batch_size, note
