"""Images and labelled folders generated in code: no network, no ../shared."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_image(label: int, seed: int, size: int = 32) -> Image.Image:
    """A 'real' image is smooth noise; a 'fake' one carries a periodic grid, the
    kind of upsampling trace detectors learn. Easy to separate on purpose."""
    rng = np.random.default_rng(seed)
    base = rng.normal(128, 40, (size // 4, size // 4, 3))
    a = np.asarray(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
                   dtype=np.float64)
    if label == 1:
        yy, xx = np.mgrid[0:size, 0:size]
        a = a + 40.0 * (((yy // 2) + (xx // 2)) % 2)[..., None]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def make_folder(root: Path, n: int = 12, real: str = "real", fake: str = "fake", fmt: str = "PNG",
                prefix: str = "") -> Path:
    for label, name in ((0, real), (1, fake)):
        d = root / prefix / name if prefix else root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ext = "png" if fmt == "PNG" else "jpg"
            (d / f"{name}_{i:03d}.{ext}").write_bytes(encode(synthetic_image(label, i * 2 + label), fmt))
    return root
