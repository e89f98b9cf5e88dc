"""Linear scalarisation: the gradient of the plain sum of the task losses.

nash-mtl ``LinearScalarization`` (task weights all 1): ``loss = sum_k L_k`` and one backward, so
the shared parameters receive ``sum_k g_k`` and every head its own task's gradient (weight 1).
K factor: none (the sum, not the mean).
"""

from __future__ import annotations

import torch

from sage_bench.aggregators import Row, register_aggregator


@register_aggregator(
    "ls",
    clip={"NYUv2": 0.0, "Cityscapes": 0.0},  # nash-mtl and FAMO never clip LS
    row=Row("LS", tunable_clip=False, doc="Linear scalarisation: the sum of the task gradients; heads weight 1; no clipping."),
)
def linear_scalarization(grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, None]:
    """``(sum_k g_k, None)``: heads keep weight 1."""
    return grads.sum(dim=0), None
