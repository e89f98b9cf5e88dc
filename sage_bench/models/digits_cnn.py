"""The small CNN for the embedded digits: DomainBed's MNIST network shape, with GroupNorm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sage_bench.models.registry import register_backbone


class DigitsCNN(nn.Module):
    """Four 3x3 convolutions (the second with stride 2), each followed by ReLU and GroupNorm(8),
    then global average pooling: DomainBed's ``MNIST_CNN``.

    DomainBed's widths are ``(64, 128, 128, 128)``; the default here is a quarter of that per
    layer, which trains the 16x16 digits on two CPU cores in seconds. Pass
    ``channels=(64, 128, 128, 128)`` for DomainBed's exact network.
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (16, 32, 32, 32), groups: int = 8):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"digits_cnn needs 4 channel widths, got {list(channels)}")
        bad = [c for c in channels if c % groups]
        if bad:
            raise ValueError(f"digits_cnn channel widths must be multiples of {groups}, got {list(channels)}")
        c1, c2, c3, c4 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(c3, c4, 3, 1, padding=1)
        self.norm1 = nn.GroupNorm(groups, c1)
        self.norm2 = nn.GroupNorm(groups, c2)
        self.norm3 = nn.GroupNorm(groups, c3)
        self.norm4 = nn.GroupNorm(groups, c4)
        self.n_outputs = c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(torch.relu(self.conv1(x)))
        x = self.norm2(torch.relu(self.conv2(x)))
        x = self.norm3(torch.relu(self.conv3(x)))
        x = self.norm4(torch.relu(self.conv4(x)))
        return x.mean(dim=(2, 3))


@register_backbone("digits_cnn")  # the embedded digits: no image preprocessing of its own
def build_digits_cnn(input_shape: Sequence[int], hparams: dict, channels: Sequence[int] = (16, 32, 32, 32)) -> nn.Module:
    """``DigitsCNN`` for inputs of ``input_shape`` (channels first)."""
    return DigitsCNN(in_channels=input_shape[0], channels=tuple(channels))
