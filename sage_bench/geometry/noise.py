"""SAGE's agreement-scaled gradient noise (paper Sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def noise_scale(agreement: float, gamma: float) -> float:
    """``beta = gamma (1 - S)``: 0 when the domains' gradients agree (``S = 1``), ``2 gamma``
    when they are opposed (``S = -1``)."""
    return gamma * (1.0 - agreement)


def add_gaussian_noise_(grads: Sequence[torch.Tensor], beta: float, generator: torch.Generator) -> torch.Tensor:
    """``g <- g + beta * xi`` in place, ``xi ~ N(0, I)`` drawn from ``generator`` tensor by
    tensor in order (nothing is drawn when ``beta == 0``). Returns ``||beta xi||`` (one norm
    over all tensors) as a 0-d tensor."""
    squares = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else None)
    if beta == 0.0:
        return squares
    for g in grads:
        xi = torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)
        squares = squares + xi.float().square().sum()
        g.add_(xi, alpha=beta)
    return abs(beta) * squares.sqrt()
