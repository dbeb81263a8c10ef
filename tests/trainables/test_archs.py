"""The table of architectures: every entry builds, freezes as it says and works with the
frozen-feature cache; a new backbone is one table entry plus one builder."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from search.experiment.space import hparams, space_function
from search.experiment.spec import Experiment, IntRange, Space, SpecError
from tests.trainables.test_loop import HP
from trainables import archs, models
from trainables.archs import ARCHS, CORE_ARCHS, Arch, default_archs
from trainables.hparams import HParams
from trainables.loop import fit, frozen_backbone

CPU = torch.device("cpu")
BACKBONES = ("resnet50", "efficientnet_b0")


@pytest.fixture(scope="module")
def arrays(coats: Path, tmp_path_factory: pytest.TempPathFactory):
    from trainables import data

    return data.load(data.prepare(coats, 32, 0.25, 0, tmp_path_factory.mktemp("cache")).path)


def test_every_entry_is_consistent_with_its_builder_and_torchvision() -> None:
    from torchvision.models import get_weight

    names = {f.name for f in fields(HParams)}
    for name, arch in ARCHS.items():
        assert arch.name == name and arch.family in models.BUILDERS
        assert set(arch.searches) <= names
        if arch.pretrained:
            assert Path(get_weight(arch.weights).url).name == arch.weights_file
            assert arch.blocks >= 1 and arch.freeze in ("all", "partial")


@pytest.mark.parametrize("name", [f"{b}_{v}" for b in BACKBONES for v in ("frozen", "partial")])
def test_new_backbones_take_their_smallest_image_and_freeze_as_the_table_says(name: str) -> None:
    arch = ARCHS[name]
    model = models.create_model(3, HP.replace(arch=name, unfrozen_blocks=2, head_units=16))
    model.train()
    size = arch.min_size_px
    assert model(torch.rand(2, 3, size, size)).shape == (2, 3)
    trainable = [p for n, p in model.backbone.named_parameters() if p.requires_grad]
    if arch.freeze == "all":
        assert trainable == [] and all(p.requires_grad for p in model.head.parameters())
    else:
        top = [p for block in model.trainable_blocks for p in block.parameters()]
        assert len(model.trainable_blocks) == 2 and {id(p) for p in trainable} == {id(p) for p in top}


def test_unfrozen_blocks_is_bounded_by_the_fewest_blocks_of_the_searched_backbones() -> None:
    Space(arch="resnet50_partial", unfrozen_blocks=IntRange(1, 16))
    with pytest.raises(SpecError, match="Space.unfrozen_blocks"):
        Space(arch="inception_partial", unfrozen_blocks=IntRange(1, 16))
    with pytest.raises(SpecError, match="Experiment.image_size_px"):
        Experiment(name="x", data="d", image_size_px=24, space=Space(arch="efficientnet_b0_frozen"))


def test_the_default_space_adds_a_backbone_only_where_its_weights_are(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_archs() == CORE_ARCHS
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / ARCHS["resnet50_frozen"].weights_file).write_bytes(b"weights")
    assert default_archs() == (*CORE_ARCHS, "resnet50_frozen", "resnet50_partial")
    assert Space().archs() == default_archs()


def random_imagenet_weights(monkeypatch, family_model: nn.Module) -> None:
    """Stands in for the ImageNet download: the backbone's own layout, random values."""
    state = family_model.state_dict()
    monkeypatch.setattr(models, "load_pretrained", lambda arch: state)


def backbone_images(model_fit, family_type: type) -> tuple[list[dict], int]:
    """Run `model_fit(report)`, counting the images the backbone of type `family_type` saw."""
    seen = {"images": 0}

    def count(module: nn.Module, args: tuple, output: object) -> None:
        seen["images"] += len(args[0])

    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, output: count(module, args, output) if isinstance(module, family_type) else None)
    try:
        metrics: list[dict] = []
        model_fit(lambda m, s: metrics.append(m))
    finally:
        handle.remove()
    return metrics, seen["images"]


@pytest.mark.slow  # four ResNet-50 / EfficientNet runs
@pytest.mark.parametrize("family", BACKBONES)
def test_new_frozen_backbones_use_the_frozen_feature_cache(family: str, arrays, monkeypatch) -> None:
    import torchvision.models as tv

    builder = {"resnet50": tv.resnet50, "efficientnet_b0": tv.efficientnet_b0}[family]
    torch.manual_seed(0)
    random_imagenet_weights(monkeypatch, builder(weights=None))
    hp = HP.replace(arch=f"{family}_frozen", weights="imagenet", head_units=16, batch_size=16)
    assert frozen_backbone(models.create_model(4, hp)) is not None
    family_type = type(builder(weights=None))
    cached, cached_images = backbone_images(lambda r: fit(hp, arrays, 2, r, device=CPU), family_type)
    plain, plain_images = backbone_images(lambda r: fit(hp, arrays, 2, r, device=CPU, feature_cache=False),
                                          family_type)
    per_pass = len(arrays.train.labels) + len(arrays.val.labels)
    assert cached_images == per_pass and plain_images == 2 * per_pass
    for a, b in zip(cached, plain):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4, abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)


def _mobilenet(pretrained: bool) -> tuple[nn.Module, int, list[nn.Module]]:
    from torchvision.models import mobilenet_v3_small

    backbone = mobilenet_v3_small(weights=None)
    backbone.classifier = nn.Identity()
    return backbone, 576, list(backbone.features)[1:]


def test_a_third_backbone_is_one_table_entry_plus_one_builder(arrays, monkeypatch) -> None:
    entry = Arch("mobilenet_partial", "mobilenet_v3_small", ("unfrozen_blocks", "head_units"), 32, "partial",
                 "MobileNet_V3_Small_Weights.IMAGENET1K_V1", "mobilenet_v3_small-047dcff4.pth", blocks=12)
    monkeypatch.setitem(archs.ARCHS, entry.name, entry)
    monkeypatch.setitem(models.BUILDERS, entry.family, models.backbone_builder(_mobilenet))
    # The spec, the space, the resolved hyperparameters and the loop all take it.
    experiment = Experiment(name="m", data="d", image_size_px=32, weights="none",
                            space=Space(arch=entry.name, unfrozen_blocks=IntRange(1, 12), optimizer="adam"))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    constants = space_function(experiment.space)(trial)
    config = {**trial.params, **constants}
    hp = hparams(config, experiment.weights)
    assert hp.arch == entry.name and 1 <= hp.unfrozen_blocks <= 12 and hp.cnn_width is None
    reports: list[dict] = []
    model = fit(hp.replace(batch_size=16), arrays, 1, lambda m, s: reports.append(m), device=CPU)
    assert len(reports) == 1 and len(model.trainable_blocks) == hp.unfrozen_blocks
