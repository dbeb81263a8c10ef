"""Images that appear in two splits: identical or near-identical by a perceptual hash.

A difference hash compares neighbouring pixels of a tiny grayscale copy, so re-encoding,
resizing and small colour shifts keep it; two images whose hashes differ in at most
`MAX_DISTANCE` of their bits are taken to be the same picture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from trainables.data import ArrayData

HASH_SIDE = 16  # a 16 x 16 difference hash: 256 bits
# Of 256 bits. Measured on the generated set: a JPEG re-encoded at quality 70 after two
# resizes differs by 20; the closest two distinct pictures by 42, typical ones by ~100.
MAX_DISTANCE = 24
CHUNK = 512


def difference_hash(images: np.ndarray) -> np.ndarray:
    """Bits [N, HASH_SIDE * HASH_SIDE] of uint8 RGB images [N, H, W, 3]."""
    bits = []
    for image in images:
        gray = np.asarray(Image.fromarray(image).convert("L").resize((HASH_SIDE + 1, HASH_SIDE),
                                                                      Image.Resampling.BILINEAR), dtype=np.int16)
        bits.append((gray[:, 1:] > gray[:, :-1]).ravel())
    return np.asarray(bits, dtype=bool).reshape(len(images), HASH_SIDE * HASH_SIDE)


def near_pairs(a: np.ndarray, b: np.ndarray, max_distance: int = MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """(i, j, distance) for hashes a[i], b[j] at most `max_distance` bits apart."""
    pairs = []
    b_int = b.astype(np.int32)
    for start in range(0, len(a), CHUNK):
        chunk = a[start:start + CHUNK].astype(np.int32)
        # Hamming distance through a dot product: bits differ where exactly one is set.
        distance = chunk.sum(1)[:, None] + b_int.sum(1)[None, :] - 2 * chunk @ b_int.T
        for i, j in zip(*np.nonzero(distance <= max_distance)):
            pairs.append((start + int(i), int(j), int(distance[i, j])))
    return pairs


def find_leakage(arrays: ArrayData) -> list[tuple[str, str, int]]:
    """(path, path, distance) of pictures shared between train/val, train/test, val/test."""
    hashes = {name: difference_hash(getattr(arrays, name).images) for name in ("train", "val", "test")}
    found = []
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        for i, j, distance in near_pairs(hashes[first], hashes[second]):
            found.append((getattr(arrays, first).paths[i], getattr(arrays, second).paths[j], distance))
    return found
