"""The training loop: a plain function of (hyperparameters, data, report callback).

Nothing here knows about Ray. Ray Train calls `fit` inside each worker and turns `report`
into `ray.train.report` with a checkpoint; a test calls it directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.augment import augment
from trainables.data import ArrayData, Split
from trainables.models import create_model
from trainables.optimizers import create_optimizer

# ImageNet statistics: what torchvision's Inception weights expect; used for every arch so
# one `preprocess` in meta.json describes any exported model.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_BATCH = 128

# report(metrics, state): metrics of the epoch just finished; state restores the run.
ReportFn = Callable[[dict[str, float], dict[str, Any]], None]


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
def predict_logits(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Logits for uint8 images [N, H, W, 3], in eval mode, on the CPU as float32."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with _autocast(device):
            outputs.append(model(normalize(to_input(images[start:start + batch_size], device))).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0)


def evaluate(model: nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    """(loss, accuracy) of `model` on `split`."""
    logits = predict_logits(model, split.images, device)
    labels = torch.as_tensor(split.labels)
    loss = F.cross_entropy(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()


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


def fit(hp: dict[str, Any], data: ArrayData, max_epochs: int, report: ReportFn, *,
        state: dict[str, Any] | None = None, device: torch.device | None = None, seed: int = 0,
        rank: int = 0, world_size: int = 1,
        prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m) -> nn.Module:
    """Train `hp["arch"]` on `data.train`, validate on `data.val`, report every epoch.

    `state` (a previous report's) resumes after its epoch. `prepare_model` lets Ray Train
    move and wrap the model (DDP); with several workers each trains on its shard of the data.
    """
    device = device or default_device()
    torch.manual_seed(seed)
    model = create_model(len(data.classes), hp).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer = create_optimizer(hp["optimizer"], [p for p in model.parameters() if p.requires_grad],
                                 hp["lr"], hp.get("momentum"))
    first_epoch, train_time_s = 1, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, train_time_s = state["epoch"] + 1, state["train_time_s"]
    wrapped = prepare_model(model)
    batch_size = int(hp["batch_size"])

    for epoch in range(first_epoch, max_epochs + 1):
        started = time.perf_counter()
        wrapped.train()
        rng = np.random.default_rng([seed, epoch])
        augment_rng = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
        order = _shard(rng.permutation(len(data.train.labels)), rank, world_size)
        loss_sum, correct, seen = 0.0, 0.0, 0.0
        for start in range(0, len(order), batch_size):
            idx = np.sort(order[start:start + batch_size])
            if len(idx) < 2 and seen:  # batch norm cannot train on a single image
                continue
            images = normalize(augment(to_input(data.train.images[idx], device), hp["augment"], augment_rng))
            labels = torch.as_tensor(data.train.labels[idx], device=device)
            with _autocast(device):
                logits = wrapped(images)
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(idx)
        loss_sum, correct, seen = _all_reduce_sum([loss_sum, correct, seen], device)
        if not np.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch} (lr {hp['lr']:g}): diverged")
        val_loss, val_acc = evaluate(model, data.val, device)
        train_time_s += time.perf_counter() - started
        metrics = {"epoch": epoch, "train_images": int(seen), "train_loss": loss_sum / seen, "train_acc": correct / seen,
                   "val_loss": val_loss, "val_acc": val_acc, "train_time_s": train_time_s}
        report(metrics, {"epoch": epoch, "train_time_s": train_time_s,
                         "model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return model
