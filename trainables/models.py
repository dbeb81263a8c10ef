"""The architectures the search chooses from, registered under the names the space uses.

`create_model(arch, ...)` is the one factory. Weight loading (torchvision's ImageNet weights
for Inception v3) lives in `load_inception_weights`, apart from the architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# Inception v3's blocks from the input upwards; `unfrozen_blocks=k` trains the top k.
INCEPTION_BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                    "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
INCEPTION_FEATURES = 2048
SMALL_CNN_DENSE = 512  # the cats-vs-dogs tutorial's Dense(512)
SMALL_CNN_POOLED_PX = 4  # flatten a fixed 4x4 map so the dense layer does not grow with image size


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be loaded; the message says which file to place where."""


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


class InceptionClassifier(nn.Module):
    """Inception v3 up to its pooled features, then a head: with `head_units` (the
    carnivores tutorial's 128) Dense ReLU -> Dropout -> classes; with 0, Dropout -> classes
    (the bears tutorial's new softmax layer on the pre-logits).

    With ImageNet weights, frozen blocks stay in eval mode while training, as Keras does for
    a frozen base, so their batch-norm statistics are never updated. With random weights
    their batch norm keeps learning its statistics (the weights stay frozen): random
    convolutions with untouched unit statistics blow activations up to ~1e28 by the top
    block, which no head can learn from."""

    def __init__(self, num_classes: int, unfrozen_blocks: int, dropout: float, weights: str,
                 head_units: int = 128, load_weights: bool = True) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        backbone = inception_v3(weights=None, aux_logits=False, init_weights=weights == "none",
                                # Google's weights expect inputs in [-1, 1]; this converts from
                                # ImageNet mean/std normalisation, as torchvision does for them.
                                transform_input=weights == "imagenet")
        if weights == "imagenet" and load_weights:
            state = load_inception_weights()
            backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("AuxLogits.")},
                                     strict=True)
        backbone.fc = nn.Identity()
        self.backbone = backbone
        hidden: list[nn.Module] = [nn.Linear(INCEPTION_FEATURES, head_units), nn.ReLU(inplace=True)] \
            if head_units else []
        self.head = nn.Sequential(*hidden, nn.Dropout(dropout),
                                  nn.Linear(head_units or INCEPTION_FEATURES, num_classes))
        trainable = set(INCEPTION_BLOCKS[len(INCEPTION_BLOCKS) - unfrozen_blocks:]) if unfrozen_blocks else set()
        self.frozen: list[nn.Module] = []
        for name, child in backbone.named_children():
            if name not in trainable:
                child.requires_grad_(False)
                if weights == "imagenet":
                    self.frozen.append(child)

    def train(self, mode: bool = True) -> "InceptionClassifier":
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def load_inception_weights() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for Inception v3, from TORCH_HOME or downloaded there."""
    from torchvision.models import Inception_V3_Weights

    weights = Inception_V3_Weights.IMAGENET1K_V1
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # no network, a proxy, a truncated file: all end the same way
        raise WeightsUnavailable(
            f"Inception v3 ImageNet weights could not be loaded ({type(err).__name__}: {err}). "
            f"Download {weights.url} on a machine with internet and place it at {target} "
            f"(set TORCH_HOME to move that folder), or set weights='none' to train from random "
            f"initialisation."
        ) from None


ModelFactory = Callable[..., nn.Module]

REGISTRY: dict[str, ModelFactory] = {
    "small_cnn": lambda num_classes, hp, load_weights: SmallCNN(
        num_classes, width=hp["cnn_width"], depth=hp["cnn_depth"], dropout=hp["dropout"]),
    "inception_frozen": lambda num_classes, hp, load_weights: InceptionClassifier(
        num_classes, unfrozen_blocks=0, dropout=hp["dropout"], weights=hp["weights"],
        head_units=hp["head_units"], load_weights=load_weights),
    "inception_partial": lambda num_classes, hp, load_weights: InceptionClassifier(
        num_classes, unfrozen_blocks=hp["unfrozen_blocks"], dropout=hp["dropout"], weights=hp["weights"],
        head_units=hp["head_units"], load_weights=load_weights),
}


def create_model(num_classes: int, hp: dict, *, load_weights: bool = True) -> nn.Module:
    """Build the architecture `hp["arch"]` for `num_classes` outputs (logits).

    `load_weights=False` builds the layout `hp["weights"]` implies (e.g. ImageNet's input
    scaling) without loading them: for a model whose trained state dict follows.
    """
    try:
        factory = REGISTRY[hp["arch"]]
    except KeyError:
        raise ValueError(f"arch {hp['arch']!r} is not registered; allowed: {', '.join(REGISTRY)}") from None
    return factory(num_classes, hp, load_weights)
