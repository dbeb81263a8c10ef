"""Augmentation strength: 0 is the identity, 1 stays inside the tutorials' ranges."""

from __future__ import annotations

import math

import torch

from trainables.augment import FULL, augment, compose, random_affine, random_crop


def test_strength_zero_is_the_identity() -> None:
    images = torch.rand(4, 3, 16, 16)
    assert torch.equal(augment(images, 0.0), images)
    theta = random_affine(8, 0.0)
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(8, 2, 3))


def test_strength_one_stays_inside_the_documented_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    theta = random_affine(5000, 1.0, g)
    a, b, tx = theta[:, 0, 0], theta[:, 1, 0], theta[:, 0, 2]
    # The first column is zoom * flip * (cos, sin) of the rotation.
    zoom = torch.sqrt(a**2 + b**2)
    flip = torch.sign(theta[:, 0, 0] * theta[:, 1, 1] - theta[:, 0, 1] * theta[:, 1, 0])
    angle = torch.rad2deg(torch.atan2(b * flip, a * flip))
    assert zoom.min() >= 1 - FULL.zoom - 1e-5 and zoom.max() <= 1 + FULL.zoom + 1e-5
    assert angle.abs().max() <= FULL.rotation_deg + 1e-3 and angle.abs().max() > 0.9 * FULL.rotation_deg
    assert tx.abs().max() <= 2 * FULL.shift + 1e-6 and theta[:, 1, 2].abs().max() <= 2 * FULL.shift + 1e-6
    assert 0.4 < (flip < 0).float().mean() < 0.6
    gray = torch.full((200, 3, 8, 8), 0.5)
    out = augment(gray, 1.0, torch.Generator().manual_seed(1))
    factors = out.mean(dim=(1, 2, 3)) / 0.5
    assert factors.min() >= 1 - FULL.brightness - 1e-5 and factors.max() <= 1 + FULL.brightness + 1e-5


def test_half_strength_halves_the_ranges() -> None:
    theta = random_affine(5000, 0.5, torch.Generator().manual_seed(0))
    zoom = torch.sqrt(theta[:, 0, 0] ** 2 + theta[:, 1, 0] ** 2)
    assert zoom.max() <= 1 + FULL.zoom / 2 + 1e-5 and theta[:, 0, 2].abs().max() <= FULL.shift + 1e-6
    assert math.isclose(float(zoom.max()), 1 + FULL.zoom / 2, abs_tol=0.01)


def test_each_image_gets_its_own_transform_and_shapes_are_kept() -> None:
    images = torch.rand(1, 3, 20, 24).repeat(6, 1, 1, 1)
    out = augment(images, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert len({round(float(o.sum()), 3) for o in out}) == 6


def test_the_crop_and_zoom_stays_inside_the_image_and_its_area_range() -> None:
    assert torch.allclose(random_crop(8, 0.0), torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(8, 2, 3))
    theta = random_crop(5000, 1.0, torch.Generator().manual_seed(0))
    side, cx, cy = theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 2]
    assert torch.equal(side, theta[:, 1, 1]) and (theta[:, 0, 1] == 0).all()
    area = side**2
    assert area.min() >= 1 - FULL.crop_area - 1e-6 and area.max() <= 1 and area.min() < 1 - 0.95 * FULL.crop_area
    assert ((cx.abs() + side) <= 1 + 1e-6).all() and ((cy.abs() + side) <= 1 + 1e-6).all()  # inside the image
    half = random_crop(5000, 0.5, torch.Generator().manual_seed(0))
    assert (half[:, 0, 0] ** 2).min() >= 1 - FULL.crop_area / 2 - 1e-6


def test_compose_applies_the_inner_transform_first() -> None:
    points = torch.tensor([[0.5], [-0.25], [1.0]])  # homogeneous (x, y, 1)
    inner, outer = random_affine(3, 1.0, torch.Generator().manual_seed(2)), random_crop(3, 1.0)
    both = compose(outer, inner) @ points
    step = inner @ points
    expected = outer[:, :, :2] @ step + outer[:, :, 2:]
    assert torch.allclose(both, expected, atol=1e-6)


def test_a_crop_zooms_into_its_region() -> None:
    image = torch.zeros(1, 1, 8, 8)
    image[..., :4, :4] = 1.0  # the top-left quarter is white
    top_left = torch.tensor([[[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]]])  # side 1/2, centred in that quarter
    grid = torch.nn.functional.affine_grid(top_left, [1, 1, 8, 8], align_corners=False)
    out = torch.nn.functional.grid_sample(image, grid, padding_mode="border", align_corners=False)
    # the quarter fills the picture (only the last row and column blend with its border)
    assert torch.allclose(out[..., :7, :7], torch.ones(1, 1, 7, 7)) and out.mean() > 0.9
