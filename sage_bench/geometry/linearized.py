"""The change a weight perturbation makes to a gradient, by finite difference or by one
Hessian-vector product, and a measurement of how well each resolves it.

The SAM family and SAGE need the gradient at perturbed weights, ``g(w + e)``. The *difference*
computes it directly, by a forward and backward pass at ``w + e``; under bf16 autocast the pass
multiplies with ``bf16(w + e)``, which for a perturbation far below bf16's spacing near ``w`` is
``bf16(w)``: the change ``g(w + e) - g(w)`` is lost in rounding. The *linearized* gradient is

    g(w + e) ~ g(w) + ||e|| H u,    u = e / ||e||,

one Hessian-vector product by forward-over-reverse differentiation (``torch.func.jvp`` of the
gradient). The direction is normalised before the product and the scale applied after it, so
the product is computed at bf16's relative precision whatever ``||e||``; it is exact to first
order, so its error grows like ``||e||`` relative to the change (``O(rho^2)`` absolute).

Two kernel choices are made for the product (both for the pass of the product only):

- the product is forward-over-reverse; where a kernel of the network has no forward-mode
  derivative in the training precision (PyTorch 2.x CPU bf16 autocast: a convolution after a
  normalisation layer), the network falls back to reverse-over-reverse (double backward) for
  good, the same product at the memory of a backward graph kept for a second backward;
- attention runs on PyTorch's math kernel (``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``):
  the fused SDPA kernels (flash, memory-efficient, cuDNN, and the CPU's flash kernel) have no
  forward-mode derivative. The math kernel computes the same attention unfused, at its memory
  cost (one ``tokens x tokens`` matrix per head);
- BatchNorm layers in training mode normalise with the batch's statistics, as in training, but
  leave their running statistics alone (``batch_statistics_only``): the clean pass has updated
  them once this step, and a second update from the same batch would count it twice.

Functions here take the loss as a closure that calls the network as usual (``loss_fn()``); the
parameters are substituted for the duration of the call with ``torch.func.functional_call``
(buffers stay the module's own). A closure may return one loss or a 1-D tensor of losses (one
per task); the gradient of each is returned, from one forward pass and one backward per loss.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from sage_bench.geometry.perturb import global_norm, perturbed

Tensors = Sequence[torch.Tensor]
LossFn = Callable[[], torch.Tensor]


@contextlib.contextmanager
def batch_statistics_only(network: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode use the batch's statistics inside the block but do not
    update their running statistics (nor ``num_batches_tracked``)."""
    changed = []
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and module.track_running_stats:
            module.track_running_stats = False
            changed.append(module)
    try:
        yield
    finally:
        for module in changed:
            module.track_running_stats = True


