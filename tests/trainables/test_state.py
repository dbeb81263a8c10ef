"""A checkpoint holds what training changes: which entries those are for each kind of model,
the refusal of a state that does not fit, and the random frozen weights the seed gives back."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from torchvision.models import inception_v3

from tests.trainables.test_loop import HP
from trainables import models
from trainables.state import (
    FROZEN_SHA256,
    TRAINABLE,
    build_model,
    frozen_sha256,
    load_trainable_state,
    restore_model,
    save_checkpoint,
    tensor_bytes,
    trainable_keys,
    trainable_state,
)

FROZEN = HP.replace(arch="inception_frozen", weights="imagenet", head_units=32)
PARTIAL = HP.replace(arch="inception_partial", weights="imagenet", unfrozen_blocks=2, head_units=32)
STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True)
def imagenet_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stands in for the ImageNet download: same layout, random values."""
    torch.manual_seed(1)
    weights = inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict()
    monkeypatch.setattr(models, "load_pretrained", lambda arch: weights)


def test_a_model_trained_from_scratch_saves_every_entry() -> None:
    model = build_model(3, HP, seed=0)
    assert trainable_keys(model) == list(model.state_dict())
    assert frozen_sha256(model) == frozen_sha256(build_model(3, HP, seed=1))  # nothing left out


def test_a_frozen_pretrained_backbone_saves_its_head_alone() -> None:
    model = build_model(3, FROZEN, seed=0)
    assert trainable_keys(model) == [k for k in model.state_dict() if k.startswith("head.")]


def test_a_partly_unfrozen_backbone_saves_its_top_blocks_with_their_statistics() -> None:
    model = build_model(3, PARTIAL, seed=0).eval()
    keys = trainable_keys(model)
    top = [k for k in model.state_dict() if k.startswith(("backbone.Mixed_7b.", "backbone.Mixed_7c.", "head."))]
    assert keys == top and any(k.endswith(".bn.running_mean") for k in keys)
    assert not model.training and not model.backbone.Mixed_7c.training  # the modes are left as they were
    assert set(trainable_state(model)) == set(keys)


def test_a_frozen_random_backbone_saves_its_moving_statistics_not_its_weights() -> None:
    model = build_model(3, FROZEN.replace(weights="none"), seed=0)
    keys = set(trainable_keys(model))
    backbone = [k for k in model.state_dict() if k.startswith("backbone.")]
    assert [k for k in backbone if k in keys] == [k for k in backbone if k.endswith(STATISTICS)]
    head = {k for k in model.state_dict() if k.startswith("head.")}
    assert {k for k in keys if not k.startswith("backbone.")} == head


def test_the_seed_gives_back_the_same_random_frozen_weights() -> None:
    hp = FROZEN.replace(weights="none")
    model = build_model(3, hp, seed=7)
    assert frozen_sha256(build_model(3, hp, seed=7)) == frozen_sha256(model)
    assert frozen_sha256(build_model(3, hp, seed=8)) != frozen_sha256(model)
    state = {"seed": 7, TRAINABLE: trainable_state(model), FROZEN_SHA256: frozen_sha256(model)}
    rebuilt = restore_model(3, hp, state)
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    with pytest.raises(ValueError, match="frozen weights differ"):
        restore_model(3, hp, {**state, "seed": 8})


def test_another_weights_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(3, FROZEN, seed=0)
    state = {"seed": 0, TRAINABLE: trainable_state(model), FROZEN_SHA256: frozen_sha256(model)}
    restore_model(3, FROZEN, state)
    torch.manual_seed(2)
    other = inception_v3(weights=None, aux_logits=False, init_weights=False).state_dict()
    monkeypatch.setattr(models, "load_pretrained", lambda arch: other)
    with pytest.raises(ValueError, match="another weights file, seed or torchvision version"):
        restore_model(3, FROZEN, state)


def test_a_state_of_another_model_is_refused_naming_the_entries() -> None:
    partial = trainable_state(build_model(3, PARTIAL, seed=0))
    model = build_model(3, FROZEN, seed=0)
    with pytest.raises(ValueError, match=r"does not fit.*holds \['backbone\.Mixed_7b\.") as err:
        load_trainable_state(model, partial)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"lacks \['head\.0\.weight'\]"):
        load_trainable_state(model, {k: v for k, v in trainable_state(model).items() if k != "head.0.weight"})


def test_a_checkpoint_from_before_slim_ones_still_restores_the_whole_model() -> None:
    model = build_model(3, PARTIAL, seed=0)
    rebuilt = restore_model(3, PARTIAL, {"epoch": 1, "model": model.state_dict()})  # no seed: not needed
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_is_written_without_crc32_and_loads_the_same(tmp_path: Path) -> None:
    model = build_model(3, HP, seed=0)
    state = {"epoch": 1, "seed": 0, TRAINABLE: trainable_state(model), FROZEN_SHA256: frozen_sha256(model)}
    save_checkpoint(state, tmp_path / "state.pt")
    assert torch.serialization.get_crc32_options()  # left as it was for every other torch.save
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    assert all(torch.equal(loaded[TRAINABLE][k], v) for k, v in state[TRAINABLE].items())
    assert loaded[FROZEN_SHA256] == state[FROZEN_SHA256]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_checkpoint_that_finds_the_disk_full_raises_the_systems_error() -> None:
    """What `search.state.disk` recognises as a full disk (torch's own writer says "unexpected pos")."""
    with pytest.raises(OSError) as raised:
        save_checkpoint({"weights": torch.zeros(100_000)}, "/dev/full")
    assert raised.value.errno == errno.ENOSPC


def test_tensor_bytes_counts_every_tensor_of_a_nested_state() -> None:
    state = {"epoch": 1, "a": torch.zeros(3), "b": {"c": [torch.zeros(2, dtype=torch.float64)], "d": "text"}}
    assert tensor_bytes(state) == 3 * 4 + 2 * 8
