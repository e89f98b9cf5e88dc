"""CAGrad: conflict-averse gradient descent.

Paper: Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
Code: ``CAGrad`` in ``methods/weight_methods.py`` of AvivNavon/nash-mtl (cce1840) and
Cranial-XIX/FAMO (0a6ad06), the same computation as ``cagrad`` in Cranial-XIX/CAGrad (dc3d481,
``nyuv2/utils.py``); FAMO's copy clips the shared gradient to norm 1 afterwards (``sources.py``).

With ``A = G G^T``, ``cc = c * sqrt(mean(A) + 1e-8) + 1e-8`` and ``b = 1/K``, the weights
``w`` minimise ``w^T A b + cc * sqrt(w^T A w + 1e-8)`` over the simplex, by SciPy's ``minimize``
with bounds ``[0, 1]`` and the equality constraint ``1 - sum(w) = 0`` from ``w = 1/K`` (SciPy then
picks SLSQP, with its default tolerances). With ``g_w = G^T w`` the direction is
``K * (mean_k g_k + cc / (||g_w|| + 1e-8) * g_w) / (1 + c^2)`` (the code's ``rescale=1``, then
``* K`` "to match the sum loss"). Heads get the gradient of ``sum_k L_k`` (weights 1).

The authors' numerical behaviour is kept by calling ``minimize`` the same way, with the Gram
matrix in the gradients' dtype (float32 in their code): SLSQP's stopping test is an absolute
``ftol = 1e-6`` on the objective, so when the gradients are small (``||A||`` of order 1e-6 or
less, as late in training) it stops at the start ``w = 1/K`` and CAGrad returns
``K * (1 + cc / ||mean_k g_k||) / (1 + c^2) * mean_k g_k``, a rescaled mean gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from sage_bench.aggregators import Row, register_aggregator
from sage_bench.hparams import NON_NEGATIVE, HParam, choice


def cagrad_weights(gram: np.ndarray, cc: float) -> np.ndarray:
    """The simplex weights ``w`` (float64, shape ``(K,)``) SciPy's SLSQP returns for the Gram
    matrix ``gram`` and the constant ``cc``, called as the authors' code calls it."""
    k = gram.shape[0]
    start = np.ones(k) / k
    mean_weights = start.copy().reshape(k, 1)

    def objective(w: np.ndarray) -> float:
        row = w.reshape(1, k)
        return (
            row.dot(gram).dot(mean_weights) + cc * np.sqrt(row.dot(gram).dot(row.T) + 1e-8)
        ).sum()

    result = minimize(
        objective,
        start,
        bounds=tuple((0, 1) for _ in range(k)),
        constraints={"type": "eq", "fun": lambda w: 1 - sum(w)},
    )
    return result.x


def cagrad_space(dataset: str | None = None) -> dict[str, HParam]:
    """``c`` 0.4 (CAGrad's ``run.sh`` for NYU-v2 and Cityscapes; the Cityscapes script also runs
    0.6); searched over {0.2, 0.4, 0.6, 0.8} around those."""
    return {"c": HParam(0.4, choice([0.2, 0.4, 0.6, 0.8]), "CAGrad's radius around the mean gradient", range=NON_NEGATIVE)}


@register_aggregator(
    "cagrad",
    space=cagrad_space,
    clip={"NYUv2": 0.0, "Cityscapes": 1.0},  # nash-mtl does not clip it; FAMO's code does
    row=Row(
        "CAGrad",
        doc="CAGrad (nash-mtl / FAMO ``CAGrad``, ``c`` 0.4): ``K (g_0 + cc g_w / ||g_w||) / (1 + c^2)`` "
        "with SciPy's SLSQP weights; heads weight 1.",
    ),
)
def cagrad(
    grads: torch.Tensor, losses: torch.Tensor, *, c: float = 0.4
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K * (mean_k g_k + cc/||g_w|| g_w) / (1 + c^2), ones(K))``; ``c`` is CAGrad's radius."""
    num_tasks = grads.shape[0]
    gram = grads @ grads.T
    mean_norm = (gram.mean() + 1e-8).sqrt()
    cc = (c * mean_norm + 1e-8).item()
    w = cagrad_weights(gram.cpu().numpy(), cc)
    combined = (
        torch.as_tensor(w, dtype=grads.dtype, device=grads.device).unsqueeze(1) * grads
    ).sum(0)
    scale = cc / (combined.norm() + 1e-8)
    direction = (grads.mean(dim=0) + scale * combined) / (1 + c**2) * num_tasks
    return direction, torch.ones(num_tasks, dtype=grads.dtype, device=grads.device)
