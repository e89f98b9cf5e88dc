"""SAGE's agreement-scaled gradient noise (paper Sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def noise_scale(agreement: float, gamma: float) -> float:
    """``beta = gamma (1 - S)``: 0 when the domains' gradients agree (``S = 1``), ``2 gamma``
    when they are opposed (``S = -1``)."""
    return gamma * (1.0 - agreement)


def add_gaussian_noise_(grads: Sequence[torch.Tensor], beta: float, generator: torch.Generator) -> None:
    """``g <- g + beta * xi`` in place, ``xi ~ N(0, I)`` drawn from ``generator`` tensor by
    tensor in order (nothing is drawn when ``beta == 0``)."""
    if beta == 0.0:
        return
    for g in grads:
        g.add_(torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype), alpha=beta)
