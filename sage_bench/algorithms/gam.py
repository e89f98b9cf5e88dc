"""GAM: Gradient norm Aware Minimization (Zhang et al., CVPR 2023), as its authors' optimizer
computes it (``xxgege/GAM`` at commit 694133d, ``gam/gam.py``, class ``GAM``).

The repository is an optimizer wrapper for CIFAR and has no domain-generalization code; here
its step is driven by the ERM loss (mean cross-entropy over the concatenated domain batches;
the repository's CIFAR closure uses cross-entropy with label smoothing 0.1). One step, with
global norms over all parameters that have a gradient and ``eps = 1e-12``:

1. ``g0`` at ``w``; ``e0 = grad_rho * g0 / ||g0||``; ``g1`` at ``w + e0``;
2. ``d = g1 - g0``; ``e12 = grad_norm_rho * d / ||d||``; ``g2`` at ``w + e12``;
3. ``e12 += grad_rho * g2 / ||g2||``; ``g3`` at ``w + e12``;
4. ``pro = g0 + |1 - grad_beta_0| g2``, ``new = grad_beta_1 g1 + (1 - grad_beta_1) g3``,
   ``final = new - grad_gamma (pro - cos(pro, new) ||pro|| new / ||new||)``;
5. the base optimizer steps at ``w`` with ``final``.

As in the source, BatchNorm running statistics are frozen in the three perturbed passes.
The source moves back to ``w`` by subtracting the perturbation; here the weights are copied
back, exactly (as for the SAM family), which differs from the source by rounding only. The
source scales ``grad_rho`` and ``grad_norm_rho`` with a cosine learning-rate schedule; DomainBed
runs use a constant learning rate, so they are constant.
"""

from __future__ import annotations

import torch

from sage_bench.algorithms.base import Minibatches, concat
from sage_bench.algorithms.registry import register_algorithm
from sage_bench.algorithms.sharpness import TwoPassAlgorithm, _dot
from sage_bench.geometry import sam_perturbation
from sage_bench.hparams import NON_NEGATIVE, UNIT_INTERVAL, HParam, SpaceContext, choice, const

EPS = 1e-12  # the source's perturb_eps


def gam_space(context: SpaceContext) -> dict[str, HParam]:
    """Defaults: ``main_cifar.py``'s setting for ResNets on CIFAR-100 (what it runs without
    options). Random search: over the values of the authors' four CIFAR settings. The source
    has no domain-generalization or CLIP setting."""
    return {
        "grad_rho": HParam(0.02, choice([0.02, 0.03, 0.04]), "radius of the gradient perturbations", range=NON_NEGATIVE),
        "grad_norm_rho": HParam(0.2, const(0.2), "radius of the gradient-norm ascent", range=NON_NEGATIVE),
        "grad_beta_0": HParam(0.5, choice([0.1, 0.3, 0.5]), "1 - weight of g2 in pro", range=UNIT_INTERVAL),
        "grad_beta_1": HParam(0.6, choice([0.1, 0.5, 0.6]), "weight of g1 (1 - it: of g3) in new", range=UNIT_INTERVAL),
        "grad_gamma": HParam(0.03, choice([0.03, 0.05]), "weight of the decomposition term", range=NON_NEGATIVE),
    }


@register_algorithm("GAM", space=gam_space)
class GAM(TwoPassAlgorithm):
    """Gradient norm Aware Minimization driven by the ERM loss; see the module docstring."""

    freeze_bn_in_perturbed_pass = True

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        h = self.hparams
        x, y = concat(minibatches)
        loss, params, g0 = self.clean_grad(x, y)
        e0 = sam_perturbation(g0, h["grad_rho"], eps=EPS)
        _, g1 = self.perturbed_grad(x, y, params, e0)
        e12 = sam_perturbation(torch._foreach_sub(g1, g0), h["grad_norm_rho"], eps=EPS)
        _, g2 = self.perturbed_grad(x, y, params, e12)
        torch._foreach_add_(e12, sam_perturbation(g2, h["grad_rho"], eps=EPS))
        loss_adv, g3 = self.perturbed_grad(x, y, params, e12)

        pro = torch._foreach_add(g0, g2, alpha=abs(1 - h["grad_beta_0"]))
        new = torch._foreach_add(torch._foreach_mul(g1, h["grad_beta_1"]), g3, alpha=1 - h["grad_beta_1"])
        new_norm = torch.sqrt(_dot(new, new))
        pro_norm = torch.sqrt(_dot(pro, pro))
        cosine = _dot(pro, new) / (new_norm * pro_norm + EPS)
        vertical = torch._foreach_sub(pro, torch._foreach_mul(new, cosine * pro_norm / (new_norm + EPS)))
        final = torch._foreach_add(new, vertical, alpha=-h["grad_gamma"])
        self.descend(params, final)
        return {"loss": loss.item(), "perturbed_loss": loss_adv.item(), "cosine": cosine.item(), **self.probe_stats()}
