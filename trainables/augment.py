"""Batched image augmentation driven by one strength `s` in [0, 1].

`s = 1` is the tutorials' strongest Keras `ImageDataGenerator` setting: rotation 50 deg,
zoom 0.3, width/height shift 0.2, shear 0.2, horizontal flip, brightness 0.8-1.2, fill mode
nearest; plus the bears tutorial's random crop-and-zoom (a crop of 50-100% of the area,
anywhere in the image, scaled back to full size). Smaller `s` scales every range linearly
and `s = 0` is the identity. All images of a
batch are transformed at once, each with its own random parameters, on whatever device the
batch lives on (the GPU when training there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentRanges:
    """The ranges at strength 1, in Keras's units."""

    rotation_deg: float = 50.0
    zoom: float = 0.3  # scale drawn from [1 - zoom, 1 + zoom]
    shift: float = 0.2  # fraction of width / height
    # Keras's shear_range is an angle in degrees, so the tutorials' 0.2 is a 0.2 deg shear.
    shear_deg: float = 0.2
    brightness: float = 0.2  # factor drawn from [1 - brightness, 1 + brightness]
    crop_area: float = 0.5  # a crop's area fraction drawn from [1 - crop_area, 1]


FULL = AugmentRanges()


def _uniform(n: int, half_width: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * half_width


def random_affine(n: int, strength: float, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", ranges: AugmentRanges = FULL) -> torch.Tensor:
    """`n` random 2x3 matrices mapping output to input coordinates in [-1, 1] (affine_grid's)."""
    device = torch.device(device)
    angle = _uniform(n, math.radians(ranges.rotation_deg * strength), generator, device)
    shear = _uniform(n, math.radians(ranges.shear_deg * strength), generator, device)
    zoom = 1 + _uniform(n, ranges.zoom * strength, generator, device)
    # A shift of fraction f of the width is 2f in affine_grid's [-1, 1] coordinates.
    tx = _uniform(n, 2 * ranges.shift * strength, generator, device)
    ty = _uniform(n, 2 * ranges.shift * strength, generator, device)
    flip = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0) if strength > 0 \
        else torch.ones(n, device=device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Keras's zoom z samples the input at z times the output coordinates: z > 1 zooms out.
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = zoom * cos * flip
    theta[:, 0, 1] = zoom * (-sin + cos * torch.tan(shear))
    theta[:, 1, 0] = zoom * sin * flip
    theta[:, 1, 1] = zoom * (cos + sin * torch.tan(shear))
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta


def random_crop(n: int, strength: float, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", ranges: AugmentRanges = FULL) -> torch.Tensor:
    """`n` random crops as 2x3 matrices (square, side `c` of the image, centre where it fits):
    sampling through one zooms into that region (torchvision's RandomResizedCrop, as fastai's
    `aug_transforms` in the bears tutorial, without its aspect-ratio change)."""
    device = torch.device(device)
    area = 1 - torch.rand(n, generator=generator, device=device) * ranges.crop_area * strength
    side = area.sqrt()
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, 0, 2] = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - side)
    theta[:, 1, 2] = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - side)
    return theta


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The 2x3 matrices of applying `inner`, then `outer`, to output coordinates."""
    theta = outer[:, :, :2] @ inner
    theta[:, :, 2] += outer[:, :, 2]
    return theta


def augment(images: torch.Tensor, strength: float, generator: torch.Generator | None = None,
            ranges: AugmentRanges = FULL) -> torch.Tensor:
    """Augment a float batch [B, C, H, W] with values in [0, 1]; returns a new batch."""
    if strength <= 0:
        return images
    n = images.shape[0]
    # The Keras transform moves the picture; the crop then picks the region it is taken from.
    theta = compose(random_crop(n, strength, generator, images.device, ranges),
                    random_affine(n, strength, generator, images.device, ranges)).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # padding "border" repeats the edge pixel: Keras's fill_mode="nearest".
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = 1 + _uniform(n, ranges.brightness * strength, generator, images.device).to(images.dtype)
    return (out * brightness.view(n, 1, 1, 1)).clamp_(0, 1)
