"""One image file to the array every trial trains on: the decode shared by the data's
preparation (`trainables.data`), its parallel decode (`trainables.parallel`) and serving."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# PIL's own threshold for a decompression bomb warning (~89 M pixels, a 1 GB RGBA image);
# larger images are skipped, never decoded: a small file can claim gigapixels.
MAX_PIXELS = 89_478_485
# A large JPEG is decoded reduced (1/2, 1/4, 1/8) down to no less than this many times the
# target size on its short side: 1.25x keeps a 2000x1500 photo at 299 px within 0.6 of 255 of
# a full decode on average and is 1.3x faster per photo than 2x (a 1000x750 decode).
DRAFT_AT_LEAST = 1.25

def decode(path: Path, size_px: int, reduced: bool = True) -> np.ndarray:
    """One image as uint8 [size, size, 3]: EXIF orientation applied, RGB, resized.

    `reduced`: a JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 of its size
    (libjpeg's DCT scaling, PIL's `draft`), never below `DRAFT_AT_LEAST` times the target, before the resize:
    a 12 MP photo to 299 px decodes several times faster, and the pixels differ little from a
    full decode (tests/trainables/test_decode.py bounds the difference).
    """
    with warnings.catch_warnings():
        # PIL only warns between 1x and 2x its limit; the check below refuses those too.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    with img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"decompression bomb: {img.width}x{img.height} pixels, more than {MAX_PIXELS:,}")
        if reduced and img.format == "JPEG":
            least = math.ceil(DRAFT_AT_LEAST * size_px)
            img.draft(None, (least, least))  # scale only: the mode stays the decoder's
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            img = background
        elif img.mode == "I;16" or img.mode == "I":
            img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        img = img.convert("RGB").resize((size_px, size_px), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
