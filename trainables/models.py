"""Builds the architectures of `trainables.archs.ARCHS`: one builder per family, one factory.

`create_model(num_classes, hp)` is the one factory. Loading ImageNet weights lives in
`load_pretrained`, apart from the architectures; every pretrained backbone is wrapped the
same way (`BackboneClassifier`), so freezing, the head and the frozen-feature cache work
alike for Inception v3, ResNet-50, EfficientNet-B0 and any backbone added to the table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainables.archs import Arch, WeightsUnavailable, lookup

__all__ = ["BUILDERS", "GRAPH_FIELDS", "BackboneClassifier", "SmallCNN", "WeightsUnavailable", "backbone_builder",
           "create_model", "graph_key", "load_pretrained"]
from trainables.hparams import HParams

SMALL_CNN_DENSE = 512  # the cats-vs-dogs tutorial's Dense(512)
SMALL_CNN_POOLED_PX = 4  # flatten a fixed 4x4 map so the dense layer does not grow with image size
INCEPTION_BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                    "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


class SmallCNN(nn.Module):
    """The cats-vs-dogs tutorial's from-scratch convnet: conv 32-64-128-128 with max-pooling,
    dropout, dense 512, class outputs. `width` scales the channels, `depth` counts conv blocks."""

    def __init__(self, num_classes: int, width: int = 32, depth: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels_in = 3
        for i in range(depth):
            channels_out = width * min(2**i, 4)
            layers += [nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            channels_in = channels_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(SMALL_CNN_POOLED_PX))
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(channels_in * SMALL_CNN_POOLED_PX**2, SMALL_CNN_DENSE), nn.ReLU(inplace=True),
            nn.Linear(SMALL_CNN_DENSE, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BackboneClassifier(nn.Module):
    """A backbone up to its pooled features, then a head: with `head_units` (the carnivores
    tutorial's 128) Dense ReLU -> Dropout -> classes; with 0, Dropout -> classes (the bears
    tutorial's new softmax layer on the pre-logits). The top `unfrozen_blocks` of `blocks`
    train; the rest of the backbone is frozen.

    With ImageNet weights (`pretrained`), frozen parts stay in eval mode while training, as
    Keras does for a frozen base, so their batch-norm statistics never change. With random
    weights their batch norm keeps learning its statistics (the weights stay frozen): random
    convolutions with untouched unit statistics blow activations up (~1e28 by Inception's top
    block), which no head can learn from."""

    def __init__(self, backbone: nn.Module, features: int, blocks: list[nn.Module], num_classes: int, *,
                 unfrozen_blocks: int, dropout: float, head_units: int, pretrained: bool) -> None:
        super().__init__()
        self.backbone = backbone
        hidden: list[nn.Module] = [nn.Linear(features, head_units), nn.ReLU(inplace=True)] if head_units else []
        self.head = nn.Sequential(*hidden, nn.Dropout(dropout), nn.Linear(head_units or features, num_classes))
        self.pretrained = pretrained
        self.trainable_blocks = blocks[len(blocks) - unfrozen_blocks:] if unfrozen_blocks else []
        backbone.requires_grad_(False)
        for block in self.trainable_blocks:
            block.requires_grad_(True)

    @property
    def frozen(self) -> bool:
        """True when training can never change the backbone's outputs (the feature cache's case)."""
        return self.pretrained and not self.trainable_blocks

    def train(self, mode: bool = True) -> BackboneClassifier:
        super().train(mode)
        if self.pretrained:
            self.backbone.eval()
            for block in self.trainable_blocks:
                block.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def load_pretrained(arch: Arch) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for `arch`, from TORCH_HOME or downloaded there."""
    from torchvision.models import get_weight

    weights = get_weight(arch.weights)
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # no network, a proxy, a truncated file: all end the same way
        raise WeightsUnavailable(
            f"{arch.name}: ImageNet weights could not be loaded ({type(err).__name__}: {err}). "
            f"Download {weights.url} on a machine with internet and place it at {target} "
            f"(set TORCH_HOME to move that folder), or set weights='none' to train from random "
            f"initialisation."
        ) from None


# A backbone builder: (pretrained layout?) -> (backbone giving pooled features, their width,
# its blocks from the input upwards). The layout differs only where ImageNet weights need it.
BackboneFn = Callable[[bool], tuple[nn.Module, int, list[nn.Module]]]


