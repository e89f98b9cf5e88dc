"""Reference transcriptions of one training step of SAM, GSAM, SAGM, DISAM and SAGE.

Written for tests: each function is a plain, literal transcription of its source, with no
batching, no fused passes and no shared helpers beyond the obvious ones below, so that a fast
implementation can be checked against it. They are not used by the package.

Sources (what each step follows):

- SAM: Foret et al., the PyTorch port ``davda54/sam`` (``sam.py``) and the DomainBed/SWAD
  ``SAM`` algorithm: ``e = rho * g / (||g|| + 1e-12)`` with one L2 norm over every parameter
  that has a gradient; gradient at ``w + e``; restore ``w``; the base optimizer steps with that
  gradient.
- GSAM: Zhuang et al., ``juntang-zhuang/GSAM`` (``gsam/gsam.py``): SAM's perturbation, then
  ``g_adv - alpha * (g - cos(g, g_adv) * ||g|| * g_adv / (||g_adv|| + eps))``. Batch-norm running
  statistics are frozen (momentum 0) during the perturbed pass, as there.
- SAGM: Wang et al., ``Wang-pengfei/SAGM`` (``domainbed/sagm/sagm.py``):
  ``e = (rho / (||g|| + eps) - alpha) * g``, final gradient ``0.5 * (g + g_adv)``; batch-norm
  statistics frozen during the perturbed pass, as there.
- DISAM: Zhang et al., ``MediaBrain-SJTU/DISAM`` (``code/algorithms/DISAM.py``): the perturbation
  is SAM's, computed from the gradient of ``CE - lambda * Var_d(L_d)``; the descent gradient is
  plain CE at the perturbed point. The authors' code weights each domain by its number of
  samples in the batch (see ``domain_loss_variance``).
- SAGE: Algorithm 1 of the SAGE paper, with conv kernels flattened to ``(out, -1)``.

Every step takes ``minibatches = [(x_1, y_1), ..., (x_K, y_K)]``, uses mean cross-entropy over
the concatenated batch unless its rule says otherwise, writes the final gradient into ``.grad``
of every trainable parameter (``None`` where the loss does not depend on it) and calls
``optimizer.step()``. Each returns a dict of floats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]
Grads = list[torch.Tensor | None]

# Muon's quintic Newton-Schulz coefficients (KellerJordan/Muon, muon.py).
QUINTIC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters every step perturbs and updates, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def concat(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


def gradients(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool = False) -> Grads:
    """d loss / d p for each parameter; ``None`` where the loss does not depend on ``p``."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [None if g is None else g.detach() for g in grads]


def global_norm(grads: Grads) -> torch.Tensor:
    """One L2 norm over all the given tensors, as if they were one flat vector (summed in
    float64, returned in the gradients' dtype)."""
    present = [g for g in grads if g is not None]
    return torch.sqrt(sum((g.double() ** 2).sum() for g in present)).to(present[0].dtype)


def add_(params: list[nn.Parameter], deltas: Grads) -> None:
    with torch.no_grad():
        for p, d in zip(params, deltas, strict=True):
            if d is not None:
                p.add_(d)


