"""The preprocessing spec and its one CPU implementation (Pillow + NumPy).

A model is only meaningful with the exact transform it was trained on, so the
transform is data (`PreprocessSpec`) stored beside the weights, and every caller
(training, evaluation, export parity, the scanner) goes through `prepare()`.

Order: EXIF orientation -> RGB by explicit mode rules -> fit to the aspect of the
first step -> resize steps in order -> uint8 HWC. Normalisation happens inside the
model, so every path feeds the same bytes.

Sizes are `[width, height]`, as Pillow writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mai.errors import MaiError

SPEC_VERSION = 1
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
FITS = ("squash", "center_crop", "crop")
ALPHA_RULES = ("composite_white", "composite_black", "drop")


class SpecError(MaiError, ValueError):
    """A preprocessing spec that cannot be used."""


@dataclass(frozen=True)
class Step:
    size: tuple[int, int]  # (width, height)
    resample: str = "bilinear"


@dataclass(frozen=True)
class PreprocessSpec:
    steps: tuple[Step, ...]
    exif_transpose: bool = True
    alpha: str = "composite_white"
    fit: str = "squash"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.version != SPEC_VERSION:
            raise SpecError(
                f"preprocess spec version {self.version} is not supported by this MAI "
                f"(it reads version {SPEC_VERSION}); upgrade MAI to load this model"
            )
        if not self.steps:
            raise SpecError("preprocess spec has no resize steps")
        for s in self.steps:
            if s.resample not in RESAMPLE:
                raise SpecError(f"unknown resample {s.resample!r}; use one of {sorted(RESAMPLE)}")
            if len(s.size) != 2 or min(s.size) < 1:
                raise SpecError(f"bad step size {s.size!r}")
        if self.fit not in FITS:
            raise SpecError(f"unknown fit {self.fit!r}; use one of {FITS}")
        if self.alpha not in ALPHA_RULES:
            raise SpecError(f"unknown alpha rule {self.alpha!r}; use one of {ALPHA_RULES}")

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the array the model takes."""
        return self.steps[-1].size

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "exif_transpose": self.exif_transpose,
            "alpha": self.alpha,
            "fit": self.fit,
            "steps": [{"size": list(s.size), "resample": s.resample} for s in self.steps],
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        try:
            steps = tuple(Step(tuple(int(v) for v in s["size"]), s.get("resample", "bilinear")) for s in d["steps"])
            return cls(
                steps=steps,
                exif_transpose=bool(d.get("exif_transpose", True)),
                alpha=d.get("alpha", "composite_white"),
                fit=d.get("fit", "squash"),
                mean=tuple(float(v) for v in d.get("mean", (0.5, 0.5, 0.5))),
                std=tuple(float(v) for v in d.get("std", (0.5, 0.5, 0.5))),
                version=int(d.get("version", SPEC_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, SpecError):
                raise
            raise SpecError(f"malformed preprocess spec: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        return cls.from_dict(json.loads(text))


#: The CIFAKE recipe: every image is seen as the model saw CIFAKE in training,
#: shrunk to 32x32 (box = area average, what a thumbnailer does), then enlarged
#: to the network's 200x200 input.
CIFAKE_SPEC = PreprocessSpec(steps=(Step((32, 32), "box"), Step((200, 200), "bilinear")))


def to_rgb(im: Image.Image, alpha: str = "composite_white") -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by explicit rules.

    16-bit and 32-bit integer images keep their top 8 bits (Pillow's own
    `convert` clips them at 255, which turns most 16-bit photos white). Float
    images in [0, 1] are scaled to [0, 255]. Transparency is composited on white
    by default, because generators and screenshots put meaningful pixels on
    transparent backgrounds and black would invent dark edges.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im)
        a = a.astype(np.int64)
        if mode == "I" and a.max(initial=0) <= 255:
            pass  # a 32-bit container holding 8-bit values
        else:
            a = a >> 8
        g = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2))
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(a, initial=0) <= 1.0 else 1.0
        g = np.clip(np.nan_to_num(a * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.repeat(g[..., None], 3, axis=2))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "RGBX":
        im = im.convert("RGB")
    if im.mode == "RGBA":
        if alpha == "drop":
            return im.convert("RGB")
        colour = (255, 255, 255) if alpha == "composite_white" else (0, 0, 0)
        bg = Image.new("RGB", im.size, colour)
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def fit_box(image_size: tuple[int, int], fit: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) region of an image of `image_size` (width,
    height) that `fit` keeps to reach the aspect ratio of `size`."""
    w, h = image_size
    if fit == "squash":
        return 0, 0, w, h
    tw, th = size
    if fit == "crop" and w >= tw and h >= th:
        # Native pixels, no resampling: what a forensic model must see. A smaller
        # image falls through to center_crop and is enlarged by the steps.
        left, top = (w - tw) // 2, (h - th) // 2
        return left, top, left + tw, top + th
    if w * th > h * tw:  # too wide
        nw = max(1, round(h * tw / th))
        left = (w - nw) // 2
        return left, 0, left + nw, h
    nh = max(1, round(w * th / tw))
    top = (h - nh) // 2
    return 0, top, w, top + nh


def fit_aspect(im: Image.Image, fit: str, size: tuple[int, int]) -> Image.Image:
    """Bring the image to the aspect ratio of `size` (width, height)."""
    box = fit_box(im.size, fit, size)
    return im if box == (0, 0, *im.size) else im.crop(box)


def draft_size(spec: PreprocessSpec, image_size: tuple[int, int]) -> tuple[int, int] | None:
    """The size to ask a JPEG decoder for (DCT scaling), or None when the first
    step does not shrink by 2x or more, where DCT scaling would not help.

    libjpeg returns at least the requested size, so the resize steps still start
    from an image larger than their first target; only the route there changes,
    and its effect on scores is measured in benchmarks/, not assumed.
    """
    if spec.fit == "crop":
        return None  # native pixels: DCT scaling would resample them
    tw, th = spec.steps[0].size
    w, h = image_size
    if w >= 2 * tw and h >= 2 * th:
        return (tw, th)
    return None


def prepare(
    im: Image.Image,
    spec: PreprocessSpec,
    upto: int | None = None,
    augment: Callable[[Image.Image], Image.Image] | None = None,
) -> np.ndarray:
    """Apply the spec to a decoded image: uint8 array (H, W, 3).

    `upto` stops after that many resize steps (training feeds the first step's
    output to `mai.preprocess_torch`, which does the rest on the device).
    `augment` (training only) acts on the upright RGB image before any resizing.
    """
    if spec.exif_transpose:
        im = ImageOps.exif_transpose(im)
    im = to_rgb(im, spec.alpha)
    if augment is not None:
        im = augment(im)
    im = fit_aspect(im, spec.fit, spec.steps[0].size)
    for step in spec.steps[: upto if upto is not None else len(spec.steps)]:
        if im.size != step.size:
            im = im.resize(step.size, RESAMPLE[step.resample])
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:  # pragma: no cover - to_rgb guarantees RGB
        raise SpecError(f"preprocess produced shape {a.shape}")
    return a


def normalise(batch_uint8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Reference normalisation, (x/255 - mean)/std as float32 NHWC. The models do
    this inside their graphs; this is what tests compare them against."""
    x = batch_uint8.astype(np.float32) / 255.0
    return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