class _Closure(nn.Module):
    """A module whose forward is ``loss_fn()``: ``functional_call`` on it substitutes the
    parameters of ``network`` (its submodule) while ``loss_fn`` calls the network."""

    def __init__(self, network: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.network = network
        self.loss_fn = loss_fn

    def forward(self) -> torch.Tensor:
        return self.loss_fn()


def _names(network: nn.Module, params: Tensors) -> list[str]:
    by_id = {id(p): f"network.{name}" for name, p in network.named_parameters(remove_duplicate=False)}
    missing = [i for i, p in enumerate(params) if id(p) not in by_id]
    if missing:
        raise ValueError(f"parameters {missing} are not parameters of the network")
    return [by_id[id(p)] for p in params]


def _grads_and_losses(network: nn.Module, names: list[str], loss_fn: LossFn):
    """``values -> (gradients of each loss, losses)`` with ``values`` substituted for the
    parameters ``names`` (gradients: one list per loss, in ``names``' order)."""
    closure = _Closure(network, loss_fn)

    def losses_of(values: tuple[torch.Tensor, ...]) -> torch.Tensor:
        losses = functional_call(closure, dict(zip(names, values, strict=True)), ())
        return (losses if losses.dtype in (torch.float32, torch.float64) else losses.float()).reshape(-1)

    def grads(values: tuple[torch.Tensor, ...]):
        losses, pullback = vjp(losses_of, values)
        eye = torch.eye(losses.numel(), dtype=losses.dtype, device=losses.device)
        per_loss = tuple(pullback(row)[0] for row in eye)
        return per_loss, losses.detach()

    return grads


def linearized_change(
    network: nn.Module, params: Tensors, perturbation: Tensors, loss_fn: LossFn,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, list[list[torch.Tensor]], list[list[torch.Tensor]]]:  # fmt: skip
    """The losses at ``w``, their gradients ``g(w)`` and the changes ``||e|| H u`` (``u = e /
    ||e||``) a perturbation ``e`` makes to them to first order: one forward pass with tangents and
    one backward per loss (``torch.func.jvp`` of the gradient), under ``autocast()`` (the
    training precision; the backward passes run inside it too, as forward-mode derivatives of
    the backward formulas need operands of one type). Gradients and changes are lists (one per loss) of
    tensors shaped like ``params``. A zero ``e`` gives exactly zero changes."""
    names = _names(network, params)
    perturbation = [e.detach() for e in perturbation]  # a direction, not a function of w (SAGE's scales by ||W||)
    scale = global_norm(perturbation).to(torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    direction = tuple((e / scale.clamp_min(tiny)).to(p.dtype) for p, e in zip(params, perturbation, strict=True))
    primals = tuple(p.detach() for p in params)
    # each attempt in an autocast region of its own: autocast caches its casts of the weights
    # for the region, and a failed attempt must not leave casts behind
    with sdpa_kernel(SDPBackend.MATH), batch_statistics_only(network):
        if _REVERSE_ONLY.get(network) is None:
            try:
                with autocast():
                    grads, products, losses = jvp(
                        _grads_and_losses(network, names, loss_fn), (primals,), (direction,), has_aux=True
                    )
            except RuntimeError as exc:  # a kernel without a forward-mode derivative in this precision
                _REVERSE_ONLY[network] = str(exc).splitlines()[0]
        if _REVERSE_ONLY.get(network) is not None:
            with autocast():
                grads, products, losses = _reverse_over_reverse(params, direction, loss_fn)
    changes = [[scale.to(h.dtype) * h for h in per_loss] for per_loss in products]
    return losses, [list(g) for g in grads], changes


# networks whose forward-over-reverse product failed (the reason): they use reverse-over-reverse
_REVERSE_ONLY: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def _reverse_over_reverse(params: Tensors, direction: Tensors, loss_fn: LossFn):
    """The same product by differentiating ``<g(w), u>`` once more (double backward): for
    networks where a kernel has no forward-mode derivative in the training precision (PyTorch
    2.x's CPU bf16 autocast gives a convolution after a normalisation layer a float32 tangent
    and fails), at the memory of a backward graph kept for the second backward."""
    losses = loss_fn()
    losses = (losses if losses.dtype in (torch.float32, torch.float64) else losses.float()).reshape(-1)
    grads, products = [], []
    for k in range(losses.numel()):
        g = torch.autograd.grad(losses[k], list(params), create_graph=True, allow_unused=True)
        g = [torch.zeros_like(p) if gi is None else gi for p, gi in zip(params, g, strict=True)]
        dot = sum((gi.float() * u.float()).sum() for gi, u in zip(g, direction, strict=True))
        last = k == losses.numel() - 1
        h = torch.autograd.grad(dot, list(params), retain_graph=not last, allow_unused=True) if dot.requires_grad else None
        h = [torch.zeros_like(p) if h is None or hi is None else hi.detach() for p, hi in zip(params, h or params, strict=True)]
        grads.append([gi.detach() for gi in g])
        products.append(h)
    return grads, products, losses.detach()


def linearized_grad(
    network: nn.Module, params: Tensors, perturbation: Tensors, loss_fn: LossFn,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:  # fmt: skip
    """``(losses, gradients)`` at ``w + e`` to first order: ``L(w) + <g(w), e>`` and
    ``g(w) + ||e|| H u`` for each loss (see ``linearized_change``)."""
    losses, grads, changes = linearized_change(network, params, perturbation, loss_fn, autocast)
    perturbed_grads = [torch._foreach_add(g, c) for g, c in zip(grads, changes, strict=True)]
    slopes = torch.stack(
        [sum((gi.float() * e.detach().float()).sum() for gi, e in zip(g, perturbation, strict=True)) for g in grads]
    )
    return losses + slopes, perturbed_grads


# ------------------------------------------------------------------------------ measurement


@dataclass(frozen=True)
class Candidate:
    """A way to compute the perturbed gradient: ``method`` (``difference`` or ``linearized``)
    under autocast ``dtype`` (``None``: the parameters' own precision, float32)."""

    method: str
    dtype: torch.dtype | None

    @property
    def name(self) -> str:
        """``difference_bf16``, ``linearized_fp32``, ...: the prefix of its record key."""
        return f"{self.method}_{'fp32' if self.dtype is None else {torch.bfloat16: 'bf16'}.get(self.dtype, str(self.dtype))}"


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype)


def _flat(tensors: Tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


@contextlib.contextmanager
def _same_randomness(device: torch.device) -> Iterator[None]:
    """Every pass inside starts from the same random state (the same dropout masks) and the
    global random state is as before the block afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class ChangeProbe:
    """Measures, on one batch, the change ``g(w + e) - g(w)`` by each candidate and by a
    reference, and each candidate's relative error ``||d - d_ref|| / ||d_ref||``.

    ``loss_fn(network)`` computes the (scalar) loss of the batch with ``network``, casting its
    inputs to the network's floating-point type; it must not apply autocast itself (the probe
    does, per candidate). The reference is the difference in float64 on a float64 copy of the
    network on the CPU, and in float32 without TF32 on CUDA (where float64 runs at a small
    fraction of the speed); there the float32 difference *is* the reference (error 0).
    Every pass leaves BatchNorm statistics and the global random state as they were.
    """

    def __init__(self, network: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]):
        self.network = network
        self.loss_fn = loss_fn

    def _grad(self, network: nn.Module, params: Tensors, dtype: torch.dtype | None) -> list[torch.Tensor]:
        device_type = params[0].device.type
        with _same_randomness(params[0].device), batch_statistics_only(network), _autocast(device_type, dtype):
            loss = self.loss_fn(network)
        return [g if g is not None else torch.zeros_like(p)
                for p, g in zip(params, torch.autograd.grad(loss, list(params), allow_unused=True), strict=True)]  # fmt: skip

    def difference(self, network: nn.Module, params: Sequence[nn.Parameter], e: Tensors, dtype) -> torch.Tensor:
        """``g(w + e) - g(w)`` by two passes under autocast ``dtype``, flattened (float64)."""
        clean = _flat(self._grad(network, params, dtype))
        with perturbed(params, e):
            moved = _flat(self._grad(network, params, dtype))
        return moved - clean

    def linearized(self, params: Tensors, e: Tensors, dtype) -> torch.Tensor:
        """``||e|| H u`` under autocast ``dtype``, flattened (float64)."""
        device_type = params[0].device.type
        with _same_randomness(params[0].device):
            _, _, changes = linearized_change(
                self.network, params, e, lambda: self.loss_fn(self.network), lambda: _autocast(device_type, dtype)
            )
        return _flat(changes[0])

    def reference(self, params: Sequence[nn.Parameter], e: Tensors) -> torch.Tensor:
        """The reference change (see the class docstring), flattened (float64)."""
        if params[0].device.type == "cuda":
            with _without_tf32():
                return self.difference(self.network, params, e, None)
        positions = {id(p): i for i, p in enumerate(self.network.parameters())}
        copy64 = copy.deepcopy(self.network).double()
        all64 = list(copy64.parameters())
        params64 = [all64[positions[id(p)]] for p in params]
        return self.difference(copy64, params64, [x.double() for x in e], None)

    def measure(
        self, params: Sequence[nn.Parameter], e: Tensors, candidates: Sequence[Candidate]
    ) -> dict[str, float]:
        """``{<candidate>_error: relative error}`` for each candidate, and ``reference_change``
        (``||d_ref|| / ||g(w)||``, the relative size of what is being resolved)."""
        reference = self.reference(params, e)
        errors: dict[str, float] = {}
        norm = reference.norm()
        for candidate in candidates:
            if candidate.method == "difference" and candidate.dtype is None and params[0].device.type == "cuda":
                errors[f"{candidate.name}_error"] = 0.0  # the reference itself (TF32 off)
                continue
            if candidate.method == "difference":
                change = self.difference(self.network, params, e, candidate.dtype)
            else:
                change = self.linearized(params, e, candidate.dtype)
            error = (change - reference).norm() / norm if norm > 0 else (change.norm() > 0) * torch.inf
            errors[f"{candidate.name}_error"] = float(error)
        clean = _flat(self._grad(self.network, params, None)).norm()
        errors["reference_change"] = float(norm / clean) if clean > 0 else 0.0
        return errors


def choose(errors: dict[str, float], candidates: Sequence[Candidate], tolerance: float) -> int:
    """The index of the first (cheapest) candidate whose error is at most ``tolerance``, else of
    the candidate with the smallest error."""
    values = [errors[f"{c.name}_error"] for c in candidates]
    for i, value in enumerate(values):
        if value <= tolerance:
            return i
    return min(range(len(values)), key=values.__getitem__)
