"""The resize steps of a `PreprocessSpec` in torch, for batches already on a device.

Training feeds the output of the first step (made by `mai.preprocess.prepare`) and
finishes the rest here; a GPU scan path can do the same. Tests prove the result
equal to Pillow's within one grey level (Pillow resamples in fixed point).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mai.preprocess import PreprocessSpec, SpecError, Step


def resize_steps(x: torch.Tensor, steps: Sequence[Step]) -> torch.Tensor:
    """Resize a uint8 NHWC batch through `steps`; returns uint8 NHWC."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise SpecError(f"expected a uint8 NHWC batch, got {x.dtype} {tuple(x.shape)}")
    if not steps:
        return x
    y = x.permute(0, 3, 1, 2).float()
    for step in steps:
        w, h = step.size
        if tuple(y.shape[-2:]) == (h, w):
            continue
        if step.resample == "bilinear":
            # antialias=True follows Pillow's filter support when shrinking;
            # when enlarging it is plain bilinear, as Pillow's is.
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        elif step.resample == "bicubic":
            y = F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        elif step.resample == "box":
            y = F.adaptive_avg_pool2d(y, (h, w))
        else:
            raise SpecError(f"resample {step.resample!r} has no torch implementation")
        # Round after every step, as Pillow stores 8-bit pixels between steps.
        y = y.round_().clamp_(0, 255)
    return y.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def finish(x: torch.Tensor, spec: PreprocessSpec, done: int = 1) -> torch.Tensor:
    """Apply the steps of `spec` after the first `done` ones."""
    return resize_steps(x, spec.steps[done:])
