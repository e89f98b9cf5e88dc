"""Small networks shared by the tests."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VisionTransformer

from sage_bench.models import build_network


def tiny_mlp(d_in: int = 4, width: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, classes))


def small_cnn(seed: int = 0) -> nn.Module:
    """The digits CNN of the runner (GroupNorm, conv kernels) with a linear head."""
    torch.manual_seed(seed)
    return build_network("digits_cnn", (1, 16, 16), 10, {}, channels=(8, 16, 16, 16))


def small_vit(seed: int = 0, classes: int = 5) -> nn.Module:
    """A two-block ViT (LayerNorm, attention, MLP) on 32x32 images."""
    torch.manual_seed(seed)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=classes
    )


def domains(shape, classes: int, k: int = 3, n: int = 4, seed: int = 0):
    """``k`` minibatches of ``n`` random examples, one per domain, each domain shifted differently."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, *shape, generator=g) + 0.5 * i, torch.randint(classes, (n,), generator=g))
        for i in range(k)
    ]
