"""PCGrad: projecting conflicting gradients.

Paper: Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
Code: ``PCGrad`` in ``methods/weight_methods.py`` of AvivNavon/nash-mtl (cce1840), a modification
of WeiChengTseng/Pytorch-PCGrad; Cranial-XIX/FAMO (0a6ad06) and OptMN-Lab/fairgrad carry the
same class (plus a clip of the shared gradient to norm 1, see ``sources.py``).

For each task ``i`` in task order, ``g_i^PC`` starts as ``g_i`` and is projected, one task ``j``
at a time, against the *original* gradients: when ``<g_i^PC, g_j> < 0``,
``g_i^PC -= <g_i^PC, g_j> / ||g_j||^2 * g_j``. The order of the ``j`` (all ``K`` tasks, ``i``
itself included) comes from ``random.shuffle`` of the list of original gradients, shuffled in place
once per ``i``, so each task's order continues from the previous task's shuffled list. The
shared direction is ``sum_i g_i^PC`` (the code's default reduction, "sum"); every head gets the
gradient of ``sum_k L_k`` (head weights 1).

A zero row never triggers a projection (its inner products are 0, not negative), so no division
by its zero norm happens, as in the authors' code.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from sage_bench.aggregators import Row, register_aggregator

Orders = Sequence[Sequence[int]]


def draw_orders(num_tasks: int, rng: random.Random | None = None) -> list[list[int]]:
    """The projection order of each task as the authors' code draws it.

    One list of task indices is shuffled in place ``num_tasks`` times with ``rng.shuffle`` (the
    global ``random`` module when ``rng`` is None, as in the authors' code); the order for task
    ``i`` is the list after the ``i``-th shuffle. ``random.shuffle`` draws only from the list's
    length, so this consumes exactly the random numbers the authors' ``random.shuffle(grads)``
    consumes.
    """
    shuffle = (rng or random).shuffle
    tasks = list(range(num_tasks))
    orders = []
    for _ in range(num_tasks):
        shuffle(tasks)
        orders.append(list(tasks))
    return orders


def _check_orders(orders: Orders, num_tasks: int) -> list[list[int]]:
    checked = [list(order) for order in orders]
    if len(checked) != num_tasks or any(sorted(o) != list(range(num_tasks)) for o in checked):
        raise ValueError(
            f"orders must hold {num_tasks} permutations of range({num_tasks}), one per task; "
            f"got {orders!r}"
        )
    return checked


def project_conflicting(grads: torch.Tensor, orders: Orders) -> torch.Tensor:
    """The ``K x P`` matrix of projected gradients ``g_i^PC`` (row ``i`` uses ``orders[i]``)."""
    projected = grads.clone()
    sq_norms = (grads * grads).sum(dim=1)
    for i, order in enumerate(_check_orders(orders, grads.shape[0])):
        for j in order:
            dot = torch.dot(projected[i], grads[j])
            if dot < 0:
                projected[i] -= dot * grads[j] / sq_norms[j]
    return projected


@register_aggregator(
    "pcgrad",
    clip={"NYUv2": 0.0, "Cityscapes": 1.0},  # nash-mtl does not clip it; FAMO's code does
    row=Row(
        "PCGrad",
        doc="PCGrad (nash-mtl / FAMO ``PCGrad``): the sum of the projected task gradients; heads get "
        "the gradient of ``sum_k L_k``. Projection orders from the algorithm's ``random.Random``.",
    ),
    generator="python",  # the authors shuffle with Python's random
)
def pcgrad(
    grads: torch.Tensor,
    losses: torch.Tensor,
    *,
    orders: Orders | None = None,
    generator: random.Random | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_i g_i^PC, ones(K))``.

    ``orders[i]`` is task ``i``'s projection order (e.g. replayed from the authors' draws);
    without it the orders come from ``draw_orders(K, generator)``: Python's global ``random``
    when ``generator`` is None, as the authors' code does, or the given ``random.Random``.
    """
    num_tasks = grads.shape[0]
    if orders is None:
        orders = draw_orders(num_tasks, generator)
    direction = project_conflicting(grads, orders).sum(dim=0)
    return direction, torch.ones(num_tasks, dtype=grads.dtype, device=grads.device)
