"""Photo-sized JPEGs for the decode tests and bench: smooth light, shapes and sensor-like
noise, as a phone's 3-12 MP picture gives a decoder, not the generated data's 96 px tiles."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_jpeg(path: Path, width: int = 2000, height: int = 1500, seed: int = 0, quality: int = 90) -> Path:
    """Write one photo-like JPEG of `width` x `height` to `path`."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255
    img = Image.fromarray(light.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        cx, cy, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(20, width // 6))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(2)), dtype=np.int16)
    pixels = pixels + rng.normal(0, 12, pixels.shape).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=quality)
    return path


def photo_folder(root: Path, classes: int = 2, per_class: int = 10, width: int = 2000, height: int = 1500) -> Path:
    """`root/train/<class>/` and `root/test/<class>/` of photo-like JPEGs (test: a quarter as
    many), on every core when there are many (half a second each on one core)."""
    from trainables import parallel

    jobs, seed = [], 0
    for split, count in (("train", per_class), ("test", max(2, per_class // 4))):
        for label in range(classes):
            for i in range(count):
                jobs.append((root / split / f"class{label}" / f"{i:05d}.jpg", width, height, seed))
                seed += 1
    if len(jobs) < parallel.PARALLEL_FROM or parallel.cores() == 1:
        for job in jobs:
            photo_jpeg(*job)
        return root
    with ProcessPoolExecutor(parallel.cores(), mp_context=get_context("spawn")) as pool:
        list(pool.map(photo_jpeg, *zip(*jobs), chunksize=4))
    return root
