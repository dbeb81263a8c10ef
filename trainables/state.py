"""What a checkpoint holds: what training changes, never what building the model gives again.

A frozen backbone comes back from its weights file (ImageNet) or from the seed (random
initialisation: `build_model` seeds before it builds), so a checkpoint holds only the
parameters that train, the buffers that move (batch-norm statistics of modules in training
mode), the optimizer's state and the loop's, plus the sha256 of every entry it leaves out:
a model rebuilt from another weights file or another seed is refused, not silently trained
or exported.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import IO, Any

import torch
from torch import nn

from trainables.hparams import HParams
from trainables.models import create_model

TRAINABLE = "trainable"  # the model's entries that training changes (`trainable_state`)
FROZEN_SHA256 = "frozen_sha256"  # sha256 of the entries a checkpoint leaves out (`frozen_sha256`)
LEGACY_MODEL = "model"  # the whole state dict, in checkpoints written before they were slim


def trainable_keys(model: nn.Module) -> list[str]:
    """The entries of `model.state_dict()` that training can change: parameters that require
    grad, and buffers of modules that `model.train()` leaves in training mode."""
    modes = {module: module.training for module in model.modules()}
    model.train()
    try:
        keys = []
        for key in model.state_dict():
            path, _, name = key.rpartition(".")
            module = model.get_submodule(path)
            parameter = dict(module.named_parameters(recurse=False)).get(name)
            if module.training if parameter is None else parameter.requires_grad:
                keys.append(key)
        return keys
    finally:
        for module, mode in modes.items():
            module.training = mode


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The part of `model.state_dict()` that training changes (no copy)."""
    state = model.state_dict()
    return {key: state[key] for key in trainable_keys(model)}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what `trainable_state` gave into a model built the same way; ValueError when its
    entries are not exactly the ones this model trains (another architecture or setting)."""
    expected = trainable_keys(model)
    missing = [key for key in expected if key not in state]
    extra = [key for key in state if key not in set(expected)]
    if missing or extra:
        raise ValueError(f"the checkpoint does not fit this model: it lacks {missing[:3]} ({len(missing)} in all) "
                         f"and holds {extra[:3]} ({len(extra)} in all) that this model does not train")
    model.load_state_dict(state, strict=False)


def frozen_sha256(model: nn.Module) -> str:
    """sha256 of the names and bytes of the entries of `model.state_dict()` that training
    cannot change: what a checkpoint leaves out (~0.05 s for Inception's 88 MB on one core)."""
    state, trained = model.state_dict(), set(trainable_keys(model))
    digest = hashlib.sha256()
    for key, value in state.items():
        if key not in trained:
            digest.update(key.encode())
            digest.update(memoryview(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def tensor_bytes(state: Any) -> int:
    """The bytes of every tensor in a (nested) state: what writing a checkpoint has to write."""
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, frozen: str, **loop: Any) -> dict[str, Any]:
    """A checkpoint: the model's trainable state, the sha256 of the rest (`frozen`, computed
    once: it never changes), the optimizer's state and the loop's (`loop`: epoch, seed, ...)."""
    return {**loop, TRAINABLE: trainable_state(model), FROZEN_SHA256: frozen, "optimizer": optimizer.state_dict()}


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str] | IO[bytes]) -> None:
    """`torch.save` without a CRC32 of every record: `torch.load` never checks them, and computing
    them doubles the time of writing (91 MB: 51 ms, without them 26 ms, a raw write of as many
    bytes 29 ms; 2-core CPU). Torch before 2.6 cannot leave them out and writes them.

    A path is written by Python from the serialised bytes: a full disk is then the OSError that
    says so (torch's own writer reports it as "unexpected pos")."""
    if isinstance(path, (str, os.PathLike)):
        buffer = io.BytesIO()
        save_checkpoint(state, buffer)
        with open(path, "wb") as file:
            file.write(buffer.getbuffer())
        return
    set_crc32 = getattr(torch.serialization, "set_crc32_options", None)
    if set_crc32 is None:
        torch.save(state, path)
        return
    crc32 = torch.serialization.get_crc32_options()
    set_crc32(False)
    try:
        torch.save(state, path)
    finally:
        set_crc32(crc32)


def load_checkpoint(model: nn.Module, state: dict[str, Any]) -> None:
    """Load a checkpoint's model state into `model`, built as the checkpointed one was
    (`build_model` with its seed); ValueError when the rest of the model differs from what
    the checkpoint was taken with (another weights file, seed or library version)."""
    if LEGACY_MODEL in state:
        model.load_state_dict(state[LEGACY_MODEL])
        return
    load_trainable_state(model, state[TRAINABLE])  # another model's entries are refused first, by name
    if frozen_sha256(model) != state[FROZEN_SHA256]:
        raise ValueError("the checkpoint was taken from a model whose frozen weights differ from these (another "
                         "weights file, seed or torchvision version); resume or export with the ones it was "
                         "trained with")


def build_model(num_classes: int, hp: HParams, seed: int, state: dict[str, Any] | None = None) -> nn.Module:
    """The model `fit` trains, on the CPU: built after `torch.manual_seed(seed)`, so its random
    initial weights, frozen ones included, follow from the seed; with a checkpoint's `state`
    loaded when given."""
    torch.manual_seed(seed)
    model = create_model(num_classes, hp)
    if state is not None:
        load_checkpoint(model, state)
    return model


def restore_model(num_classes: int, hp: HParams, state: dict[str, Any]) -> nn.Module:
    """The whole model a checkpoint was taken from (its frozen backbone rebuilt), in eval mode."""
    return build_model(num_classes, hp, state.get("seed", 0), state).eval()
