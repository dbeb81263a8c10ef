"""The training loop: a plain function of (hyperparameters, data, report callback).

Nothing here knows about Ray. Ray Train calls `fit` inside each worker and turns `report`
into `ray.train.report` with a checkpoint; a test calls it directly.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.augment import augment
from trainables.data import ArrayData, Split
from trainables.hparams import HParams
from trainables.models import BackboneClassifier
from trainables.optimizers import create_optimizer
from trainables.state import build_model, checkpoint, frozen_sha256

# ImageNet statistics: what torchvision's Inception weights expect; used for every arch so
# one `preprocess` in meta.json describes any exported model.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_BATCH = 128

# A frozen backbone's features are computed in parts of this many images (a view of the train
# images, or the val images, cut in pieces): runs that need the same features share the parts out,
# each on its own cores (search/driver/feature_store.py). A part takes ~10 s on a CPU core at 299 px.
FEATURE_PART_IMAGES = 2 * EVAL_BATCH
# One part's features as a plain float32 array [n, D], and the dtype they were computed in
# (bfloat16 under a GPU's autocast, float32 on a CPU).
PartArrays = tuple[np.ndarray, str]
# share(key, count, compute) -> (the `count` parts in order, how many this run computed): runs
# with the same key (same frozen backbone, data, views and device) compute each part once, side
# by side, `compute(index)` being one part (search/driver/feature_store.py).
ShareFeatures = Callable[[str, int, Callable[[int], PartArrays]], tuple[list[PartArrays], int]]
# report(metrics, state): metrics of the epoch just finished; state (`trainables.state.checkpoint`) resumes the run.
LAST_METRICS = "metrics"  # a checkpoint's copy of what its epoch reported
# A checkpoint's val logits [val images, classes] (float32, ~4 bytes x classes per image): the
# top trials' ensemble is chosen from them (search/best/ensemble.py) without running any model again.
VAL_LOGITS = "val_logits"
ReportFn = Callable[[dict[str, float], dict[str, Any]], None]


class Stopped(Exception):
    """`fit` was asked to stop (its `stop` event was set) and did, between two batches."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_input(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [0, 1] on `device`."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # arrays from Ray's object store are read-only; torch wants writable
    batch = torch.as_tensor(images).to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255)


def normalize(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    return (batch - mean) / std


def _autocast(device: torch.device) -> Any:
    # bf16 on GPUs: about twice the throughput of fp32 for these convnets, no loss scaling.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def _outputs(module: nn.Module, images: np.ndarray, device: torch.device, strength: float = 0.0,
             generator: torch.Generator | None = None, batch_size: int = EVAL_BATCH) -> Iterator[torch.Tensor]:
    """`module`'s outputs for uint8 images [N, H, W, 3] (augmented with `strength`), batch by
    batch, in eval mode, on `device` in autocast's dtype."""
    module.eval()
    for start in range(0, len(images), batch_size):
        batch = normalize(augment(to_input(images[start:start + batch_size], device), strength, generator))
        with _autocast(device):
            yield module(batch)


def predict_logits(model: nn.Module, images: np.ndarray, device: torch.device,
                   batch_size: int = EVAL_BATCH, tta: str | None = None) -> torch.Tensor:
    """Logits for uint8 images [N, H, W, 3], in eval mode, on the CPU as float32; with
    `tta="flip"` the mean of each image's logits and its left-right mirror's."""
    outputs = [logits.float().cpu() for logits in _outputs(model, images, device, batch_size=batch_size)]
    logits = torch.cat(outputs) if outputs else torch.zeros(0)
    if tta not in (None, "flip"):
        raise ValueError(f"test-time augmentation {tta!r}: only 'flip' (or None) is known")
    return with_mirror(model, images, device, logits, batch_size) if tta == "flip" else logits


def with_mirror(model: nn.Module, images: np.ndarray, device: torch.device, logits: torch.Tensor,
                batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """The mean of `logits` (the images' own, already computed) and their left-right mirrors' logits."""
    if not len(images):
        return logits
    return (logits + predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), device, batch_size)) / 2


