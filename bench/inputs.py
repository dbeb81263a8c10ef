"""The benchmark's inputs: generated JPEGs, and the two pipelines that feed them to a model,
the tutorials' naive one and ours."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from bench.measure import CPUS, Batches
from search.data.generated import CLASSES, generate_coats
from trainables import data
from trainables.augment import augment
from trainables.loop import MEAN, STD, normalize, to_input


def _generate_part(args: tuple[Path, int, int, int, int]) -> None:
    root, train_per_class, test_per_class, size_px, seed = args
    generate_coats(root, train_per_class=train_per_class, test_per_class=test_per_class, size_px=size_px, seed=seed)


def generate(root: Path, images: int, size_px: int) -> Path:
    """`images` JPEGs in 4 classes, a tenth of them in test/, rendered on every core.

    One core renders about 15 images/s at 299 px, so 4000 would take minutes: each process
    writes its share into a folder of its own, then the files move into one tree.
    """
    per_class = max(4, images // len(CLASSES))
    test = max(2, per_class // 10)
    parts = max(1, min(CPUS, per_class // 16))
    shares = [(root / f".part{k}", len(t), len(v), size_px, k)
              for k, (t, v) in enumerate(zip(np.array_split(range(per_class - test), parts),
                                             np.array_split(range(test), parts)))]
    with ProcessPoolExecutor(parts) as pool:
        list(pool.map(_generate_part, shares))
    for part, *_ in shares:
        for path in part.glob("*/*/*.jpg"):
            target = root / path.parent.relative_to(part) / f"{part.name[1:]}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        shutil.rmtree(part)
    return root


def naive_loader(root: Path, size_px: int, workers: int, batch_size: int, train: bool = False) -> DataLoader:
    """The tutorials' pipeline in PyTorch: decode and augment each JPEG with PIL in every epoch.

    Ranges follow Keras's strongest setting (rotation 50, shift 0.2, shear 0.2, zoom 0.3,
    flip, brightness 0.2). For training, workers persist across epochs and the last partial
    batch is dropped, so the timed steps are steps, not worker start-ups.
    """
    transform = transforms.Compose([
        transforms.Resize((size_px, size_px)),
        transforms.RandomAffine(degrees=50, translate=(0.2, 0.2), scale=(0.7, 1.3), shear=0.2),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.2),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    return DataLoader(datasets.ImageFolder(str(root / "train"), transform), batch_size=batch_size, shuffle=True,
                      num_workers=workers, persistent_workers=train and workers > 0, drop_last=train)


def naive_batches(loader: Iterable, device: torch.device) -> Batches:
    """One epoch of the naive loader's batches, moved to `device`."""
    for images, labels in loader:
        yield images.to(device), labels.to(device)


def cached_batches(split: data.Split, batch_size: int, device: torch.device, generator: torch.Generator,
                   seed: int) -> Batches:
    """One epoch of our input as `trainables.loop.fit` builds it: shuffled uint8 rows of the
    cache, moved to the device, augmented as one batch at full strength, normalized."""
    order = np.random.default_rng(seed).permutation(len(split.labels))
    for start in range(0, len(order), batch_size):
        idx = np.sort(order[start:start + batch_size])
        images = normalize(augment(to_input(split.images[idx], device), 1.0, generator))
        yield images, torch.as_tensor(split.labels[idx], device=device)


def every_epoch(epoch: Callable[[int], Batches]) -> Batches:
    """Epoch 0, 1, 2, ... of `epoch(n)`'s batches, one after the other, without end."""
    return itertools.chain.from_iterable(map(epoch, itertools.count()))
