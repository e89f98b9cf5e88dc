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

The parameters perturbed and updated are those the optimizer holds that require a gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sage_bench.algorithms.base import Algorithm, Minibatches, concat
from sage_bench.geometry import perturbed, sam_perturbation

EPS = 1e-12  # the eps of the authors' SAM / GSAM / SAGM code (davda54/sam, GSAM, SAGM)


class TwoPassAlgorithm(Algorithm):
    """Shared steps of algorithms that take a gradient at a perturbed point."""

    def trainable(self) -> list[torch.nn.Parameter]:
        """The optimizer's parameters that require a gradient, in the optimizer's order."""
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]

    def mean_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return F.cross_entropy(self.predict(x), y)

    def loss_and_grad(self, x, y, params) -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = self.mean_loss(x, y)
        return loss.detach(), list(torch.autograd.grad(loss, params))

    def descend(self, params: list[torch.nn.Parameter], grads: list[torch.Tensor]) -> None:
        """Base optimizer step at the current (restored) weights with ``grads``."""
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def perturbed_grad(self, x, y, params, perturbation) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss and gradient at ``w + e``; the weights are exactly ``w`` again afterwards."""
        with perturbed(params, perturbation):
            return self.loss_and_grad(x, y, params)


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(u * v).sum() for u, v in zip(a, b)]).sum()


class SAM(TwoPassAlgorithm):
    """Sharpness-Aware Minimization (Foret et al., 2021); hparam ``rho``."""

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        params = self.trainable()
        loss, grads = self.loss_and_grad(x, y, params)
        e = sam_perturbation(grads, self.hparams["rho"], eps=EPS)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        self.descend(params, grads_adv)
        return {"loss": loss.item(), "perturbed_loss": loss_adv.item()}


class GSAM(TwoPassAlgorithm):
    """Surrogate-Gap guided SAM (Zhuang et al., 2022); hparams ``rho``, ``alpha``.

    The descent gradient removes ``alpha`` times the component of the clean gradient that is
    orthogonal to the perturbed one, as in the authors' ``gradient_decompose``:
    ``cos = <g, g_adv> / (||g|| ||g_adv|| + eps)``,
    ``g_perp = g - cos ||g|| g_adv / (||g_adv|| + eps)``, descent ``g_adv - alpha g_perp``.
    ``rho`` is constant (the authors' scheduler ties it to the learning rate; DomainBed runs
    use a constant learning rate).
    """

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        params = self.trainable()
        loss, grads = self.loss_and_grad(x, y, params)
        e = sam_perturbation(grads, self.hparams["rho"], eps=EPS)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        norm = torch.sqrt(_dot(grads, grads))
        norm_adv = torch.sqrt(_dot(grads_adv, grads_adv))
        cosine = _dot(grads, grads_adv) / (norm * norm_adv + EPS)
        parallel = torch._foreach_mul(grads_adv, cosine * norm / (norm_adv + EPS))
        vertical = torch._foreach_sub(grads, parallel)
        final = torch._foreach_add(grads_adv, vertical, alpha=-self.hparams["alpha"])
        self.descend(params, final)
        return {"loss": loss.item(), "perturbed_loss": loss_adv.item(), "cosine": cosine.item()}


class SAGM(TwoPassAlgorithm):
    """Sharpness-Aware Gradient Matching (Wang et al., 2023); hparams ``rho``, ``alpha``.

    ``e = (rho / (||g|| + eps) - alpha) g``; the descent gradient is ``(g + g_adv) / 2``.
    """

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        params = self.trainable()
        loss, grads = self.loss_and_grad(x, y, params)
        norm = torch.sqrt(_dot(grads, grads))
        scale = self.hparams["rho"] / (norm + EPS) - self.hparams["alpha"]
        e = torch._foreach_mul(grads, scale)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        final = torch._foreach_add(grads, grads_adv)
        torch._foreach_mul_(final, 0.5)
        self.descend(params, final)
        return {"loss": loss.item(), "perturbed_loss": loss_adv.item()}


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
        direction = list(torch.autograd.grad(loss - self.hparams["lambda"] * variance, params))
        e = sam_perturbation(direction, self.hparams["rho"], eps=EPS)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        self.descend(params, grads_adv)
        return {
            "loss": loss.item(),
            "perturbed_loss": loss_adv.item(),
            "domain_loss_var": variance.item(),
        }
