"""How every benchmark case is timed: the clock, the rounds, the measure of a training step.

Each case is a `Measure` (round -> images, seconds) run once per round, in turn with the
others (`interleaved`). The fixed recipe every training case trains with (`HP`) and the
measure of a training step (`train_measure`) live here, because the training, feature and
sharing cases all use them.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from trainables.hparams import HParams
from trainables.loop import normalize
from trainables.models import create_model
from trainables.optimizers import create_optimizer

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
Measure = Callable[[int], tuple[int, float]]  # round -> (images, seconds)

BATCH_SIZE = 32
# The tutorials' recipe: RMSprop 1e-4, batch 32, full augmentation; the cats-vs-dogs convnet
# (32-64-128-128), a Dense 128 head on a pretrained backbone. Every arch reads the fields it uses.
HP = HParams(arch="small_cnn", optimizer="rmsprop", lr=1e-4, batch_size=BATCH_SIZE, augment=1.0, dropout=0.2,
             weights="none", unfrozen_blocks=2, head_units=128, cnn_width=32, cnn_depth=4, momentum=None)
VAL_FRACTION = 0.2
WARMUP_BATCHES = 2
CPUS = len(os.sched_getaffinity(0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # CUDA work is queued: read the clock only once it has run


def timed(device: torch.device, work: Callable[[], int]) -> tuple[int, float]:
    """(images, seconds) of `work()`, which returns how many images it handled."""
    _sync(device)
    started = time.perf_counter()
    images = work()
    _sync(device)
    return images, time.perf_counter() - started


def interleaved(measures: dict[str, Measure], rounds: int) -> dict[str, list[tuple[int, float]]]:
    """Run every measure once per round, in turn, so that load from other processes on a shared
    machine falls on all cases alike instead of on whichever ran during it."""
    results: dict[str, list[tuple[int, float]]] = {name: [] for name in measures}
    for round_ in range(rounds):
        for name, measure in measures.items():
            results[name].append(measure(round_))
    return results


def fixed_batch(batch_size: int, size_px: int, n_classes: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch already on the device (channels-last on CUDA), to time the model with no data path."""
    inputs = normalize(torch.rand(batch_size, 3, size_px, size_px, device=device))
    if device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, torch.arange(batch_size, device=device) % n_classes


def _model(arch: str, n_classes: int, device: torch.device, ours: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model(n_classes, HP.replace(arch=arch)).to(device)
    if ours and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, create_optimizer(HP.optimizer, trainable, HP.lr, HP.momentum)


def train_measure(arch: str, n_classes: int, device: torch.device, ours: bool, timed_batches: int,
                  batches: Callable[[], Batches], ready: Callable[[], object] = lambda: None) -> Measure:
    """A measure of `timed_batches` training steps, data included, each round after a warm-up
    of its own (the naive loader's workers start anew each round); `ready()` runs between the two.
    `ours`: bf16 autocast and channels-last on CUDA, as `trainables.loop` trains; else fp32."""
    model, optimizer = _model(arch, n_classes, device, ours)
    bf16 = ours and device.type == "cuda"

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # both real loops read the loss every step, which waits for the GPU
        return len(labels)

    def measure(round_: int) -> tuple[int, float]:
        # batch norm cannot train on one image; loop.fit skips such a batch too
        usable = (batch for batch in batches() if len(batch[1]) > 1)
        for inputs, labels in itertools.islice(usable, WARMUP_BATCHES):
            step(inputs, labels)
        ready()
        return timed(device, lambda: sum(itertools.starmap(step, itertools.islice(usable, timed_batches))))

    return measure
