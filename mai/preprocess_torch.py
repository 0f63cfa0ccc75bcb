"""The resize steps of a `PreprocessSpec` in torch, for batches already on a device.

Training feeds the output of the first step (made by `mai.preprocess.prepare`) and
finishes the rest here; the GPU scan path runs every step here. Each pass is a
product with Pillow's own weight matrix (`mai.resample.coefficients`), in Pillow's
pass order (`mai.resample.vertical_first`), rounded to
8 bits between passes as Pillow stores them, so the result is Pillow's: exactly
in float64, within one grey level (a rare round-half case) in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from mai.preprocess import PreprocessSpec, SpecError, Step
from mai.resample import FILTERS, coefficients, vertical_first

if TYPE_CHECKING:  # torch loads when a function here first runs: `mai/` imports no torch at module level
    import torch


@lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int, resample: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    import torch

    return torch.from_numpy(coefficients(in_size, out_size, resample).copy()).to(device=device, dtype=dtype)


def _round8(y: torch.Tensor) -> torch.Tensor:
    return y.add_(0.5).floor_().clamp_(0, 255)


def resize_steps(x: torch.Tensor, steps: Sequence[Step], dtype: Any = None) -> torch.Tensor:
    """Resize a uint8 NHWC batch through `steps`, in `dtype` (default float32);
    returns uint8 NHWC. `x` may be a strided view (an EXIF turn or a crop of a
    decoded image)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise SpecError(f"expected a uint8 NHWC batch, got {x.dtype} {tuple(x.shape)}")
    if not steps:
        return x
    y = x.to(dtype)
    for step in steps:
        if step.resample not in FILTERS:
            raise SpecError(f"resample {step.resample!r} has no torch implementation")
        w, h = step.size
        passes = ["h", "v"]
        if vertical_first((y.shape[2], y.shape[1]), (w, h)):
            passes.reverse()  # the order Pillow takes
        for p in passes:
            n, hh, ww, c = y.shape
            # Plain matrix products on contiguous memory (einsum would permute and copy).
            if p == "h" and ww != w:
                k = _weights(ww, w, step.resample, y.device, dtype)
                y = _round8(torch.matmul(k, y.reshape(n * hh, ww, c))).reshape(n, hh, w, c)
            elif p == "v" and hh != h:
                k = _weights(hh, h, step.resample, y.device, dtype)
                y = _round8(torch.matmul(k, y.reshape(n, hh, ww * c))).reshape(n, h, ww, c)
    return y.to(torch.uint8).contiguous()


def finish(x: torch.Tensor, spec: PreprocessSpec, done: int = 1) -> torch.Tensor:
    """Apply the steps of `spec` after the first `done` ones."""
    return resize_steps(x, spec.steps[done:])
