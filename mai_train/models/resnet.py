"""A small residual net at CIFAKE's native 32x32: `mai_resnet_tiny`.

The MAI CNN sees CIFAKE images enlarged to 200x200, so most of its input is
interpolation; this net sees the 32x32 pixels themselves. Three stages of two
basic residual blocks (3x3 convolutions with batch norm; widths w, 2w, 4w, the
last two stages at stride 2), global average pooling, one logit. 174,673
parameters at the default width of 16.

Its preprocess spec (`PREPROCESS`): the whole image box-averaged to 32x32, the
CIFAKE recipe without the enlargement. Like every MAI module it takes uint8 NHWC
and normalises inside.
"""

from __future__ import annotations

import torch
from torch import nn

from mai.preprocess import PreprocessSpec, Step
from mai_train.models.cnn import Normalise
from mai_train.registry import register_model

PREPROCESS = PreprocessSpec(steps=(Step((32, 32), "box"),))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class MaiResNet(nn.Module):
    def __init__(self, width: int = 16, input_size: int = 32) -> None:
        super().__init__()
        self.input_size = input_size
        self.normalise = Normalise(PREPROCESS.mean, PREPROCESS.std)
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(Block(w, w, 1), Block(w, w, 1), Block(w, 2 * w, 2), Block(2 * w, 2 * w, 1),
                                    Block(2 * w, 4 * w, 2), Block(4 * w, 4 * w, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 32, 32, 3) -> logit (N,)."""
        return self.head(self.stages(self.stem(self.normalise(x)))).squeeze(1)


@register_model
def mai_resnet_tiny(**kwargs) -> MaiResNet:
    """A residual net at CIFAKE's native 32x32 (174,673 parameters at width 16)."""
    return MaiResNet(**kwargs)


mai_resnet_tiny.preprocess = PREPROCESS  # type: ignore[attr-defined]