def _loss_and_accuracy(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    targets = torch.tensor(labels)  # a copy: labels from Ray's object store are read-only, which torch warns of
    return F.cross_entropy(logits, targets).item(), (logits.argmax(1) == targets).float().mean().item()


def evaluate(model: nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    """(loss, accuracy) of `model` on `split`."""
    return _loss_and_accuracy(predict_logits(model, split.images, device), split.labels)


def frozen_backbone(model: nn.Module) -> nn.Module | None:
    """The model's backbone if training can never change its outputs (every block frozen and
    kept in eval mode: a backbone with ImageNet weights and no unfrozen block), else None."""
    if isinstance(model, BackboneClassifier) and model.frozen:
        return model.backbone
    return None


@dataclass(frozen=True)
class FeatureCache:
    """A frozen backbone's outputs, computed once so that every epoch trains only the head:
    `train` [views, N, D] (one plain view, or `feature_views` augmented ones), `val` [N, D]."""

    train: torch.Tensor
    val: torch.Tensor

    def train_batch(self, idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Features of train images `idx`, each from a view drawn at random."""
        views = torch.as_tensor(rng.integers(len(self.train), size=len(idx)), device=self.train.device)
        return self.train[views, torch.as_tensor(idx, device=self.train.device)]

    @torch.no_grad()
    def val_logits(self, model: BackboneClassifier) -> torch.Tensor:
        """`model`'s logits for the val images (float32, CPU): its head on their cached features."""
        model.eval()
        with _autocast(self.val.device):
            return model.head(self.val).float().cpu()


@dataclass(frozen=True)
class FeaturePart:
    """Images [start, stop) of the val split, or of the train split's view `view`."""

    split: str
    view: int
    start: int
    stop: int


def feature_parts(train: int, val: int, views: int, size: int = FEATURE_PART_IMAGES) -> list[FeaturePart]:
    """The parts of a backbone pass over `views` views of `train` images and over `val` images."""
    return [*(FeaturePart("train", view, start, min(start + size, train))
              for view in range(views) for start in range(0, train, size)),
            *(FeaturePart("val", 0, start, min(start + size, val)) for start in range(0, val, size))]


@torch.no_grad()
def part_features(backbone: nn.Module, data: ArrayData, hp: HParams, device: torch.device, seed: int,
                  part: FeaturePart) -> PartArrays:
    """The backbone's outputs for one part's images, augmented for a train view when `hp.augment`
    with a generator of its own (seed, view, start): every part comes out the same whoever
    computes it, in whichever order."""
    images = (data.train if part.split == "train" else data.val).images[part.start:part.stop]
    generator = None
    if part.split == "train" and hp.augment:
        # Never an epoch's augmentation seed (those are small integers: seed and epoch).
        part_seed = int(np.random.SeedSequence([seed, part.view, part.start, 100_003]).generate_state(1)[0])
        generator = torch.Generator(device=device).manual_seed(part_seed)
    outputs = torch.cat(list(_outputs(backbone, images, device, hp.augment if part.split == "train" else 0.0,
                                      generator)))
    return outputs.float().cpu().numpy(), str(outputs.dtype).removeprefix("torch.")


def assemble(parts: list[FeaturePart], computed: list[PartArrays], views: int, device: torch.device) -> FeatureCache:
    """The feature cache from every part's features, in the order of `parts`."""
    def tensor(chunks: list[PartArrays]) -> torch.Tensor:
        dtype = getattr(torch, chunks[0][1])
        return torch.cat([torch.from_numpy(np.array(array)) for array, _ in chunks]).to(device, dtype)

    by_part = list(zip(parts, computed))
    train = torch.stack([tensor([c for p, c in by_part if p.split == "train" and p.view == view])
                         for view in range(views)])
    return FeatureCache(train, tensor([c for p, c in by_part if p.split == "val"]))


def cache_features(model: nn.Module, data: ArrayData, hp: HParams, device: torch.device,
                   seed: int) -> FeatureCache | None:
    """The backbone's features of every train and val image, when they stay valid for the
    whole run: a frozen backbone, and no augmentation or `hp.feature_views` augmented views
    of each train image (reused in every epoch instead of fresh ones); else None."""
    backbone, views = frozen_backbone(model), _views(hp)
    if backbone is None or views == 0:
        return None
    parts = feature_parts(len(data.train.labels), len(data.val.labels), views)
    return assemble(parts, [part_features(backbone, data, hp, device, seed, part) for part in parts], views, device)


def _views(hp: HParams) -> int:
    return 1 if hp.augment == 0 else int(hp.feature_views or 0)


def _features(model: nn.Module, data: ArrayData, hp: HParams, device: torch.device, seed: int,
              share: ShareFeatures | None, data_key: str | None, frozen: str) -> tuple[FeatureCache | None, int, int]:
    """`cache_features`, through `share` when given: the features, how many of their parts
    this run computed, and of how many."""
    backbone, views = frozen_backbone(model), _views(hp)
    if share is None or not data_key or backbone is None or views == 0:
        features = cache_features(model, data, hp, device, seed)
        return features, 1, 1
    # What the features depend on: the frozen weights (their sha256 names the backbone), the
    # images, the views (their augmentation and seeds), the parts and where they are computed.
    parts = feature_parts(len(data.train.labels), len(data.val.labels), views)
    key = hashlib.sha256(repr((frozen, hp.arch, data_key, data.train.images.shape, views, hp.augment,
                               seed if hp.augment else None, device.type, FEATURE_PART_IMAGES)).encode()).hexdigest()
    computed, mine = share(key, len(parts), lambda index: part_features(backbone, data, hp, device, seed, parts[index]))
    return assemble(parts, computed, views, device), mine, len(parts)


def _shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    # Every rank gets the same number of samples: DDP needs equal batch counts per rank.
    per_rank = len(order) // world_size
    return order[rank::world_size][:per_rank]


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def on_device(images: np.ndarray, device: torch.device, max_fraction: float = 0.25) -> np.ndarray | torch.Tensor:
    """The uint8 images, held on the GPU when they take at most `max_fraction` of its free
    memory (then every batch is gathered there: no host-to-device copy per step); else as they are."""
    if device.type != "cuda" or images.nbytes > max_fraction * torch.cuda.mem_get_info(device)[0]:
        return images
    return torch.from_numpy(np.ascontiguousarray(images).copy()).to(device)


def fit(hp: HParams, data: ArrayData, max_epochs: int, report: ReportFn, *,
        state: dict[str, Any] | None = None, device: torch.device | None = None, seed: int = 0,
        rank: int = 0, world_size: int = 1,
        prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m, feature_cache: bool = True,
        share_features: ShareFeatures | None = None, data_key: str | None = None,
        stop: threading.Event | None = None) -> nn.Module:
    """Train `hp.arch` on `data.train`, validate on `data.val`, report every epoch.

    `state` (a previous report's checkpoint, see `trainables.state`) resumes after its epoch.
    `prepare_model` lets Ray Train move and wrap the model (DDP); with several workers each
    trains on its shard of the data.
    A frozen backbone's features are computed once (`cache_features`) and only the head is
    trained and prepared; `feature_cache=False` runs the backbone every epoch instead.
    With `share_features` and `data_key` (the data's fingerprint), runs of one search that need
    the same features compute them once, side by side (each a share of the parts); each epoch
    reports `features_s`, the seconds the run spent getting them, `features_parts`, the share of
    the pass it computed (0 to 1), and `features_shared`, 1 when it computed none of it.
    `stop`, set from another thread, ends the run before its next batch or validation with
    `Stopped`: its process is free for another run at once (search/seam/kept_workers.py).
    """
    device = device or default_device()
    model = build_model(len(data.classes), hp, seed, state)
    frozen = frozen_sha256(model)  # once: what every checkpoint leaves out never changes
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = create_optimizer(hp.optimizer, [p for p in model.parameters() if p.requires_grad],
                                 hp.lr, hp.momentum)
    first_epoch, train_time_s = 1, 0.0
    if state is not None:
        if "optimizer" in state:  # an ended trial's kept checkpoint leaves it out (search/driver/retention.py)
            optimizer.load_state_dict(state["optimizer"])
        first_epoch, train_time_s = state["epoch"] + 1, state["train_time_s"]
    started = time.perf_counter()
    features, mine, parts = (_features(model, data, hp, device, seed, share_features, data_key, frozen)
                             if feature_cache else (None, 0, 1))
    features_s = time.perf_counter() - started
    train_time_s += features_s  # the backbone's one pass is part of training's cost
    wrapped = prepare_model(model if features is None else model.head)
    batch_size = int(hp.batch_size)
    train_images = on_device(data.train.images, device) if features is None else None

    for epoch in range(first_epoch, max_epochs + 1):
        started = time.perf_counter()
        wrapped.train()
        rng = np.random.default_rng([seed, epoch])
        augment_rng = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
        order = _shard(rng.permutation(len(data.train.labels)), rank, world_size)
        # Dropout's draws depend on (seed, epoch) only, so a resumed run repeats an uninterrupted one.
        torch.manual_seed(int(rng.integers(2**62)))
        loss_sum, correct, seen = 0.0, 0.0, 0.0
        for start in range(0, len(order), batch_size):
            _check(stop, epoch)
            idx = np.sort(order[start:start + batch_size])
            if len(idx) < 2 and seen:  # batch norm cannot train on a single image
                continue
            if features is None:
                inputs = normalize(augment(to_input(train_images[idx], device), hp.augment, augment_rng))
            else:
                inputs = features.train_batch(idx, rng)
            labels = torch.as_tensor(data.train.labels[idx], device=device)
            with _autocast(device):
                logits = wrapped(inputs)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(idx)
        loss_sum, correct, seen = _all_reduce_sum([loss_sum, correct, seen], device)
        if not np.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch} (lr {hp.lr:g}): diverged")
        _check(stop, epoch)
        val_logits = predict_logits(model, data.val.images, device) if features is None else features.val_logits(model)
        val_loss, val_acc = _loss_and_accuracy(val_logits, data.val.labels)
        train_time_s += time.perf_counter() - started
        metrics = {"epoch": epoch, "train_images": int(seen), "train_loss": loss_sum / seen,
                   "train_acc": correct / seen, "val_loss": val_loss, "val_acc": val_acc, "train_time_s": train_time_s}
        if features is not None:
            metrics.update(features_s=features_s, features_parts=mine / parts, features_shared=int(mine == 0))
        report(metrics, checkpoint(model, optimizer, frozen, epoch=epoch, train_time_s=train_time_s, seed=seed,
                                   batch_size=batch_size, **{LAST_METRICS: metrics, VAL_LOGITS: val_logits}))
    return model


def _check(stop: threading.Event | None, epoch: int) -> None:
    if stop is not None and stop.is_set():
        raise Stopped(f"stopped in epoch {epoch}")
