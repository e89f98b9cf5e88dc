"""The SAM family: SAM, GSAM, SAGM and DISAM, as their authors' published code computes them.

All four take two forward+backward passes per step: the clean gradient ``g`` at ``w``, an
ascent perturbation ``e`` from it, the gradient ``g_adv`` at ``w + e``; then the weights are
restored to exactly ``w`` and the base optimizer steps at ``w`` with a descent gradient built
from ``g`` and ``g_adv``. Losses are the mean cross-entropy over the concatenated domain
batches unless stated. Norms are one L2 norm over all trainable parameters.

| algorithm | perturbation ``e``                         | descent gradient                       |
|-----------|--------------------------------------------|----------------------------------------|
| SAM       | ``rho g / (||g|| + eps)``                  | ``g_adv``                              |
| GSAM      | as SAM                                     | ``g_adv - alpha (g - proj_{g_adv} g)`` |
| SAGM      | ``(rho / (||g|| + eps) - alpha) g``        | ``(g + g_adv) / 2``                    |
| DISAM     | as SAM, of ``d = grad(CE - lambda Var_k L_k)`` | ``g_adv``                          |

The parameters perturbed and updated are those the optimizer holds that require a gradient
and that the loss depends on (parameters without a gradient are left alone, as the authors'
code skips them). Where the authors' code freezes BatchNorm running statistics during the
perturbed pass (GSAM, SAGM), so does this; SAM (the DomainBed/SWAD port) and DISAM do not.

The gradient at ``w + e`` is computed as ``perturbation`` says (``difference``: the second
pass above; ``linearized``: one Hessian-vector product; ``auto``: measured per job), see
``sage_bench.algorithms.perturbation``.

Besides the losses, every ``update`` returns what the perturbation did:
``grad_change = ||g_adv - g|| / ||g||`` on every step (DISAM: ``g`` is its ascent gradient, of
``CE - lambda Var``, the only clean gradient it computes; so its ``grad_change`` includes the
variance term and is not 0 at ``rho = 0``), and, on the steps the runner measures
(``measure_fidelity``), ``perturbation_fidelity``: the cosine between ``e`` and the change of
weights the forward pass computes with (``sage_bench.geometry.fidelity``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from sage_bench.algorithms.base import Algorithm, Minibatches, concat
from sage_bench.algorithms.perturbation import PerturbedGradient, probe_loss_of
from sage_bench.algorithms.registry import register_algorithm
from sage_bench.geometry import perturbed, sam_perturbation
from sage_bench.geometry.fidelity import (
    forward_rounding,
    perturbation_fidelity,
    relative_difference,
)
from sage_bench.geometry.linearized import linearized_grad
from sage_bench.hparams import (
    NON_NEGATIVE,
    UNIT_INTERVAL,
    HParam,
    SpaceContext,
    choice,
    log_uniform,
)

EPS = 1e-12  # the eps of the authors' SAM / GSAM / SAGM code (davda54/sam, GSAM, SAGM)


# Hyperparameters. Where they come from:
#
# - SAM: rho 0.05, search {0.01, 0.02, 0.05, 0.1}: the DomainBed ports of SAM (SWAD's and
#   SAGM's hparams_registry).
# - GSAM, per backbone family:
#   - CLIP ViTs: alpha 0.4, GSAM's own ViT-B/16 setting (Zhuang et al., Table 4, reproduced in
#     juntang-zhuang/GSAM README.md line 25, img/gsam_hyperparam2.png: ViT-S/32 0.4, ViT-S/16
#     1.0, ViT-B/32 0.6, ViT-B/16 0.4; the official jax config google-research/big_vision
#     big_vision/configs/proj/gsam/vit_i1k_gsam_no_aug.py line 98 has 0.6 for B/32); searched
#     over those ViT values {0.4, 0.6, 1.0}. No DG fork publishes a CLIP setting.
#   - other backbones (DomainBed's ResNet-50): alpha 0.001, the DomainBed forks' default
#     (aristotelisballas/GGA domainbed/hparams_registry.py line 97, shared with SAGM), searched
#     over {0.001, 0.005, 0.01} up to GSAM's ResNet-50 ImageNet value (Table 4: 0.01).
#   rho as SAM.
# - SAGM: rho as SAM; alpha per data set from the authors' published commands
#   (Wang-pengfei/SAGM README.md lines 73-97: 0.001 for PACS, VLCS and TerraIncognita, 0.0005
#   for OfficeHome and DomainNet; 0.001, their registry's default, elsewhere), for every backbone
#   (no CLIP setting is published); searched over {5e-4, 1e-3, 2e-3}. Their registry lists
#   {0.01, 0.02, 0.05, 0.1} for alpha, the same list as for rho, which their tuned values never use.
# - DISAM: rho as SAM, lambda 0.1 (the paper's main setting; 0.2 for TerraIncognita), searched
#   log-uniformly over [0.01, 1]; the authors' code has no random search.

CLIP_BACKBONES = ("clip_vit_b16", "clip", "clip_tiny")
SAGM_ALPHA = {"OfficeHome": 0.0005, "DomainNet": 0.0005}  # else 0.001


def sam_space(context: SpaceContext) -> dict[str, HParam]:
    return {"rho": HParam(0.05, choice([0.01, 0.02, 0.05, 0.1]), "perturbation radius", range=NON_NEGATIVE)}


def gsam_space(context: SpaceContext) -> dict[str, HParam]:
    if context.backbone in CLIP_BACKBONES:
        alpha, search = 0.4, [0.4, 0.6, 1.0]
    else:
        alpha, search = 0.001, [0.001, 0.005, 0.01]
    return {
        **sam_space(context),
        "alpha": HParam(alpha, choice(search), "weight of the surrogate-gap term", range=UNIT_INTERVAL),
    }


def sagm_space(context: SpaceContext) -> dict[str, HParam]:
    return {
        **sam_space(context),
        "alpha": HParam(
            SAGM_ALPHA.get(context.dataset, 0.001),
            choice([0.0005, 0.001, 0.002]),
            "gradient-matching coefficient",
            range=NON_NEGATIVE,
        ),
    }


def disam_space(context: SpaceContext) -> dict[str, HParam]:
    return {
        **sam_space(context),
        "lambda": HParam(0.1, log_uniform(-2, 0), "weight of the domain-loss variance", range=NON_NEGATIVE),
    }


@contextlib.contextmanager
def frozen_batchnorm_statistics(network: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep their running statistics inside the block (momentum 0)."""
    saved = {}
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            saved[module] = module.momentum
            module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum in saved.items():
            module.momentum = momentum


