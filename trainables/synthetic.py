"""A small, learnable image data set the project generates itself: no download needed.

Four coat patterns echoing the carnivores tutorial: blotches (few large irregular
patches), rosettes (rings around a lighter centre), spots (small solid dots), stripes (long
wavy bands). Each image draws its own colours, pattern scale, rotation, lighting and noise,
so the class is told by shape, not colour, and a small net needs a few epochs to learn it.
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

Grid = tuple[np.ndarray, np.ndarray]


def _centres(rng: np.random.Generator, spacing: float, size: int) -> np.ndarray:
    """Jittered grid points covering the image (and a margin), `spacing` pixels apart."""
    ticks = np.arange(-spacing, size + spacing, spacing)
    points = np.stack(np.meshgrid(ticks, ticks), -1).reshape(-1, 2)
    return points + rng.uniform(-0.3, 0.3, points.shape) * spacing


def _distance_to_nearest(grid: Grid, centres: np.ndarray) -> np.ndarray:
    y, x = grid
    d2 = (y[..., None] - centres[:, 0]) ** 2 + (x[..., None] - centres[:, 1]) ** 2
    return np.sqrt(d2.min(-1))


def _spots(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    radius = scale * rng.uniform(0.18, 0.3)
    return _distance_to_nearest(grid, _centres(rng, scale, grid[0].shape[0])) < radius


def _rosettes(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    d = _distance_to_nearest(grid, _centres(rng, scale * 1.3, grid[0].shape[0]))
    outer = scale * rng.uniform(0.35, 0.45)
    return (d < outer) & (d > outer * rng.uniform(0.5, 0.65))


def _stripes(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    y, x = grid
    angle = rng.uniform(0, np.pi)
    along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    wave = np.sin(along * 2 * np.pi / (scale * rng.uniform(2, 4))) * scale * 0.25
    return np.sin((across + wave) * 2 * np.pi / scale) > rng.uniform(0.1, 0.4)


def _blotches(rng: np.random.Generator, grid: Grid, scale: float) -> np.ndarray:
    y, x = grid
    size = y.shape[0]
    field = np.zeros_like(y)
    for _ in range(rng.integers(3, 6)):
        cy, cx = rng.uniform(0, size, 2)
        sy, sx = rng.uniform(0.6, 1.4, 2) * scale
        field += np.exp(-(((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2))
    return field > rng.uniform(0.45, 0.65)


PATTERNS: dict[str, Callable[[np.random.Generator, Grid, float], np.ndarray]] = {
    "blotches": _blotches, "rosettes": _rosettes, "spots": _spots, "stripes": _stripes,
}


def _colour(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value)) * 255


def render(name: str, size_px: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [size, size, 3] image of pattern `name`."""
    grid = np.mgrid[0:size_px, 0:size_px].astype(np.float64)
    scale = size_px * rng.uniform(0.12, 0.24)
    mask = PATTERNS[name](rng, (grid[0], grid[1]), scale)
    hue = rng.uniform()
    light, dark = rng.permutation([rng.uniform(0.65, 0.95), rng.uniform(0.15, 0.4)])
    background = _colour(hue, rng.uniform(0.3, 0.8), light)
    foreground = _colour(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.3, 0.9), dark)
    image = np.where(mask[..., None], foreground, background)
    lighting = 1 + rng.uniform(-0.25, 0.25) * (grid[rng.integers(2)] / size_px - 0.5)
    image = image * lighting[..., None] + rng.normal(0, rng.uniform(5, 20), image.shape)
    return image.clip(0, 255).astype(np.uint8)


def generate_coats(root: Path, train_per_class: int = 150, test_per_class: int = 30, size_px: int = 96,
                   seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """Write root/train/<class>/<class>_NNNN.jpg and root/test/... deterministically.

    `classes` renames the classes (2 to 4 of them) so the set can stand in for a real one,
    e.g. ("cheetah", "hyena", "jaguar", "tiger"); the n-th class gets the n-th pattern.
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
        raise ValueError(f"generator {generator!r} is unknown; allowed: {', '.join(GENERATORS)}")
    root = Path(root)
    if root.exists():
        return False
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    GENERATORS[generator](staging, **kwargs)
    os.replace(staging, root)
    return True