def copy_weights(params: list[nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def restore_weights(params: list[nn.Parameter], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)


def optimizer_step(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: Grads
) -> None:
    """Set ``.grad`` to exactly ``grads`` (no accumulation) and take one base-optimizer step."""
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.clone()
    optimizer.step()


@contextlib.contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch-norm momentum 0 inside the block (GSAM/SAGM's ``disable_running_stats``)."""
    saved = {}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            saved[module] = module.momentum
            module.momentum = 0
    try:
        yield
    finally:
        for module, momentum in saved.items():
            module.momentum = momentum


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _sam_perturbation(grads: Grads, rho: float, eps: float) -> Grads:
    scale = rho / (global_norm(grads) + eps)
    return [None if g is None else g * scale for g in grads]


# --------------------------------------------------------------------------------------------
# SAM, GSAM, SAGM, DISAM
# --------------------------------------------------------------------------------------------


def sam_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    minibatches: Minibatches,
    rho: float,
    *,
    eps: float = 1e-12,
) -> dict[str, float]:
    """One SAM step: ``e = rho g/(||g|| + eps)``; gradient at ``w + e``; restore; base step."""
    params = trainable_parameters(model)
    x, y = concat(minibatches)

    loss = ce(model, x, y)
    g = gradients(loss, params)
    e = _sam_perturbation(g, rho, eps)

    saved = copy_weights(params)
    add_(params, e)
    perturbed_loss = ce(model, x, y)
    g_adv = gradients(perturbed_loss, params)
    restore_weights(params, saved)

    optimizer_step(optimizer, params, g_adv)
    return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}


def gsam_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    minibatches: Minibatches,
    rho: float,
    alpha: float,
    *,
    eps: float = 1e-12,
    freeze_bn_stats: bool = True,
) -> dict[str, float]:
    """One GSAM step: SAM's perturbed gradient minus ``alpha`` times the part of the clean
    gradient orthogonal to it."""
    params = trainable_parameters(model)
    x, y = concat(minibatches)

    loss = ce(model, x, y)
    g = gradients(loss, params)
    e = _sam_perturbation(g, rho, eps)

    saved = copy_weights(params)
    add_(params, e)
    with frozen_batchnorm_statistics(model) if freeze_bn_stats else contextlib.nullcontext():
        perturbed_loss = ce(model, x, y)
    g_adv = gradients(perturbed_loss, params)
    restore_weights(params, saved)

    norm_g, norm_adv = global_norm(g), global_norm(g_adv)
    inner = sum(
        (a.double() * b.double()).sum() for a, b in zip(g, g_adv, strict=True) if b is not None
    ).to(norm_g.dtype)
    cosine = inner / (norm_adv * norm_g + eps)
    final = []
    for a, b in zip(g, g_adv, strict=True):
        if b is None:
            final.append(None)
            continue
        vertical = a - cosine * norm_g * b / (norm_adv + eps)
        final.append(b - alpha * vertical)

    optimizer_step(optimizer, params, final)
    return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}


def sagm_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    minibatches: Minibatches,
    rho: float,
    alpha: float,
    *,
    eps: float = 1e-12,
    freeze_bn_stats: bool = True,
) -> dict[str, float]:
    """One SAGM step: ``e = (rho/(||g|| + eps) - alpha) g``; final gradient ``(g + g_adv)/2``."""
    params = trainable_parameters(model)
    x, y = concat(minibatches)

    loss = ce(model, x, y)
    g = gradients(loss, params)
    scale = rho / (global_norm(g) + eps) - alpha
    e = [None if a is None else a * scale for a in g]

    saved = copy_weights(params)
    add_(params, e)
    with frozen_batchnorm_statistics(model) if freeze_bn_stats else contextlib.nullcontext():
        perturbed_loss = ce(model, x, y)
    g_adv = gradients(perturbed_loss, params)
    restore_weights(params, saved)

    final = [None if b is None else 0.5 * (a + b) for a, b in zip(g, g_adv, strict=True)]
    optimizer_step(optimizer, params, final)
    return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}


def domain_loss_variance(
    losses: Sequence[torch.Tensor], sizes: Sequence[int], weighting: str = "samples"
) -> torch.Tensor:
    """Variance of the per-domain mean losses.

    ``weighting="samples"``: each domain counts ``n_d / N`` (mean ``sum n_d L_d / N``, variance
    ``sum n_d (L_d - mean)^2 / N``). This is what the DISAM code computes: its
    ``list(set(domain_labels))`` over a label *tensor* keeps one entry per sample (tensors hash
    by identity), so each domain's loss enters ``n_d`` times. ``weighting="domains"``: the plain
    population variance over domains (the DISAM paper's Eq. 6). Both agree for equal sizes.
    """
    if weighting == "samples":
        weights = [n / sum(sizes) for n in sizes]
    elif weighting == "domains":
        weights = [1 / len(sizes)] * len(sizes)
    else:
        raise ValueError(f"weighting must be 'samples' or 'domains', got {weighting!r}")
    mean = sum(w * loss for w, loss in zip(weights, losses, strict=True))
    return sum(w * (loss - mean) ** 2 for w, loss in zip(weights, losses, strict=True))


