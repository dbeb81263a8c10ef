"""The training cases of `python -m bench`: one architecture's training step fed the naive way
and ours, and the model alone (the ceiling)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from bench.inputs import cached_batches, every_epoch, naive_batches, naive_loader
from bench.measure import CPUS, VAL_FRACTION, Batches, fixed_batch, interleaved, train_measure
from bench.records import NAIVE, Record, record
from trainables import data
from trainables.archs import ARCHS, CORE_ARCHS

# The tutorials' architectures, built with random weights (no download): the other backbones
# of the table are asked for by name (--archs), so that --quick stays minutes on a CPU.
DEFAULT_ARCHS = CORE_ARCHS
# The tutorials' sizes: the cats-vs-dogs convnet at 150 px, Inception v3 at 299 px; the other
# backbones at 224 px, the size their torchvision ImageNet weights were trained at.
USUAL_PX = {"small_cnn": 150, "inception_frozen": 299, "inception_partial": 299}
IMAGENET_PX = 224


def train_size_px(arch: str, quick: bool, size_px: int) -> int:
    """`arch`'s usual size; when `quick`, `size_px` (the data's), raised to what the arch accepts."""
    if not quick:
        return USUAL_PX.get(arch, IMAGENET_PX)
    return max(size_px, ARCHS[arch].min_size_px)


def train_cases(root: Path, arch: str, size_px: int, device: torch.device, batch_size: int, timed_batches: int,
                cache_dir: Path, rounds: int) -> list[Record]:
    """One architecture's training step: naive data + fp32, ours (cache, batched augment, and on
    CUDA bf16 + channels-last as `trainables.loop` trains), and the model alone (the ceiling)."""
    arrays = data.load(data.prepare(root, size_px, VAL_FRACTION, 0, cache_dir).path)
    n_classes, cuda = len(arrays.classes), device.type == "cuda"
    precision = "bf16 + channels_last" if cuda else "fp32"
    generator = torch.Generator(device=device).manual_seed(0)
    ours = every_epoch(lambda epoch: cached_batches(arrays.train, batch_size, device, generator, epoch))
    fixed = fixed_batch(batch_size, size_px, n_classes, device)

    def naive() -> Batches:
        loader = naive_loader(root, size_px, CPUS, batch_size, train=True)
        return every_epoch(lambda _: naive_batches(loader, device))

    measures = {
        f"{NAIVE} train step: JPEG DataLoader {CPUS} workers + fp32":
            train_measure(arch, n_classes, device, False, timed_batches, naive),
        f"ours train step: uint8 cache + batched augment + {precision}":
            train_measure(arch, n_classes, device, True, timed_batches, lambda: ours),
        f"model only train step: inputs on the device, {precision}":
            train_measure(arch, n_classes, device, True, timed_batches, lambda: itertools.repeat(fixed)),
    }
    common = {"arch": arch, "device": device.type, "size_px": size_px, "batch_size": batch_size}
    return [record(case, results, **common) for case, results in interleaved(measures, rounds).items()]
