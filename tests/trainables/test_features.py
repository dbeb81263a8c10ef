"""The frozen-feature cache: a frozen backbone runs once per image, and training only its head
on those features gives what running the backbone every epoch gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models import Inception3

from tests.trainables.test_loop import HP
from trainables import data
from trainables.hparams import HParams
from trainables.loop import fit, normalize, to_input
from trainables.state import TRAINABLE, restore_model, tensor_bytes

CPU = torch.device("cpu")
FROZEN = HP.replace(arch="inception_frozen", weights="imagenet", dropout=0.2, head_units=32)
EPOCHS = 3


@pytest.fixture(scope="module")
def arrays(coats: Path, tmp_path_factory: pytest.TempPathFactory) -> data.ArrayData:
    cache = data.prepare(coats, 75, 0.25, 0, tmp_path_factory.mktemp("cache"))  # Inception's smallest input
    return data.load(cache.path)


@pytest.fixture(scope="module", autouse=True)
def imagenet_weights(arrays: data.ArrayData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A random Inception v3 in place of torchvision's ImageNet file, its batch-norm statistics
    measured on the train images: with the untouched unit statistics its features are ~1e-8
    and a head learns nothing from them, which would make equal results prove nothing."""
    from torchvision.models import Inception_V3_Weights, inception_v3

    torch.manual_seed(0)
    backbone = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average: one pass measures the statistics
    with torch.no_grad():
        backbone.train()(normalize(to_input(arrays.train.images, CPU)))
    home = tmp_path_factory.mktemp("torch_home")
    target = home / "hub" / "checkpoints" / Path(Inception_V3_Weights.IMAGENET1K_V1.url).name
    target.parent.mkdir(parents=True)
    torch.save(backbone.state_dict(), target)  # no AuxLogits: the loader drops them anyway
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield


