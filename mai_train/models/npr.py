"""A forensic net trained from scratch on native pixels: `mai_npr`.

After Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative
Network for Generalizable Deepfake Detection" (NPR, CVPR 2024): generators build
images by up-sampling, which ties each pixel to its 2x2 neighbours. The net sees
only that trace, the image minus its own nearest-neighbour down-and-up-sampled copy
(neighbouring pixel relationships), never the content, and a small residual CNN
reads it: a stem, four residual stages (widths w, w, 2w, 4w; three at stride 2),
global average pooling, one logit.

Its preprocess spec (`PREPROCESS`) is a native 224x224 centre crop (`fit: crop`):
resampling would erase the trace. Like every MAI module it takes uint8 NHWC and
normalises inside.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mai.preprocess import PreprocessSpec, Step
from mai_train.models.cnn import Normalise
from mai_train.models.resnet import Block
from mai_train.registry import register_model

PREPROCESS = PreprocessSpec(steps=(Step((224, 224), "bicubic"),), fit="crop")


class MaiNPR(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.normalise = Normalise(PREPROCESS.mean, PREPROCESS.std)
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(Block(w, w, 2), Block(w, 2 * w, 2), Block(2 * w, 4 * w, 2), Block(4 * w, 4 * w, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 224, 224, 3) -> logit (N,)."""
        x = self.normalise(x)
        npr = x - F.interpolate(F.interpolate(x, scale_factor=0.5, mode="nearest"), scale_factor=2.0, mode="nearest")
        return self.head(self.stages(self.stem(npr * 4.0))).squeeze(1)


@register_model
def mai_npr(**kwargs) -> MaiNPR:
    """Neighbouring-pixel-relationship residual net on native 224x224 crops."""
    return MaiNPR(**kwargs)


mai_npr.preprocess = PREPROCESS  # type: ignore[attr-defined]