def disam_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    minibatches: Minibatches,
    rho: float,
    lam: float,
    *,
    eps: float = 1e-12,
    weighting: str = "samples",
) -> dict[str, float]:
    """One DISAM step: SAM's perturbation from the gradient of ``CE - lam * Var_d(L_d)``
    (one forward pass over the concatenated batch; ``L_d`` = mean CE of domain ``d``'s rows);
    plain CE gradient at the perturbed point; restore; base step."""
    params = trainable_parameters(model)
    x, y = concat(minibatches)
    sizes = [len(yd) for _, yd in minibatches]

    logits = model(x)
    loss = F.cross_entropy(logits, y)
    domain_losses = [
        F.cross_entropy(lg, yd)
        for lg, (_, yd) in zip(logits.split(sizes), minibatches, strict=True)
    ]
    variance = domain_loss_variance(domain_losses, sizes, weighting)
    g = gradients(loss - lam * variance, params)
    e = _sam_perturbation(g, rho, eps)

    saved = copy_weights(params)
    add_(params, e)
    perturbed_loss = ce(model, x, y)
    g_adv = gradients(perturbed_loss, params)
    restore_weights(params, saved)

    optimizer_step(optimizer, params, g_adv)
    return {
        "loss": loss.item(),
        "perturbed_loss": perturbed_loss.item(),
        "variance": variance.item(),
    }


# --------------------------------------------------------------------------------------------
# Polar factors
# --------------------------------------------------------------------------------------------


def polar_svd(G: torch.Tensor) -> torch.Tensor:
    """``U V^T`` from the SVD of a 2-D ``G`` (computed in float64), over its numerically nonzero
    singular values only (threshold ``max(m, n) * eps(G.dtype) * s_max``, as ``matrix_rank``), so
    that a zero or rank-deficient ``G`` keeps its null directions at zero -- the limit the
    Newton-Schulz iterations reach. For a full-rank ``G`` this is the usual ``U V^T``."""
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    tol = max(G.shape) * torch.finfo(G.dtype).eps * S.max()  # numerical rank, as matrix_rank
    keep = S > tol
    return (U[:, keep] @ Vh[keep, :]).to(G.dtype)


