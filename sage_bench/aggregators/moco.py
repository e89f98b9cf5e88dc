"""MoCo: multi-objective gradient correction with tracking variables.

Paper: Fernando et al., "Mitigating Gradient Bias in Multi-objective Learning: A Provably
Convergent Approach", ICLR 2023.
Code: ``MoCo`` in ``LibMTL/weighting/MoCo.py`` of median-research-group/LibMTL (4336804),
"implemented based on the author's sharing code"; its defaults are LibMTL's ``config.py``. The
repositories behind Table 2 have no MoCo; the row is copied from earlier papers.

At step ``t`` (from 1): ``h_k = g_k / (||g_k|| + 1e-8) * L_k`` (each gradient rescaled to its
loss), the tracking matrix ``Y <- Y - beta_t (Y - H)`` (from zeros), the weights
``lambda <- softmax(lambda - gamma_t (Y Y^T + rho I) lambda)`` (from ``1/K``), and the direction
``Y^T lambda``, with ``beta_t = beta / t^beta_sigma`` and ``gamma_t = gamma / t^gamma_sigma``. As
in LibMTL every head gets the gradient of ``sum_k L_k`` (weights 1). ``Y``, ``lambda`` and
``t`` live in the caller's ``state`` (saved in checkpoints; ``Y`` is ``K x P``).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch

from sage_bench.aggregators import Row, register_aggregator
from sage_bench.hparams import NON_NEGATIVE, POSITIVE, HParam, Range, const


def moco_space(dataset: str | None = None) -> dict[str, HParam]:
    """LibMTL's defaults (``beta`` 0.5, ``beta_sigma`` 0.5, ``gamma`` 0.1, ``gamma_sigma`` 0.5,
    ``rho`` 0); no search. ``beta`` is the first step of the tracking variables
    ``y <- y - beta_t (y - g)``: above 1 it overshoots."""
    return {
        "beta": HParam(0.5, const(0.5), "step size of the tracking variables", range=Range(0.0, 1.0, low_open=True)),
        "beta_sigma": HParam(0.5, const(0.5), "decay exponent of beta", range=NON_NEGATIVE),
        "gamma": HParam(0.1, const(0.1), "step size of the task weights", range=POSITIVE),
        "gamma_sigma": HParam(0.5, const(0.5), "decay exponent of gamma", range=NON_NEGATIVE),
        "rho": HParam(0.0, const(0.0), "l2 regularisation of the weights' update", range=NON_NEGATIVE),
    }


@register_aggregator(
    "moco",
    space=moco_space,
    clip={"NYUv2": 0.0, "Cityscapes": 0.0},  # LibMTL's port does not clip
    row=Row(
        "MoCo",
        doc="MoCo (LibMTL ``MoCo``): tracked, loss-scaled unit gradients ``Y`` and softmax-updated "
        "weights ``lambda``; direction ``Y^T lambda``; heads weight 1; LibMTL's defaults.",
    ),
)
def moco(
    grads: torch.Tensor,
    losses: torch.Tensor,
    *,
    state: MutableMapping[str, Any],
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Y^T lambda, ones(K))``; ``state`` holds ``"y"``, ``"lambd"`` and ``"step"``."""
    num_tasks = grads.shape[0]
    step = int(state.get("step", 0)) + 1
    y = state.get("y")
    if y is None:
        y = torch.zeros_like(grads)
    lambd = state.get("lambd")
    if lambd is None:
        lambd = torch.ones(num_tasks, dtype=grads.dtype, device=grads.device) / num_tasks
    if y.shape != grads.shape or lambd.shape != (num_tasks,):
        raise ValueError(
            f"state holds MoCo's variables for shape {tuple(y.shape)}, not {tuple(grads.shape)}"
        )
    y, lambd = y.to(grads.device), lambd.to(grads.device)
    with torch.no_grad():
        scaled = grads / (grads.norm(dim=1, keepdim=True) + 1e-8) * losses.detach().unsqueeze(1)
        y = y - (beta / step**beta_sigma) * (y - scaled)
        eye = torch.eye(num_tasks, dtype=grads.dtype, device=grads.device)
        lambd = torch.softmax(
            lambd - (gamma / step**gamma_sigma) * (y @ y.T + rho * eye) @ lambd, -1
        )
        direction = y.T @ lambd
    state.update(y=y, lambd=lambd, step=step)
    return direction, torch.ones(num_tasks, dtype=grads.dtype, device=grads.device)