def _inception_v3(pretrained: bool) -> tuple[nn.Module, int, list[nn.Module]]:
    from torchvision.models import inception_v3

    # Google's weights expect inputs in [-1, 1]; transform_input converts from ImageNet
    # mean/std normalisation, as torchvision does for them.
    backbone = inception_v3(weights=None, aux_logits=False, init_weights=not pretrained, transform_input=pretrained)
    backbone.fc = nn.Identity()
    return backbone, 2048, [getattr(backbone, name) for name in INCEPTION_BLOCKS]


def _resnet50(pretrained: bool) -> tuple[nn.Module, int, list[nn.Module]]:
    from torchvision.models import resnet50

    backbone = resnet50(weights=None)
    backbone.fc = nn.Identity()
    return backbone, 2048, [block for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
                            for block in layer]


def _efficientnet_b0(pretrained: bool) -> tuple[nn.Module, int, list[nn.Module]]:
    from torchvision.models import efficientnet_b0

    backbone = efficientnet_b0(weights=None)
    backbone.classifier = nn.Identity()  # its dropout is the head's job here
    stages = list(backbone.features)
    return backbone, 1280, [block for stage in stages[1:-1] for block in stage] + [stages[-1]]


def backbone_builder(make: BackboneFn) -> ModelBuilder:
    """A family builder from a backbone function: weights loaded when asked, head added."""

    def build(arch: Arch, hp: HParams, num_classes: int, load_weights: bool) -> nn.Module:
        pretrained = arch.pretrained and hp.weights == "imagenet"
        backbone, features, blocks = make(pretrained)
        if pretrained and load_weights:
            head_keys = {k for k in backbone.state_dict() if k.startswith(("fc.", "classifier."))}
            state = {k: v for k, v in load_pretrained(arch).items()
                     if not k.startswith(("AuxLogits.", "fc.", "classifier."))}
            missing, unexpected = backbone.load_state_dict(state, strict=False)
            if set(missing) - head_keys or unexpected:
                raise WeightsUnavailable(f"{arch.name}: the weights file does not fit the architecture "
                                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        unfrozen = (hp.unfrozen_blocks or 0) if arch.freeze == "partial" else 0
        if unfrozen > len(blocks):
            raise ValueError(f"{arch.name}: unfrozen_blocks={unfrozen}, but it has {len(blocks)} blocks")
        return BackboneClassifier(backbone, features, blocks, num_classes, unfrozen_blocks=unfrozen,
                                  dropout=hp.dropout, head_units=hp.head_units or 0, pretrained=pretrained)

    return build


ModelBuilder = Callable[[Arch, HParams, int, bool], nn.Module]

BUILDERS: dict[str, ModelBuilder] = {
    "small_cnn": lambda arch, hp, num_classes, load_weights: SmallCNN(
        num_classes, width=hp.cnn_width, depth=hp.cnn_depth, dropout=hp.dropout),
    "inception_v3": backbone_builder(_inception_v3),
    "resnet50": backbone_builder(_resnet50),
    "efficientnet_b0": backbone_builder(_efficientnet_b0),
}


def create_model(num_classes: int, hp: HParams, *, load_weights: bool = True) -> nn.Module:
    """Build the architecture `hp.arch` for `num_classes` outputs (logits).

    `load_weights=False` builds the layout `hp.weights` implies (e.g. ImageNet's input
    scaling) without loading them: for a model whose trained state dict follows.
    """
    try:
        arch = lookup(hp.arch)
        builder = BUILDERS[arch.family]
    except KeyError as err:
        raise ValueError(err.args[0] if err.args else f"no builder for {hp.arch!r}") from None
    return builder(arch, hp, num_classes, load_weights)


# The HParams the builders lay the inference graph out from. The others change only training:
# dropout is the identity in eval mode (the ONNX export drops it), unfrozen_blocks and
# feature_views only decide what trains; weights matters for the layout (Inception's input scaling).
GRAPH_FIELDS = ("arch", "weights", "head_units", "cnn_width", "cnn_depth")


def graph_key(hp: HParams) -> tuple[object, ...]:
    """Equal for two configurations whose models compute the same graph (weights aside), so
    their serving cost (parameters, latency) is measured once."""
    return tuple(getattr(hp, name) for name in GRAPH_FIELDS)
