"""A classifier is a featurizer followed by a head."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """``head(featurizer(x))``: logits from images."""

    def __init__(self, featurizer: nn.Module, head: nn.Module):
        super().__init__()
        self.featurizer = featurizer
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.featurizer(x))
