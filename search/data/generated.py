"""A small, learnable image data set the project generates itself: no download needed.

Four coat patterns echoing the carnivores tutorial: blotches (few large irregular patches),
rosettes (broken rings around a paler centre), spots (small solid dots), stripes (long wavy
bands). Each image draws its own colours, pattern scale, rotation, lighting and noise, so the
class is told by shape, not colour, and a small net needs a few epochs to learn it.
"""

from __future__ import annotations

import colorsys
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = ("blotches", "rosettes", "spots", "stripes")
JPEG_QUALITY = 90

Grid = tuple[np.ndarray, np.ndarray]  # (y, x) pixel coordinates, already rotated
Pattern = Callable[[np.random.Generator, Grid, float], np.ndarray]  # -> ink in [0, 1] per pixel


def _centres(rng: np.random.Generator, spacing: float, size: int) -> np.ndarray:
    """Jittered lattice points, `spacing` apart, covering the rotated image plus a margin."""
    ticks = np.arange(-0.25 * size - spacing, 1.25 * size + spacing, spacing)
    points = np.stack(np.meshgrid(ticks, ticks), -1).reshape(-1, 2)
    return points + rng.uniform(-0.3, 0.3, points.shape) * spacing


def _nearest(grid: Grid, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest centre and the (dy, dx) offset from it."""
    dy = grid[0][..., None] - centres[:, 0]
    dx = grid[1][..., None] - centres[:, 1]
    index = (dy * dy + dx * dx).argmin(-1)
    take = index[..., None]
    return index, np.take_along_axis(dy, take, -1)[..., 0], np.take_along_axis(dx, take, -1)[..., 0]


def _spots(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    centres = _centres(rng, scale, grid[0].shape[0])
    radii = scale * rng.uniform(0.17, 0.3) * rng.uniform(0.75, 1.25, len(centres))
    index, dy, dx = _nearest(grid, centres)
    return (np.hypot(dy, dx) < radii[index]).astype(np.float64)


def _rosettes(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    centres = _centres(rng, scale * 1.3, grid[0].shape[0])
    outer = scale * rng.uniform(0.33, 0.45) * rng.uniform(0.85, 1.15, len(centres))
    inner = outer * rng.uniform(0.5, 0.65)
    index, dy, dx = _nearest(grid, centres)
    distance, angle = np.hypot(dy, dx), np.arctan2(dy, dx)
    # Broken rings: each rosette gets 1-3 gaps at its own angles.
    lobes, phase = rng.integers(1, 4, len(centres)), rng.uniform(0, 2 * np.pi, len(centres))
    unbroken = np.cos(lobes[index] * angle + phase[index]) > rng.uniform(-1.0, -0.6)
    ring = (distance < outer[index]) & (distance > inner[index]) & unbroken
    centre = distance <= inner[index]
    return np.where(ring, 1.0, np.where(centre, rng.uniform(0.3, 0.5), 0.0))


def _stripes(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    along, across = grid[1], grid[0]
    wave = np.sin(along * 2 * np.pi / (scale * rng.uniform(2, 5)) + rng.uniform(0, 2 * np.pi))
    drift = np.sin(along * 2 * np.pi / (scale * rng.uniform(6, 12)) + rng.uniform(0, 2 * np.pi))
    bend = scale * (rng.uniform(0.1, 0.35) * wave + rng.uniform(0, 0.3) * drift)
    return (np.sin((across + bend) * 2 * np.pi / scale) > rng.uniform(0.0, 0.4)).astype(np.float64)


def _blotches(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    y, x = grid
    size = y.shape[0]
    field = np.zeros_like(y)
    for _ in range(rng.integers(3, 7)):
        cy, cx = rng.uniform(0, size, 2)
        sy, sx = rng.uniform(0.6, 1.5, 2) * scale
        field += np.exp(-(((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2))
    for _ in range(3):  # ragged edges: a few random plane waves about a blotch wide
        angle, wavelength = rng.uniform(0, np.pi), scale * rng.uniform(0.7, 1.4)
        field += 0.06 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / wavelength
                               + rng.uniform(0, 2 * np.pi))
    return (field > rng.uniform(0.45, 0.65)).astype(np.float64)


PATTERNS: dict[str, Pattern] = {
    "blotches": _blotches, "rosettes": _rosettes, "spots": _spots, "stripes": _stripes,
}


def _colour(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value)) * 255


def render(name: str, size_px: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [size, size, 3] image of pattern `name`, drawn from `rng` alone."""
    y, x = np.mgrid[0:size_px, 0:size_px].astype(np.float64) - (size_px - 1) / 2
    turn = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(turn), np.sin(turn)
    grid = (x * sin + y * cos + size_px / 2, x * cos - y * sin + size_px / 2)
    ink = PATTERNS[name](rng, grid, size_px * rng.uniform(0.12, 0.24))
    hue = rng.uniform()
    light, dark = rng.permutation([rng.uniform(0.65, 0.95), rng.uniform(0.12, 0.4)])
    background = _colour(hue, rng.uniform(0.2, 0.8), light)
    foreground = _colour(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.3, 0.9), dark)
    image = background + ink[..., None] * (foreground - background)
    if rng.uniform() < 0.7:  # uneven lighting across the image, from a random side
        side = rng.uniform(0, 2 * np.pi)
        image *= 1 + rng.uniform(0.1, 0.4) * ((x * np.cos(side) + y * np.sin(side)) / size_px)[..., None]
    image += rng.normal(0, rng.uniform(4, 20), image.shape)
    return image.clip(0, 255).astype(np.uint8)


def generate_coats(root: Path, train_per_class: int = 150, test_per_class: int = 30, size_px: int = 96,
                   seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """Write root/train/<class>/<class>_NNNN.jpg and root/test/... deterministically; return root.

    Every image has its own seed (seed, split, class, index), so the same arguments give the
    same bytes. `classes` renames the classes (2 to 4 of them) so the set can stand in for a
    real one, e.g. ("cheetah", "hyena", "jaguar", "tiger"); the n-th class gets the n-th pattern.
    """
    if not 2 <= len(classes) <= len(PATTERNS) or len(set(classes)) != len(classes):
        raise ValueError(f"classes {classes!r}: give 2 to {len(PATTERNS)} distinct names")
    root = Path(root)
    for split_index, (split, count) in enumerate((("train", train_per_class), ("test", test_per_class))):
        for class_index, (name, pattern) in enumerate(zip(classes, PATTERNS)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_index, class_index, i])
                Image.fromarray(render(pattern, size_px, rng)).save(folder / f"{name}_{i:04d}.jpg",
                                                                     quality=JPEG_QUALITY)
    return root


GENERATORS: dict[str, Callable[..., Path]] = {"coats": generate_coats}


def ensure_generated(root: Path, generator: str = "coats", **kwargs: object) -> bool:
    """Generate into `root` unless it exists; True if it generated.

    Written into a hidden sibling folder and renamed into place, so an interrupted run never
    leaves a half-written folder that a later run would take as complete.
    """
    if generator not in GENERATORS:
        raise ValueError(f"generator {generator!r} is unknown; allowed: {', '.join(sorted(GENERATORS))}")
    root = Path(root)
    if root.exists():
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        GENERATORS[generator](staging, **kwargs)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if root.exists():
            return False  # another process finished first; its folder is complete
        raise
    return True
