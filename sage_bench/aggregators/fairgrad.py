"""FairGrad (Ban and Ji, 2024): task weights from ``A w = w^{-1/alpha}``, ``A = G G^T``.

As ``OptMN-Lab/fairgrad`` computes it (``FairGrad.fairgrad``): ``w`` is what
``scipy.optimize.least_squares`` returns for the residual ``A w - (1/w)^(1/alpha)`` started at
``w = 1/K`` with bounds ``(0, inf)`` (scipy's defaults otherwise: ``trf``, tolerances 1e-8);
the shared direction is ``K sum_k w_k g_k`` ("to match the sum loss"); every head keeps its own
task's gradient with weight 1 (the authors call ``losses[k].backward()`` per task and only
overwrite the shared gradients), so ``weights`` is ``None``. Their run scripts use
``alpha = 2`` (the command-line default is 1); the authors clip the shared gradient to norm 1
afterwards (``clip`` below; the row applies it, see ``sage_bench.algorithms.multitask``).

``residual="samo"`` is the copy in ``OptMN-Lab/SAMO`` (``FairGrad``/``FairGradWithSAMO``):
``(A w)^alpha - 1/w``. It has the same root but least squares on a different residual stops at
a slightly different ``w``.

Differences from the authors' code: ``A`` is accumulated in float64 (they form ``G^T G`` in the
gradients' float32) and ``w`` multiplies ``G`` in the gradients' dtype (they cast it to float32).
A non-integer ``alpha`` with a negative ``(A w)_k`` makes the SAMO residual NaN, as in theirs.
"""

from __future__ import annotations

import numpy as np
import torch

from sage_bench.aggregators import Row, register_aggregator
from sage_bench.aggregators.gram import gram_matrix
from sage_bench.hparams import POSITIVE, HParam, choice

RESIDUALS = ("fairgrad", "samo")


def fairgrad_weights(gram: np.ndarray, alpha: float = 2.0, residual: str = "fairgrad") -> np.ndarray:
    """FairGrad's ``w`` for the Gram matrix ``A`` (the ``least_squares`` solution, not rescaled)."""
    if residual not in RESIDUALS:
        raise ValueError(f"unknown FairGrad residual {residual!r}; valid choices: {', '.join(RESIDUALS)}")
    from scipy.optimize import least_squares  # imported here: scipy.optimize takes a while to load

    gram = np.asarray(gram, dtype=np.float64)
    k = gram.shape[0]

    if residual == "fairgrad":

        def fun(w):
            return np.dot(gram, w) - np.power(1 / w, 1 / alpha)

    else:

        def fun(w):
            return np.power(np.dot(gram, w), alpha) - 1 / w

    return least_squares(fun, np.ones(k) / k, bounds=(0, np.inf)).x


def fairgrad_space(dataset: str | None = None) -> dict[str, HParam]:
    """``alpha`` 2: what FairGrad's run scripts use for NYUv2 and Cityscapes (the CLI default is 1)."""
    return {"alpha": HParam(2.0, choice([0.5, 1.0, 2.0, 5.0]), "FairGrad's alpha (A w = w^(-1/alpha))", range=POSITIVE)}


@register_aggregator(
    "fairgrad",
    space=fairgrad_space,
    clip={"NYUv2": 1.0, "Cityscapes": 1.0},  # OptMN-Lab/fairgrad clips after the backward
    row=Row("FairGrad", tunable_clip=False, doc="FairGrad (``alpha``): ``K G^T w``; heads weight 1; shared gradient clipped to norm 1."),
)
def fairgrad(
    grads: torch.Tensor, losses: torch.Tensor, alpha: float = 2.0, residual: str = "fairgrad"
) -> tuple[torch.Tensor, None]:
    """``(K sum_k w_k g_k, None)`` with FairGrad's ``w``; heads keep weight 1."""
    k = grads.shape[0]
    w = fairgrad_weights(gram_matrix(grads).numpy(), alpha, residual)
    w_t = torch.as_tensor(w, dtype=grads.dtype, device=grads.device)
    return k * (w_t @ grads), None