class TwoPassAlgorithm(PerturbedGradient, Algorithm):
    """Shared steps of algorithms that take a gradient at a perturbed point."""

    perturbs_weights = True
    freeze_bn_in_perturbed_pass = False

    def trainable(self) -> list[torch.nn.Parameter]:
        """The optimizer's parameters that require a gradient, in the optimizer's order."""
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]

    def mean_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return F.cross_entropy(self.predict(x), y)

    def loss_and_grad(self, x, y, params) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Mean cross-entropy and its gradient (``None`` for parameters it does not depend on)."""
        loss = self.mean_loss(x, y)
        return loss.detach(), list(torch.autograd.grad(loss, params, allow_unused=True))

    @staticmethod
    def used(params, grads) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
        """The parameters that received a gradient, and those gradients."""
        pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        return [p for p, _ in pairs], [g for _, g in pairs]

    def clean_grad(self, x, y) -> tuple[torch.Tensor, list[torch.nn.Parameter], list[torch.Tensor]]:
        """Loss at ``w``, the parameters it depends on, and its gradient."""
        loss, grads = self.loss_and_grad(x, y, self.trainable())
        params, grads = self.used(self.trainable(), grads)
        return loss, params, grads

    def descend(self, params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> None:
        """Base optimizer step at the current (restored) weights with ``grads``."""
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def perturbed_grad(self, x, y, params, perturbation) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss and gradient at ``w + e``, by the difference or linearized (``perturbation``);
        the weights are exactly ``w`` again afterwards."""
        probe = probe_loss_of(lambda network, dtype: F.cross_entropy(network(x.to(dtype)), y))
        if self.decide_perturbation(params, perturbation, probe).method == "linearized":
            losses, grads = linearized_grad(
                self.network, params, perturbation, lambda: self.mean_loss(x, y), self.autocast
            )
            return losses[0], grads[0]
        freeze = frozen_batchnorm_statistics if self.freeze_bn_in_perturbed_pass else contextlib.nullcontext
        with perturbed(params, perturbation), freeze(self.network):
            loss, grads = self.loss_and_grad(x, y, params)
        return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    def perturbation_stats(self, params, perturbation, grads, grads_adv) -> dict[str, torch.Tensor]:
        """``grad_change`` (``||g_adv - g|| / ||g||``), and ``perturbation_fidelity`` when this
        step is measured; call it at the restored weights, before ``grads_adv`` is changed."""
        stats = {"grad_change": relative_difference(grads_adv, grads), **self.probe_stats()}
        if self.measure_fidelity:
            rounding = forward_rounding(self.network, params, self.autocast_dtype)
            # the linearized product computes with the direction itself, rounded as a weight would be
            at = [torch.zeros_like(p) for p in params] if self.perturbation_in_use().method == "linearized" else params
            stats["perturbation_fidelity"] = perturbation_fidelity(at, perturbation, rounding)
        return stats


