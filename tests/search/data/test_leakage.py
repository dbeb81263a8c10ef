"""Pictures shared between splits are found by their perceptual hash, others are not."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.data.leakage import difference_hash, find_leakage, near_pairs
from trainables import data


@pytest.fixture(scope="module")
def arrays(coats: Path, tmp_path_factory: pytest.TempPathFactory) -> data.ArrayData:
    return data.load(data.prepare(coats, 64, 0.2, 0, tmp_path_factory.mktemp("cache")).path)


def recompressed(image: np.ndarray, size: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((size, size)).save(buffer, "JPEG", quality=70)
    return np.asarray(Image.open(buffer).convert("RGB").resize(image.shape[:2][::-1]))


def test_distinct_generated_pictures_are_not_leakage(arrays: data.ArrayData) -> None:
    assert find_leakage(arrays) == []


def test_a_recompressed_resized_copy_is_found(arrays: data.ArrayData) -> None:
    original = arrays.train.images[3]
    copy = recompressed(original, 90)
    assert not np.array_equal(copy, original)
    pairs = near_pairs(difference_hash(original[None]), difference_hash(np.stack([copy, arrays.test.images[0]])))
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)]


def test_find_leakage_names_both_paths(arrays: data.ArrayData) -> None:
    test_images = arrays.test.images.copy()
    test_images[1] = recompressed(arrays.train.images[5], 80)
    leaky = data.ArrayData(arrays.classes, arrays.train, arrays.val,
                           data.Split(test_images, arrays.test.labels, arrays.test.paths))
    leaks = find_leakage(leaky)
    assert [(a, b) for a, b, _ in leaks] == [(arrays.train.paths[5], arrays.test.paths[1])]
