"""Images as a VLM gets them: upright, RGB, first frame, longest side at most `MAX_SIDE`.

The VLM's own processor resizes and normalises; these rules only make every
source (a data set's bytes, a scanned file) arrive the same way, in training
and in scanning alike.
"""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image, ImageOps

from mai.preprocess import to_rgb
from mai.vlm import MAX_SIDE

#: Refuse images above this many pixels (a decompression-bomb guard).
MAX_PIXELS = 200_000_000


def as_rgb(im: Any, max_side: int = MAX_SIDE) -> Image.Image:
    """An RGB PIL image no larger than `max_side` (NumPy HWC uint8 arrays accepted)."""
    if not isinstance(im, Image.Image):
        import numpy as np

        im = Image.fromarray(np.asarray(im, dtype=np.uint8))
    if im.mode != "RGB":
        im = to_rgb(im)
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def open_image(source: bytes | str | os.PathLike[str], max_side: int = MAX_SIDE) -> Image.Image:
    """Decode bytes or a file: EXIF orientation applied, first frame, RGB, at most `max_side`."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        fh: Any = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with fh, Image.open(fh) as im:
            if im.format == "JPEG" and max(im.size) > 2 * max_side:
                im.draft("RGB", (max_side, max_side))  # DCT scaling: decode at a fraction
            im.seek(0)
            im.load()
            up = ImageOps.exif_transpose(im)
            return as_rgb(up if up is not None else im, max_side)
    finally:
        Image.MAX_IMAGE_PIXELS = old
