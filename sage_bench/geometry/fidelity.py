"""How much of a weight perturbation the forward pass computes with, and how much it changes
the gradient.

An algorithm adds ``e`` to the weights ``w`` in their own precision (float32) and runs a forward
pass. That pass may round the weights before multiplying: bf16 autocast casts them to bf16,
TF32 matrix products round them to 10 mantissa bits. The network then computes with
``r(w + e)``, and the perturbation it sees is ``r(w + e) - r(w)``, which for a perturbation far
below the spacing of ``r``'s numbers near ``w`` is mostly zero. ``perturbation_fidelity`` is the
cosine between ``e`` and that effective perturbation: 1 when the pass sees ``e`` (float32 gives
``(w + e) - w``, which differs from ``e`` only by float32 rounding), near 0 when it sees rounding
noise.

How the forward pass rounds each parameter is a rule, not an observation (``forward_rounding``):

- under autocast, every parameter except those of normalisation layers is cast to the autocast
  dtype: autocast runs linear layers, convolutions and matrix products in it, and open_clip's
  vision transformer casts its class and position embeddings to the activations' dtype;
  normalisation layers run in float32;
- with TF32 on (CUDA), the parameters with two or more dimensions (the operands of matrix
  products and convolutions) are rounded to TF32, emulated as round-to-nearest to 10 mantissa
  bits (hardware that truncates loses about as much).

Both hold for the networks this package builds (CLIP ViTs, ResNets, the digits CNN); a network
that adds a 2-D parameter elementwise would be counted as rounded, which makes the fidelity
conservative (lower), never optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sage_bench.geometry.perturb import global_norm

Tensors = Sequence[torch.Tensor]
Rounding = torch.dtype | str | None  # an autocast dtype, "tf32", or None (no rounding)

_NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def forward_rounding(network: nn.Module, params: Tensors, autocast_dtype: torch.dtype | None) -> list[Rounding]:
    """How the forward pass of ``network`` rounds each of ``params`` (see the module docstring):
    ``autocast_dtype``, ``"tf32"`` or ``None``. TF32 is read from torch's global switches
    (``torch.backends.cuda.matmul.allow_tf32`` for matrices, ``torch.backends.cudnn.allow_tf32``
    for convolution kernels) and applies to CUDA tensors only."""
    normalisation = {
        id(p) for m in network.modules() if isinstance(m, _NORM_LAYERS) for p in m.parameters(recurse=False)
    }
    rounding: list[Rounding] = []
    for p in params:
        if autocast_dtype is not None and id(p) not in normalisation:
            rounding.append(autocast_dtype)
        elif p.is_cuda and p.ndim >= 2 and (
            torch.backends.cudnn.allow_tf32 if p.ndim > 2 else torch.backends.cuda.matmul.allow_tf32
        ):
            rounding.append("tf32")
        else:
            rounding.append(None)
    return rounding


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to TF32's 10 mantissa bits (to nearest, ties away from zero)."""
    if x.dtype != torch.float32:
        raise ValueError(f"TF32 rounding applies to float32 tensors, got {x.dtype}")
    bits = x.view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _round(x: torch.Tensor, rounding: Rounding) -> torch.Tensor:
    if rounding is None:
        return x
    if rounding == "tf32":
        return round_to_tf32(x)
    return x.to(rounding).to(x.dtype)


def _effective(param: torch.Tensor, e: torch.Tensor, rounding: Rounding) -> torch.Tensor:
    w = param.detach()
    return _round(w + e, rounding) - _round(w, rounding)


@torch.no_grad()
def effective_perturbation(params: Tensors, perturbation: Tensors, rounding: Sequence[Rounding]) -> list[torch.Tensor]:
    """``r(w + e) - r(w)`` for each parameter ``w`` with rounding ``r``, ``w + e`` computed in
    ``w``'s precision as ``sage_bench.geometry.perturbed`` adds it."""
    return [_effective(p, e, r) for p, e, r in zip(params, perturbation, rounding, strict=True)]


@torch.no_grad()
def perturbation_fidelity(params: Tensors, perturbation: Tensors, rounding: Sequence[Rounding]) -> torch.Tensor:
    """The cosine between the intended perturbation ``e`` and the effective one (all parameters
    flattened into one vector; accumulated in float64). 1 for a zero ``e`` (nothing was asked
    for, nothing is lost); 0 when nothing of a non-zero ``e`` arrives."""
    dot = ee = ff = None
    for p, e, r in zip(params, perturbation, rounding, strict=True):
        f = _effective(p, e, r).double()
        e = e.double()
        terms = ((e * f).sum(), (e * e).sum(), (f * f).sum())
        dot, ee, ff = terms if dot is None else (dot + terms[0], ee + terms[1], ff + terms[2])
    if dot is None or ee == 0:
        return torch.tensor(1.0, dtype=torch.float64)
    if ff == 0:
        return torch.zeros((), dtype=torch.float64, device=dot.device)
    return dot / (ee.sqrt() * ff.sqrt())


@torch.no_grad()
def relative_difference(new: Tensors, old: Tensors) -> torch.Tensor:
    """``||new - old|| / ||old||`` with one norm over all tensors (``inf`` for a zero ``old``
    and a non-zero ``new``, 0 when both are zero)."""
    difference = global_norm(torch._foreach_sub(list(new), list(old)))
    reference = global_norm(old)
    # no branch on the values: that would wait for the GPU in the middle of every step
    degenerate = torch.where(difference == 0, 0.0, torch.inf)
    return torch.where(reference > 0, difference / reference, degenerate)
