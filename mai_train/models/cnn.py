"""The MAI CNN, exactly as designed.

3x3 convolutions of 16, 32 and 64 channels (padding 1), each followed by 2x2
max-pooling and ReLU; flatten (64 x 25 x 25 = 40,000) -> 120 -> ReLU -> 30 ->
ReLU -> 1 logit, on 200x200 RGB. 4,827,365 parameters.

Every MAI module takes the scanner's bytes: uint8 NHWC at its input size, and
normalises inside, so the ONNX graph and the torch module see the same input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mai_train.registry import register_model


class Normalise(nn.Module):
    """uint8 NHWC -> float NCHW, (x/255 - mean)/std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # Folded into one multiply-add; persistent=False keeps them out of the
        # weights file (they come from the preprocess spec).
        self.register_buffer("scale", 1.0 / (255.0 * s), persistent=False)
        self.register_buffer("shift", -m / s, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(self.scale.dtype)
        return x * self.scale + self.shift


class MaiCNN(nn.Module):
    def __init__(
        self,
        input_size: int = 200,
        channels: Sequence[int] = (16, 32, 64),
        hidden: Sequence[int] = (120, 30),
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.normalise = Normalise(mean, std)
        layers: list[nn.Module] = []
        c_in, side = 3, input_size
        for c in channels:
            # Pool before ReLU: the same function (max and ReLU commute), on a
            # quarter of the values.
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            c_in, side = c, side // 2
        self.features = nn.Sequential(*layers)
        dims = [c_in * side * side, *hidden]
        head: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            head += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        head.append(nn.Linear(dims[-1], 1))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> logit (N,)."""
        return self.head(self.features(self.normalise(x))).squeeze(1)


@register_model
def mai_cnn(**kwargs) -> MaiCNN:
    """The original MAI CNN (200x200 input, 4,827,365 parameters)."""
    return MaiCNN(**kwargs)
