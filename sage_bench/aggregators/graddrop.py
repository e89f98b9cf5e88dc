"""GradDrop: gradient sign dropout.

Paper: Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout", NeurIPS 2020.
Code: ``GradDrop`` in ``methods/weight_methods.py`` of Cranial-XIX/FAMO (0a6ad06), the same
formula as ``graddrop`` in Cranial-XIX/CAGrad (dc3d481, ``nyuv2/utils.py``); FAMO's copy clips
the shared gradient to norm 1 afterwards, CAGrad's does not (see ``sources.py``).

Per coordinate ``p`` of the shared parameters: the sign purity
``P = (1 + sum_k g_k / (sum_k |g_k| + 1e-8)) / 2``, one uniform draw ``U ~ U(0, 1)``, and the
mask ``M_k = [P > U][g_k > 0] + [P < U][g_k < 0]``; the direction is ``K * mean_k(g_k * M_k)``
(the code averages, then multiplies by ``K`` "to match the sum loss"). Heads get the gradient
of ``sum_k L_k`` (weights 1). No leak term (LibMTL's ``leak`` is 0 by default and absent here).
"""

from __future__ import annotations

import torch

from sage_bench.aggregators import Row, register_aggregator


def graddrop_mask(grads: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The ``K x P`` 0/1 mask of the gradients GradDrop keeps, for the ``P`` draws ``uniform``."""
    purity = 0.5 * (1.0 + grads.sum(dim=0) / (grads.abs().sum(dim=0) + 1e-8))
    keep_positive = (purity > uniform).unsqueeze(0) & (grads > 0)
    keep_negative = (purity < uniform).unsqueeze(0) & (grads < 0)
    return (keep_positive | keep_negative).to(grads.dtype)


@register_aggregator(
    "graddrop",
    clip={"NYUv2": 0.0, "Cityscapes": 1.0},  # NYUv2's row: CAGrad's code, no clip; FAMO's clips
    row=Row(
        "GradDrop",
        doc="GradDrop (FAMO ``GradDrop``, CAGrad's ``graddrop``): ``K mean_k(g_k M_k)`` with the sign "
        "dropout mask ``M``; heads weight 1. Uniform draws from the algorithm's ``torch.Generator``.",
    ),
)
def graddrop(
    grads: torch.Tensor,
    losses: torch.Tensor,
    *,
    U: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K * mean_k(g_k * M_k), ones(K))``.

    ``U`` (shape ``(P,)``) are the uniform draws; without it they come from
    ``torch.rand(P, generator=generator)`` in the gradients' dtype, i.e. from torch's global
    generator when ``generator`` is None, as the authors' ``torch.rand_like`` does (on the CPU the
    two give the same numbers for the same seed).
    """
    num_tasks, dim = grads.shape
    if U is None:
        device = generator.device if generator is not None else grads.device
        U = torch.rand(dim, generator=generator, dtype=grads.dtype, device=device)
    if U.shape != (dim,):
        raise ValueError(f"U must have shape ({dim},), got {tuple(U.shape)}")
    mask = graddrop_mask(grads, U.to(device=grads.device, dtype=grads.dtype))
    direction = (grads * mask).mean(dim=0) * num_tasks
    return direction, torch.ones(num_tasks, dtype=grads.dtype, device=grads.device)
