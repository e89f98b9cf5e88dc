"""IMTL-G: impartial multi-task learning, the gradient part.

Paper: Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021.
Code: ``IMTLG`` in ``methods/weight_methods.py`` of AvivNavon/nash-mtl (cce1840); FAMO and
fairgrad carry the same class.

With ``u_k = g_k / ||g_k||``, ``D = g_1 - g_{2:}`` and ``U = u_1 - u_{2:}`` (rows),
``alpha_{2:} = g_1 U^T (D U^T)^{-1}`` and ``alpha_1 = 1 - sum(alpha_{2:})``; the shared direction
is ``sum_k alpha_k g_k`` and head ``k`` gets weight ``alpha_k`` (the code backpropagates
``sum_k alpha_k L_k``).

Numerical behaviour kept from the authors' code: when ``torch.inverse`` refuses ``D U^T`` as
singular (an exactly zero pivot, e.g. two identical task gradients), the inverse of
``D U^T + 1e-8 I`` is used instead; a task gradient that is exactly zero has no direction
``u_k`` (0/0) and gives NaN weights, as there.
"""

from __future__ import annotations

import torch

from sage_bench.aggregators import Row, register_aggregator


def imtl_weights(grads: torch.Tensor) -> torch.Tensor:
    """IMTL-G's ``alpha`` (shape ``(K,)``) for the ``K x P`` gradient matrix."""
    units = grads / grads.norm(dim=1, keepdim=True)
    diffs = grads[0] - grads[1:]
    unit_diffs = units[0] - units[1:]
    system = diffs @ unit_diffs.T
    try:
        inverse = torch.linalg.inv(system)
    except torch.linalg.LinAlgError:
        eye = torch.eye(system.shape[0], dtype=system.dtype, device=system.device)
        inverse = torch.linalg.inv(eye * 1e-8 + system)
    rest = (grads[0] @ unit_diffs.T) @ inverse
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


@register_aggregator(
    "imtl",
    clip={"NYUv2": 0.0, "Cityscapes": 0.0},  # nash-mtl and FAMO do not clip it
    row=Row(
        "IMTL-G",
        doc="IMTL-G (nash-mtl ``IMTLG``): ``sum_k alpha_k g_k`` with equal projections on the unit "
        "gradients; head ``k`` weight ``alpha_k``.",
    ),
)
def imtl(grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_k alpha_k g_k, alpha)``."""
    alpha = imtl_weights(grads)
    return alpha @ grads, alpha