def run(hp: dict[str, Any], arrays: data.ArrayData, epochs: int = EPOCHS, device: torch.device = CPU,
        **kwargs: Any) -> dict[str, Any]:
    """`fit` on `device`, with what it reported, the module it trained and how many images its
    Inception backbone saw."""
    result = {"metrics": [], "states": [], "trained": [], "backbone_images": 0}

    def count(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(module, Inception3):
            result["backbone_images"] += len(args[0])

    def report(metrics: dict, state: dict) -> None:
        result["metrics"].append(metrics)
        result["states"].append(state)

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        result["model"] = fit(hp, arrays, epochs, report, device=device,
                              prepare_model=lambda m: result["trained"].append(m) or m, **kwargs)
    finally:
        hook.remove()
    return result


def head_state(result: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in result["states"][-1][TRAINABLE].items() if k.startswith("head.")}


def assert_same_metrics(a: list[dict], b: list[dict], tolerance: float) -> None:
    assert [m["epoch"] for m in a] == [m["epoch"] for m in b]
    how = {"train_time_s", "features_s", "features_parts", "features_shared"}  # how long, where the features came from
    for x, y in zip(a, b):
        assert x.keys() - how == y.keys() - how
        for key in x.keys() - how:
            assert x[key] == pytest.approx(y[key], abs=tolerance), (x["epoch"], key)


def test_cached_features_give_what_running_the_backbone_every_epoch_gives(arrays: data.ArrayData) -> None:
    cached, plain = run(FROZEN, arrays), run(FROZEN, arrays, feature_cache=False)
    images = len(arrays.train.labels) + len(arrays.val.labels)
    assert cached["backbone_images"] == images  # once per image, whatever the number of epochs
    assert plain["backbone_images"] == EPOCHS * images
    assert cached["trained"] == [cached["model"].head] and plain["trained"] == [plain["model"]]
    assert_same_metrics(cached["metrics"], plain["metrics"], 1e-4)
    assert cached["metrics"][-1]["train_loss"] < cached["metrics"][0]["train_loss"]  # the head did learn
    for key, value in head_state(plain).items():
        assert torch.allclose(head_state(cached)[key], value, atol=1e-6), key
    # The checkpoint holds the head alone: the frozen backbone comes back from the weights file.
    head_keys = [k for k in plain["model"].state_dict() if k.startswith("head.")]
    assert list(cached["states"][-1][TRAINABLE]) == list(plain["states"][-1][TRAINABLE]) == head_keys
    assert cached["model"].training is False


@pytest.mark.slow  # three Inception runs
def test_resuming_with_cached_features_repeats_the_uninterrupted_run(arrays: data.ArrayData, tmp_path: Path) -> None:
    whole = run(FROZEN, arrays)
    torch.save(run(FROZEN, arrays, epochs=EPOCHS - 1)["states"][-1], tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = run(FROZEN, arrays, state=state)
    assert resumed["backbone_images"] == len(arrays.train.labels) + len(arrays.val.labels)
    assert_same_metrics(resumed["metrics"], whole["metrics"][-1:], 1e-6)
    for key, value in head_state(whole).items():
        assert torch.allclose(head_state(resumed)[key], value, atol=1e-7), key


@pytest.mark.parametrize("hp", [
    FROZEN,
    pytest.param(FROZEN.replace(arch="inception_partial", unfrozen_blocks=1), marks=pytest.mark.slow),
    pytest.param(FROZEN.replace(weights="none"), marks=pytest.mark.slow),  # batch norm moves, weights from the seed
], ids=["frozen", "partial", "random-frozen"])
def test_a_slim_checkpoint_resumes_exactly_and_rebuilds_the_trained_model(
        arrays: data.ArrayData, tmp_path: Path, hp: HParams) -> None:
    epochs = 2
    whole = run(hp, arrays, epochs=epochs)
    torch.save(run(hp, arrays, epochs=1)["states"][-1], tmp_path / "state.pt")
    # What training changes, nothing more: for a frozen backbone its head and the head's optimizer state.
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert (tmp_path / "state.pt").stat().st_size <= 1.1 * tensor_bytes(saved)
    resumed = run(hp, arrays, epochs=epochs, state=saved)
    assert_same_metrics(resumed["metrics"], whole["metrics"][-1:], 1e-6)
    for key, value in whole["states"][-1][TRAINABLE].items():
        assert torch.allclose(resumed["states"][-1][TRAINABLE][key], value, atol=1e-7), key
    # The export's model: rebuilt from the last checkpoint, it is the trained one, weight for weight.
    rebuilt = restore_model(len(arrays.classes), hp, whole["states"][-1]).state_dict()
    for key, value in whole["model"].state_dict().items():
        assert torch.equal(rebuilt[key], value), key


@pytest.mark.parametrize("change", [
    {"weights": "none"},  # the frozen blocks' batch norm keeps learning: features change every epoch
    {"augment": 0.3},  # every epoch sees new pixels
    {"arch": "inception_partial", "unfrozen_blocks": 1},
    {"arch": "small_cnn"},
], ids=lambda change: "-".join(f"{k}={v}" for k, v in change.items()))
def test_features_are_not_cached_when_they_would_change(arrays: data.ArrayData, change: dict) -> None:
    epochs = 2
    result = run(FROZEN.replace(**change), arrays, epochs=epochs)
    assert result["trained"] == [result["model"]]
    if change.get("arch") != "small_cnn":
        assert result["backbone_images"] >= epochs * len(arrays.train.labels)


def test_augmented_views_are_cached_once_and_reused(arrays: data.ArrayData) -> None:
    views = 2
    result = run(FROZEN.replace(augment=0.5, feature_views=views), arrays)
    assert result["backbone_images"] == views * len(arrays.train.labels) + len(arrays.val.labels)
    assert result["trained"] == [result["model"].head]
    again = run(FROZEN.replace(augment=0.5, feature_views=views), arrays)
    assert_same_metrics(again["metrics"], result["metrics"], 0)  # seeded: the same views
    one_view = run(FROZEN.replace(augment=0.5, feature_views=1), arrays)
    assert one_view["metrics"][-1]["train_loss"] != result["metrics"][-1]["train_loss"]


def test_runs_sharing_features_compute_them_once_and_train_as_if_each_had(arrays: data.ArrayData) -> None:
    store: dict[str, Any] = {}

    def share(key: str, count: int, compute: Any) -> tuple[Any, int]:
        if key in store:
            return store[key], 0
        store[key] = [compute(index) for index in range(count)]
        return store[key], count

    alone = run(FROZEN, arrays, epochs=2)
    first = run(FROZEN, arrays, epochs=2, share_features=share, data_key="data-1")
    other_head = run(FROZEN.replace(head_units=16, lr=3e-3), arrays, epochs=2, share_features=share, data_key="data-1")
    again = run(FROZEN, arrays, epochs=2, share_features=share, data_key="data-1")
    assert len(store) == 1  # one backbone, one set of images, one view: one key
    assert first["backbone_images"] == alone["backbone_images"] > 0
    assert other_head["backbone_images"] == again["backbone_images"] == 0
    assert [m["features_shared"] for m in first["metrics"] + again["metrics"]] == [0, 0, 1, 1]
    assert again["metrics"][0]["features_s"] < first["metrics"][0]["features_s"]
    assert_same_metrics(again["metrics"], alone["metrics"], 1e-6)  # trained as if it had computed them
    # other data, or other views, are other features
    run(FROZEN, arrays, epochs=1, share_features=share, data_key="data-2")
    run(FROZEN.replace(augment=0.3, feature_views=2), arrays, epochs=1, share_features=share, data_key="data-1")
    assert len(store) == 3
    # a backbone that trains has no features to share
    partial = run(FROZEN.replace(arch="inception_partial", unfrozen_blocks=1), arrays, epochs=1,
                  share_features=share, data_key="data-1")
    assert len(store) == 3 and "features_s" not in partial["metrics"][0]
