"""Ascent perturbations of the SAM family, and applying / restoring them.

Every function takes the parameters and their gradients as parallel lists and returns the
perturbation ``e`` as a list of tensors shaped like the parameters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from sage_bench.geometry.polar import polar_factor

Tensors = Sequence[torch.Tensor]


def global_norm(tensors: Tensors) -> torch.Tensor:
    """The L2 norm of all tensors flattened and concatenated (one norm over all parameters)."""
    norms = torch._foreach_norm(list(tensors))
    return torch.linalg.vector_norm(torch.stack(norms))


def sam_perturbation(grads: Tensors, rho: float, eps: float = 1e-12) -> list[torch.Tensor]:
    """SAM's ``e = rho * g / (||g|| + eps)`` with one norm over all parameters (Foret et al.)."""
    scale = rho / (global_norm(grads) + eps)
    return torch._foreach_mul(list(grads), scale)


def asam_perturbation(
    params: Tensors,
    grads: Tensors,
    rho: float,
    eta: float = 0.01,
    adaptive: Sequence[bool] | None = None,
    eps: float = 1e-16,
) -> list[torch.Tensor]:
    """ASAM's element-wise adaptive perturbation (Kwon et al., 2021).

    ``e = rho * T^2 g / (||T g|| + eps)`` with ``T = |w| + eta`` element-wise and one norm over
    all parameters. ``adaptive[i] = False`` uses ``T = 1`` for parameter ``i`` (the authors'
    code normalises only parameters named ``weight`` and leaves biases as SAM does); by default
    every parameter is adaptive. ``eta`` and ``eps`` default to the authors' values.
    """
    if len(params) != len(grads):
        raise ValueError("params and grads must be parallel lists")
    adaptive = [True] * len(params) if adaptive is None else list(adaptive)
    if len(adaptive) != len(params):
        raise ValueError("adaptive must have one entry per parameter")
    scales = [p.detach().abs() + eta if a else None for p, a in zip(params, adaptive, strict=True)]
    scaled = [g if t is None else t * g for g, t in zip(grads, scales, strict=True)]  # T g
    factor = rho / (global_norm(scaled) + eps)
    return [factor * (s if t is None else t * s) for s, t in zip(scaled, scales, strict=True)]


def spectral_perturbation(
    params: Tensors,
    grads: Tensors,
    rho: float,
    orthogonalize: bool = True,
    layer_scale: bool = True,
    polar: str = "quintic",
    ns_steps: int = 5,
    polar_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """SAGE's ascent perturbation (paper Sec. 3.1 and Algorithm 1, Phase 3).

    For a parameter ``W`` with two or more dimensions, its gradient is viewed as a matrix
    ``G`` of shape ``(out, -1)`` (conv kernels flattened) and ``e_W = rho * ||W||_F * Q`` with
    ``Q = polar(G)``; same-shaped matrices are orthogonalised in one batched call. For a
    vector (bias, norm gain), ``e = rho * g / ||g||`` with that vector's own norm, as SAM.

    ``orthogonalize=False`` uses ``G / ||G||_F`` instead of the polar factor;
    ``layer_scale=False`` drops ``||W||_F``. A zero gradient gives a zero perturbation.
    """
    if len(params) != len(grads):
        raise ValueError("params and grads must be parallel lists")
    perturbation: list[torch.Tensor | None] = [None] * len(params)
    # matrices grouped by (short side, long side): a (768, 192) and a (192, 768) gradient are
    # orthogonalised in the same batched call, the first one transposed
    groups: dict[tuple[int, int], list[tuple[int, bool]]] = defaultdict(list)
    for i, g in enumerate(grads):
        if g.ndim >= 2:
            rows, cols = g.shape[0], g[0].numel()
            groups[(min(rows, cols), max(rows, cols))].append((i, rows > cols))
        else:
            perturbation[i] = rho * g / torch.linalg.vector_norm(g).clamp_min(torch.finfo(g.dtype).tiny)

    for members in groups.values():
        matrices = []
        for i, transposed in members:
            matrix = grads[i].reshape(grads[i].shape[0], -1)
            matrices.append(matrix.mT if transposed else matrix)
        stacked = torch.stack(matrices)
        if orthogonalize:
            directions = polar_factor(stacked, method=polar, steps=ns_steps, dtype=polar_dtype)
        else:
            norms = torch.linalg.matrix_norm(stacked, keepdim=True)
            directions = stacked / norms.clamp_min(torch.finfo(stacked.dtype).tiny)
        for direction, (i, transposed) in zip(directions, members, strict=True):
            if transposed:
                direction = direction.mT
            scale = rho * torch.linalg.vector_norm(params[i]) if layer_scale else rho
            perturbation[i] = (scale * direction).reshape(params[i].shape).to(params[i].dtype)
    return perturbation  # type: ignore[return-value]


@contextmanager
def perturbed(params: Sequence[torch.nn.Parameter], perturbation: Tensors) -> Iterator[None]:
    """Inside the block the parameters are ``w + e``; on exit they are exactly ``w`` again.

    The original values are copied and restored (not ``w + e - e``, which rounds).
    """
    originals = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_add_(list(params), list(perturbation))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                p.copy_(original)