def polar_quintic(
    G: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Muon's ``zeropower_via_newtonschulz5``: transpose when rows > cols, divide by
    ``||G||_F + eps``, then ``steps`` times ``A = X X^T; X = a X + (b A + c A A) X``.
    Muon runs it in bfloat16; here ``dtype`` (float32 by default). Its singular values end near,
    not at, one (Muon's docstring: roughly uniform in (0.5, 1.5))."""
    a, b, c = QUINTIC_COEFFICIENTS
    X = G.to(dtype)
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    X = X / (torch.linalg.matrix_norm(X) + eps)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X.to(G.dtype)


def polar_cubic(
    G: torch.Tensor, steps: int = 5, eps: float = 0.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Eq. 7 of the SAGE paper: ``X_0 = G/||G||_F``, ``X_{k+1} = X_k (3 I - X_k^T X_k) / 2``.
    A zero ``G`` gives zero (the paper's division is undefined there)."""
    X = G.to(dtype)
    norm = torch.linalg.matrix_norm(X)
    if norm == 0:
        return torch.zeros_like(G)
    X = X / (norm + eps)
    eye = torch.eye(X.shape[1], dtype=dtype, device=X.device)
    for _ in range(steps):
        X = 0.5 * X @ (3 * eye - X.T @ X)
    return X.to(G.dtype)


def polar_factor(G: torch.Tensor, method: str = "svd", steps: int = 5) -> torch.Tensor:
    if method == "svd":
        return polar_svd(G)
    if method == "quintic":
        return polar_quintic(G, steps)
    if method == "cubic":
        return polar_cubic(G, steps)
    raise ValueError(f"polar must be 'svd', 'quintic' or 'cubic', got {method!r}")


# --------------------------------------------------------------------------------------------
# SAGE
# --------------------------------------------------------------------------------------------


def per_domain_gradients(
    model: nn.Module, minibatches: Minibatches
) -> tuple[list[torch.Tensor], list[Grads], list[float]]:
    """Algorithm 1, lines 4-8: one forward pass over the concatenated batch, then one backward
    pass per domain through its rows of the logits. Returns the per-domain mean losses, the
    per-domain gradients and the sample weights ``n_k / N``."""
    params = trainable_parameters(model)
    x, _ = concat(minibatches)
    sizes = [len(y) for _, y in minibatches]
    logits = model(x)
    losses, grads = [], []
    for k, (lg, (_, y)) in enumerate(zip(logits.split(sizes), minibatches, strict=True)):
        loss = F.cross_entropy(lg, y)
        grads.append(gradients(loss, params, retain_graph=k < len(minibatches) - 1))
        losses.append(loss.detach())
    return losses, grads, [n / sum(sizes) for n in sizes]


def _flat(grads: Grads) -> torch.Tensor:
    return torch.cat([g.double().reshape(-1) for g in grads if g is not None])


def gradient_agreement(domain_grads: Sequence[Grads]) -> float:
    """Mean pairwise cosine of the flattened per-domain gradients (float64); 1 for one domain.
    A pair where either gradient is zero counts as cosine 0."""
    K = len(domain_grads)
    if K == 1:
        return 1.0
    flats = [_flat(g) for g in domain_grads]
    total, pairs = 0.0, 0
    for i in range(K):
        for j in range(i + 1, K):
            denom = flats[i].norm() * flats[j].norm()
            total += float(flats[i] @ flats[j] / denom) if denom > 0 else 0.0
            pairs += 1
    return total / pairs


def sage_perturbation(
    weight: torch.Tensor,
    grad: torch.Tensor,
    rho: float,
    polar: str = "svd",
    ns_steps: int = 5,
    orthogonalize: bool = True,
    layer_scale: bool = True,
) -> torch.Tensor:
    """Algorithm 1, lines 14-21, for one parameter. Tensors with 2 or more dimensions:
    ``rho * ||W||_F * polar(G)`` with ``G`` flattened to ``(out, -1)`` (``orthogonalize`` off:
    ``G/||G||_F``; ``layer_scale`` off: no ``||W||_F``). Others: ``rho * g/||g||``. Zero
    gradients give zero perturbations."""
    if grad.dim() >= 2:
        G = grad.reshape(grad.shape[0], -1)
        if orthogonalize:
            Q = polar_factor(G, polar, ns_steps)
        else:
            norm = torch.linalg.matrix_norm(G)
            Q = G / norm if norm > 0 else torch.zeros_like(G)
        scale = rho * torch.linalg.vector_norm(weight.detach()) if layer_scale else rho
        return (scale * Q).reshape(grad.shape)
    norm = torch.linalg.vector_norm(grad)
    return rho * grad / norm if norm > 0 else torch.zeros_like(grad)


def gaussian_noise(model: nn.Module, generator: torch.Generator) -> list[torch.Tensor]:
    """One ``N(0, I)`` tensor per trainable parameter, in ``model.parameters()`` order."""
    return [
        torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        for p in trainable_parameters(model)
    ]


def sage_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    minibatches: Minibatches,
    rho: float,
    gamma: float,
    noise: Sequence[torch.Tensor] | None,
    polar: str = "svd",
    ns_steps: int = 5,
    orthogonalize: bool = True,
    layer_scale: bool = True,
    noise_on: bool = True,
) -> dict[str, float]:
    """One SAGE step (Algorithm 1 of the paper).

    ``noise``: one standard-normal tensor per trainable parameter (``model.parameters()``
    order), the ``N(0, I)`` of line 29, so that a test can feed the same draw to two
    implementations; it may be ``None`` only when ``noise_on`` is off.
    """
    params = trainable_parameters(model)
    x, y = concat(minibatches)

    # Phase 1: per-domain losses and gradients; sample-weighted totals.
    domain_losses, domain_grads, weights = per_domain_gradients(model, minibatches)
    loss = sum(w * float(l_k) for w, l_k in zip(weights, domain_losses, strict=True))
    total = []
    for i in range(len(params)):
        parts = [w * g[i] for w, g in zip(weights, domain_grads, strict=True) if g[i] is not None]
        total.append(sum(parts) if parts else None)

    # Phase 2: gradient agreement and noise scale.
    S = gradient_agreement(domain_grads)
    beta = gamma * (1.0 - S) if noise_on else 0.0
    if noise_on and (noise is None or len(noise) != len(params)):
        raise ValueError(
            f"sage_step needs one noise tensor per trainable parameter ({len(params)}) when noise_on is set"
        )

    # Phase 3: spectral perturbation, parameter by parameter.
    e = [
        None
        if g is None
        else sage_perturbation(p, g, rho, polar, ns_steps, orthogonalize, layer_scale)
        for p, g in zip(params, total, strict=True)
    ]

    # Phases 4-6: ascend, perturbed pass, restore.
    saved = copy_weights(params)
    add_(params, e)
    perturbed_loss = ce(model, x, y)
    g_pert = gradients(perturbed_loss, params)
    restore_weights(params, saved)

    final = []
    for i, g in enumerate(g_pert):
        if g is None:
            final.append(None)
        elif beta != 0.0:
            final.append(g + beta * noise[i])
        else:
            final.append(g)

    # Phase 7: base optimizer step.
    optimizer_step(optimizer, params, final)
    return {"loss": loss, "perturbed_loss": perturbed_loss.item(), "S": S, "beta": beta}
