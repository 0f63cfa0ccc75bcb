"""The processing real images go through, as training augmentation and as evaluation.

Photos and fakes met in the wild have been cropped, resized and re-encoded as JPEG
(often all three) by the sites that carried them. A detector trained on pristine
files learns traces these steps destroy, so training sees both classes processed
alike, and evaluation measures it on processed copies.

Every choice is a pure function of the image's pixels (a seed from their hash), so
a feature cache of augmented copies is reproducible and an image gets the same
processing whichever data set or batch it comes from.

- `WILD_OPS`: crop (a random window of 50-100% of each side), resize (a factor of
  0.25x to 1x), JPEG (quality 30-95); each applied with probability 1/2,
  independently, in that order. `wild_ops(im)` says which ones an image gets, so a
  leave-one-op-out ablation can pick the copies without an op after the fact.
- `web(im)`: a fixed evaluation chain like a news site's: longest side to 0.6x,
  JPEG quality 75.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

WILD_OPS = ("crop", "resize", "jpeg")
CROP_RANGE = (0.5, 1.0)  # fraction of each side kept
RESIZE_RANGE = (0.25, 1.0)  # scale factor
JPEG_RANGE = (30, 95)  # quality, inclusive
MIN_SIDE = 32  # never shrink below this many pixels (CIFAKE is 32x32)


def _rng(im: Image.Image, salt: str) -> np.random.Generator:
    h = hashlib.sha256(salt.encode() + f"{im.size}".encode() + im.tobytes()[:1 << 16]).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "big"))


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    """Encode as baseline JPEG 4:2:0 at `quality` and decode again."""
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def resize(im: Image.Image, factor: float) -> Image.Image:
    w, h = im.size
    size = (max(min(w, MIN_SIDE), round(w * factor)), max(min(h, MIN_SIDE), round(h * factor)))
    return im if size == im.size else im.resize(size, Image.Resampling.BICUBIC)


def wild_ops(im: Image.Image, seed: int = 0) -> tuple[str, ...]:
    """The ops `wild` applies to this image (each with probability 1/2)."""
    rng = _rng(im, f"ops{seed}")
    return tuple(op for op in WILD_OPS if rng.random() < 0.5)


def wild(seed: int = 0, drop: str | None = None) -> Callable[[Image.Image], Image.Image]:
    """The training augmentation; `drop` names an op never applied (for ablations)."""

    def apply(im: Image.Image) -> Image.Image:
        rng = _rng(im, f"args{seed}")
        ops = [op for op in wild_ops(im, seed) if op != drop]
        crop, factor = rng.uniform(*CROP_RANGE, size=2), rng.uniform(*RESIZE_RANGE)
        quality, corner = int(rng.integers(JPEG_RANGE[0], JPEG_RANGE[1] + 1)), rng.random(2)
        if "crop" in ops:
            w, h = im.size
            cw, ch = max(min(w, MIN_SIDE), round(w * crop[0])), max(min(h, MIN_SIDE), round(h * crop[1]))
            x, y = int(corner[0] * (w - cw)), int(corner[1] * (h - ch))
            im = im.crop((x, y, x + cw, y + ch))
        if "resize" in ops:
            im = resize(im, factor)
        if "jpeg" in ops:
            im = jpeg(im, quality)
        return im

    return apply


def web(im: Image.Image) -> Image.Image:
    """The fixed evaluation chain: 0.6x (bicubic), then JPEG quality 75."""
    return jpeg(resize(im, 0.6), 75)


def jpeg_at(quality: int) -> Callable[[Image.Image], Image.Image]:
    return lambda im: jpeg(im, quality)


#: Named perturbations for feature caches and evaluation (`--augment`, `--perturb`).
PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "wild": wild(0),
    "web": web,
    "jpeg50": jpeg_at(50),
    "jpeg75": jpeg_at(75),
}
