"""Pillow's resampling as matrices, so a device can resize exactly as Pillow does.

Pillow resizes in two separable passes, storing 8-bit pixels in between
(horizontal first, except that Pillow 13 runs the vertical pass first when the
height shrinks by more than twice as many pixels as the width:
`vertical_first`), with each output pixel a normalised weighted sum of the
input pixels under a filter stretched by the scale factor (that stretch is
what antialiases a shrink). `coefficients(in, out, resample)` rebuilds those
weights (Pillow's `precompute_coeffs` in Resample.c) as a dense (out, in)
matrix; a resize is then two matrix products with rounding between them.

NumPy only: the torch side (`mai.preprocess_torch`) multiplies by these same
matrices, and tests hold both to Pillow within one grey level (the matrices hold
Pillow's own 22-bit fixed-point weights; in float64 the result is Pillow's
exactly, in a device's float32 a rare round-half case can differ).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point weights for 8-bit images


def _box(x: float) -> float:
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


#: name -> (filter, support), as Pillow defines them.
FILTERS: dict[str, tuple[Callable[[float], float], float]] = {
    "box": (_box, 0.5),
    "bilinear": (_bilinear, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}


@lru_cache(maxsize=256)
def coefficients(in_size: int, out_size: int, resample: str) -> np.ndarray:
    """The (out_size, in_size) float64 weight matrix of one Pillow resize pass.

    Read-only and cached: a scan of same-sized photos builds it once.
    """
    if resample not in FILTERS:
        raise ValueError(f"resample {resample!r} has no matrix form; use one of {sorted(FILTERS)}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bad sizes {in_size} -> {out_size}")
    fn, support = FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    ss = 1.0 / filterscale
    m = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        # Pillow truncates toward zero here (a C cast), then clamps.
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        w = np.array([fn((x - center + 0.5) * ss) for x in range(xmin, xmax)], np.float64)
        total = w.sum()
        if total != 0.0:
            w /= total
        m[xx, xmin:xmax] = w
    # Pillow's 8-bit passes use the weights in 22-bit fixed point, rounded half
    # away from zero; the same quantised values here decide the same ties.
    m = np.trunc(m * (1 << PRECISION_BITS) + np.where(m < 0, -0.5, 0.5)) / (1 << PRECISION_BITS)
    m.setflags(write=False)
    return m


def _pillow_major() -> int:
    try:
        import PIL

        return int(PIL.__version__.split(".")[0])
    except (ImportError, ValueError):  # pragma: no cover - Pillow is a base dependency
        return 13


_VERTICAL_FIRST_RULE = _pillow_major() >= 13


def vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Whether Pillow (the installed version) runs the vertical pass first for
    this resize; sizes are (width, height). The order decides some roundings."""
    (w, h), (tw, th) = in_size, out_size
    return _VERTICAL_FIRST_RULE and h - th > 0 and h - th > (w - tw) * 2


def round8(x: np.ndarray) -> np.ndarray:
    """Pillow's store to 8 bits: round half up, then clip to 0..255."""
    return np.clip(np.floor(x + 0.5), 0, 255)


def resize(a: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Reference resize of a uint8 (H, W, C) array to `size` (width, height)."""
    h, w = a.shape[:2]
    tw, th = size
    y = a.astype(np.float64)

    def horizontal(y: np.ndarray) -> np.ndarray:
        return round8(np.einsum("ow,hwc->hoc", coefficients(w, tw, resample), y)) if tw != w else y

    def vertical(y: np.ndarray) -> np.ndarray:
        return round8(np.einsum("oh,hwc->owc", coefficients(h, th, resample), y)) if th != h else y

    y = horizontal(vertical(y)) if vertical_first((w, h), size) else vertical(horizontal(y))
    return y.astype(np.uint8)
