"""The table of architectures the search chooses from: one entry per name the space uses.

Torch-free, so the spec, the space, the model factory and the report all read the same
table without importing torch. Adding an architecture is one `Arch` entry here plus, for a
new family, one builder in `trainables.models.BUILDERS`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Freeze = Literal["none", "all", "partial"]


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be loaded; the message says which file to place where.
    (Here, not beside the loader, so the CLI can name this error without importing torch.)"""


@dataclass(frozen=True)
class Arch:
    """One architecture the space can name.

    `family` names its builder; `searches` the hyperparameters it adds to the space (asked
    only when this architecture is drawn); `freeze` says whether a pretrained backbone is
    trained from scratch ("none"), frozen ("all") or trained in its top `unfrozen_blocks`
    of `blocks` ("partial"). `weights` is torchvision's weights enum for the ImageNet
    backbone and `weights_file` the file it is stored as under TORCH_HOME. `checkpoint_mb` is
    the size of one of its checkpoints (the weights and Adam's state of what trains) at the space's
    largest setting, measured, and `model_mb` the whole model's (frozen backbone included, as
    `best/` exports it): the disk-space estimate of a search (`search.state.disk`) reads both.
    """

    name: str
    family: str
    searches: tuple[str, ...]
    min_size_px: int
    freeze: Freeze = "none"
    weights: str | None = None
    weights_file: str | None = None
    blocks: int = 0
    checkpoint_mb: float = 100.0  # a guess where an entry does not say: a large backbone's
    model_mb: float = 110.0  # the whole model's parameters (an exported model.pt, or its ONNX)

    @property
    def pretrained(self) -> bool:
        return self.weights is not None


def _backbone(name: str, family: str, min_size_px: int, weights: str, weights_file: str,
              blocks: int, checkpoint_mb: tuple[float, float], model_mb: float) -> tuple[Arch, Arch]:
    """The frozen and the partly unfrozen variants of one ImageNet backbone (`checkpoint_mb` in that order)."""
    frozen = Arch(f"{name}_frozen", family, ("head_units", "feature_views"), min_size_px, "all",
                  weights, weights_file, blocks, checkpoint_mb[0], model_mb)
    partial = Arch(f"{name}_partial", family, ("unfrozen_blocks", "head_units"), min_size_px, "partial",
                   weights, weights_file, blocks, checkpoint_mb[1], model_mb)
    return frozen, partial


# Checkpoint sizes (what trains, with Adam's state, the largest optimizer's; `trainables.state`) at
# 128 head units, 3 unfrozen blocks, small_cnn 64 wide and 4 deep (1.6 MB at 8 wide and 2 deep);
# whole models' parameters as torchvision builds them (an upper bound of what best/ exports).
ARCHS: dict[str, Arch] = {arch.name: arch for arch in (
    Arch("small_cnn", "small_cnn", ("cnn_width", "cnn_depth"), min_size_px=16, checkpoint_mb=37, model_mb=13),
    # torchvision's Inception v3 refuses inputs under 75 px (its stem shrinks 75 px to 1x1);
    # its blocks are Mixed_5b .. Mixed_7c.
    *_backbone("inception", "inception_v3", 75, "Inception_V3_Weights.IMAGENET1K_V1",
               "inception_v3_google-0cc3c7bd.pth", blocks=11, checkpoint_mb=(3.2, 157),
               model_mb=109),
    # ResNet-50's 16 bottleneck blocks, EfficientNet-B0's 16 MBConv blocks and its last 1x1 conv;
    # both shrink the input 32x, so 32 px leaves one pixel of features.
    *_backbone("resnet50", "resnet50", 32, "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth", blocks=16,
               checkpoint_mb=(3.2, 183), model_mb=103),
    *_backbone("efficientnet_b0", "efficientnet_b0", 32, "EfficientNet_B0_Weights.IMAGENET1K_V1",
               "efficientnet_b0_rwightman-7f5810bc.pth", blocks=17, checkpoint_mb=(2.0, 23),
               model_mb=22),
)}

# Always in the default space: the tutorials' architectures. The other backbones join it only
# where their weights are already on disk (see `default_archs`).
CORE_ARCHS = ("small_cnn", "inception_frozen", "inception_partial")


def torch_hub_dir() -> Path:
    """Where torch.hub keeps downloads, worked out as torch does, without importing it."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def weights_path(arch: Arch) -> Path | None:
    """The file `arch`'s ImageNet weights are read from (None for an architecture without them)."""
    return torch_hub_dir() / "checkpoints" / arch.weights_file if arch.weights_file else None


def default_archs() -> tuple[str, ...]:
    """The architectures a `Space()` searches by default: the tutorials' ones, plus every
    other pretrained backbone whose weights file is present (none is downloaded unasked)."""
    extra = tuple(name for name, arch in ARCHS.items() if name not in CORE_ARCHS
                  and arch.pretrained and (path := weights_path(arch)) is not None and path.is_file())
    return CORE_ARCHS + extra


def lookup(name: str) -> Arch:
    """The table's entry for `name`; KeyError lists the names allowed."""
    try:
        return ARCHS[name]
    except KeyError:
        raise KeyError(f"architecture {name!r} is not in the table; allowed: {', '.join(ARCHS)}") from None