def as_floats(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Every value as a Python float, with one transfer from the device for all tensors."""
    names = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    floats = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if names:
        stacked = torch.stack([values[k].detach().to(torch.float64) for k in names]).tolist()
        floats.update(zip(names, stacked, strict=True))
    return {k: floats[k] for k in values}


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(u * v).sum() for u, v in zip(a, b, strict=True)]).sum()


@register_algorithm("SAM", space=sam_space)
class SAM(TwoPassAlgorithm):
    """Sharpness-Aware Minimization (Foret et al., 2021); hparam ``rho``."""

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        loss, params, grads = self.clean_grad(x, y)
        e = sam_perturbation(grads, self.hparams["rho"], eps=EPS)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        stats = self.perturbation_stats(params, e, grads, grads_adv)
        self.descend(params, grads_adv)
        return as_floats({"loss": loss, "perturbed_loss": loss_adv, **stats})


@register_algorithm("GSAM", space=gsam_space)
class GSAM(TwoPassAlgorithm):
    """Surrogate-Gap guided SAM (Zhuang et al., 2022); hparams ``rho``, ``alpha``.

    The descent gradient removes ``alpha`` times the component of the clean gradient that is
    orthogonal to the perturbed one, as in the authors' ``gradient_decompose``:
    ``cos = <g, g_adv> / (||g|| ||g_adv|| + eps)``,
    ``g_perp = g - cos ||g|| g_adv / (||g_adv|| + eps)``, descent ``g_adv - alpha g_perp``.
    ``rho`` is constant (the authors' scheduler ties it to the learning rate; DomainBed runs
    use a constant learning rate).
    """

    freeze_bn_in_perturbed_pass = True

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        loss, params, grads = self.clean_grad(x, y)
        e = sam_perturbation(grads, self.hparams["rho"], eps=EPS)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        stats = self.perturbation_stats(params, e, grads, grads_adv)
        norm = torch.sqrt(_dot(grads, grads))
        norm_adv = torch.sqrt(_dot(grads_adv, grads_adv))
        cosine = _dot(grads, grads_adv) / (norm * norm_adv + EPS)
        parallel = torch._foreach_mul(grads_adv, cosine * norm / (norm_adv + EPS))
        vertical = torch._foreach_sub(grads, parallel)
        final = torch._foreach_add(grads_adv, vertical, alpha=-self.hparams["alpha"])
        self.descend(params, final)
        return as_floats({"loss": loss, "perturbed_loss": loss_adv, "cosine": cosine, **stats})


@register_algorithm("SAGM", space=sagm_space)
class SAGM(TwoPassAlgorithm):
    """Sharpness-Aware Gradient Matching (Wang et al., 2023); hparams ``rho``, ``alpha``.

    ``e = (rho / (||g|| + eps) - alpha) g``; the descent gradient is ``(g + g_adv) / 2``.
    """

    freeze_bn_in_perturbed_pass = True

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        loss, params, grads = self.clean_grad(x, y)
        norm = torch.sqrt(_dot(grads, grads))
        scale = self.hparams["rho"] / (norm + EPS) - self.hparams["alpha"]
        e = torch._foreach_mul(grads, scale)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        stats = self.perturbation_stats(params, e, grads, grads_adv)
        final = torch._foreach_add(grads, grads_adv)
        torch._foreach_mul_(final, 0.5)
        self.descend(params, final)
        return as_floats({"loss": loss, "perturbed_loss": loss_adv, **stats})


@register_algorithm("DISAM", space=disam_space)
class DISAM(TwoPassAlgorithm):
    """Domain-Inspired SAM (Zhang et al., 2024); hparams ``rho``, ``lambda``.

    The ascent direction is the gradient of ``CE - lambda * Var_k(L_k)``, where ``L_k`` is
    domain ``k``'s mean loss and the variance is weighted by each domain's share of the batch
    (the plain variance for equal domain batches); it is normalised as in SAM. The descent
    gradient is the plain cross-entropy gradient at the perturbed point.
    """

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        params = self.trainable()
        sizes = [len(b[1]) for b in minibatches]
        with self.autocast():
            per_example = F.cross_entropy(self.predict(x), y, reduction="none")
        domain_losses = torch.stack([chunk.mean() for chunk in per_example.float().split(sizes)])
        weights = torch.tensor(sizes, dtype=domain_losses.dtype, device=domain_losses.device)
        weights = weights / weights.sum()
        loss = (weights * domain_losses).sum()
        variance = (weights * (domain_losses - loss) ** 2).sum()
        direction = torch.autograd.grad(loss - self.hparams["lambda"] * variance, params, allow_unused=True)
        params, direction = self.used(params, direction)
        e = sam_perturbation(direction, self.hparams["rho"], eps=EPS)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        stats = self.perturbation_stats(params, e, direction, grads_adv)
        self.descend(params, grads_adv)
        return as_floats({"loss": loss, "perturbed_loss": loss_adv, "domain_loss_var": variance, **stats})
