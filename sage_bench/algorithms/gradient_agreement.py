"""GGA: Gradient-Guided Annealing (Ballas & Diou, CVPR 2025), and its variant GGA-L, as their
authors' code computes them (``aristotelisballas/GGA`` at commit 5450c2b, classes ``ERM_GGA``
and ``GGA_L`` in ``domainbed/algorithms/algorithms.py``, stepped by ``domainbed/trainer.py``).

GGA is ERM, except on updates ``start_step <= t <= end_step`` (``t`` counted from 0 by the
algorithm's own ``update_count``, a buffer, so a resumed job continues it). On those updates,
before the ERM step, it searches the weights' neighbourhood for better agreement between the
training domains' gradients:

1. per-domain gradients of the mean cross-entropy (one forward+backward per domain) w.r.t. all
   trainable parameters, flattened; ``s*`` = their minimum pairwise cosine; ``L*`` = the loss
   of the concatenated batch; the current weights are kept, as the best so far;
2. 250 times (fixed in the source): add ``U(-1, 1) * neighborhoodSize`` (``rand_like``, torch's
   global generator) to every trainable **featurizer** parameter; recompute the minimum
   cosine ``s`` and the loss ``L``; if ``L - L* < 0.1`` and ``s > s*``, keep these weights as
   the best, set ``s* = s``, ``L* = L`` and go back to the weights before the search. A rejected
   perturbation is not undone: the next one adds to it;
3. load the best weights and take the ERM step from there.

GGA-L takes, on every update, the per-domain gradients as above, their mean pairwise cosine
``S``, the ERM gradient, and adds ``gga_l_gamma * (1 - S) * N(0, 1)`` (``randn_like``) to the
gradient of every parameter of the network that has one before the optimizer steps.

Both need two or more training domains (the source fails with one). Cosines are
``F.cosine_similarity`` of the flattened gradients (eps 1e-8), as the source's
``nn.CosineSimilarity(dim=0)``. Gradients are taken w.r.t. the parameters the optimizer holds
that require a gradient (the source: all of the network's, which is the same for a network
whose parameters all train); parameters the loss does not depend on are left out.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import autograd

from sage_bench.algorithms.base import FeatureAlgorithm, Minibatches, NetworkError, concat
from sage_bench.algorithms.registry import register_algorithm
from sage_bench.hparams import NON_NEGATIVE, HParam, SpaceContext, const

SEARCH_STEPS = 250  # hard-coded in the source
ACCEPT_LOSS_INCREASE = 0.1  # a perturbation is accepted while the loss rises by less than this


def gga_space(context: SpaceContext) -> dict[str, HParam]:
    """Real images: the defaults of the authors' ``train_all.py`` (their README's commands use
    ``neighborhoodSize`` 1e-5, 1e-6 for VLCS, and ``end_step`` 200; learning rate 3e-5 for
    PACS and DomainNet, 1e-5 otherwise; weight decay 1e-4, 1e-6 for DomainNet; ResNet-50
    dropout 0.5). The source has no random search and no CLIP setting: random search keeps
    these values. The small embedded data sets, which the source never ran, anneal updates
    10 to 15: the source's window (updates 100 to 150 of DomainBed's 5001) scaled to their 501
    default updates, which keeps the share of annealed updates and GGA's cost relative to
    ERM (an annealed update costs about 400 ERM updates)."""
    start, end = (10, 15) if context.family == "small" else (100, 150)
    return {
        "neighborhoodSize": HParam(1e-6, const(1e-6), "size of the uniform weight perturbations", range=NON_NEGATIVE),
        "start_step": HParam(start, const(start), "first update of the annealing window", range=NON_NEGATIVE),
        "end_step": HParam(end, const(end), "last update of the annealing window", range=NON_NEGATIVE),
    }


def gga_l_space(context: SpaceContext) -> dict[str, HParam]:
    """``gga_l_gamma``: the default of the authors' ``train_all.py``; no random search there."""
    return {
        "gga_l_gamma": HParam(1e-3, const(1e-3), "gradient noise scale at full disagreement", range=NON_NEGATIVE)
    }


class _DomainGradientAlgorithm(FeatureAlgorithm):
    """Per-domain flattened gradients and their pairwise cosines, as GGA's source takes them."""

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]

    def domain_gradients(self, minibatches: Minibatches) -> list[torch.Tensor]:
        if len(minibatches) < 2:
            raise NetworkError(
                f"{type(self).__name__} compares the training domains' gradients and needs at least two "
                f"training domains; got {len(minibatches)}"
            )
        params = self.trainable()
        grads = []
        for x, y in minibatches:
            with self.autocast():
                loss = F.cross_entropy(self.predict(x), y)
            domain = autograd.grad(loss, params, allow_unused=True)
            grads.append(torch.cat([g.flatten() for g in domain if g is not None]))
        return grads

    @staticmethod
    def pairwise_cosines(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return [F.cosine_similarity(grads[i], grads[j], dim=0) for i, j in itertools.combinations(range(len(grads)), 2)]

    def erm_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            loss = F.cross_entropy(self.predict(x), y)
        self.optimizer.zero_grad()
        loss.backward()
        return loss


@register_algorithm("GGA", space=gga_space)
class GGA(_DomainGradientAlgorithm):
    """Gradient-Guided Annealing; see the module docstring."""

    perturbs_weights = True  # perturbations of ~1e-6 must not vanish in a bf16 forward pass

    def __init__(self, network, optimizer, hparams, **kwargs: Any):
        super().__init__(network, optimizer, hparams, **kwargs)
        self.register_buffer("update_count", torch.tensor([0]))

    def in_window(self) -> bool:
        return self.hparams["start_step"] <= self.update_count.item() <= self.hparams["end_step"]

    @torch.no_grad()
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with self.autocast():
            return F.cross_entropy(self.predict(x), y).item()

    def anneal(self, minibatches: Minibatches, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """The search of step 2; leaves the best weights in the network."""
        params = list(self.network.parameters())
        perturbed = [p for p in self.featurizer.parameters() if p.requires_grad]
        best_min_sim = min(self.pairwise_cosines(self.domain_gradients(minibatches)))
        start_sim = best_min_sim.item()
        best_loss = self._loss(x, y)
        current = [p.detach().clone() for p in params]
        best = [p.detach().clone() for p in params]
        accepted = 0
        for _ in range(SEARCH_STEPS):
            with torch.no_grad():
                for p in perturbed:
                    p.add_((torch.rand_like(p) * 2 - 1) * self.hparams["neighborhoodSize"] * 1.0)
            step_min_sim = min(self.pairwise_cosines(self.domain_gradients(minibatches)))
            step_loss = self._loss(x, y)
            if step_loss - best_loss < ACCEPT_LOSS_INCREASE and best_min_sim - step_min_sim < 0:
                best_min_sim, best_loss = step_min_sim, step_loss
                best = [p.detach().clone() for p in params]
                accepted += 1
                with torch.no_grad():
                    for p, original in zip(params, current, strict=True):
                        p.copy_(original)
        with torch.no_grad():
            for p, kept in zip(params, best, strict=True):
                p.copy_(kept)
        return {"min_cosine_before": start_sim, "min_cosine": best_min_sim.item(), "accepted": float(accepted)}

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        stats = self.anneal(minibatches, x, y) if self.in_window() else {}
        loss = self.erm_step(x, y)
        self.optimizer.step()
        self.update_count += 1
        return {"loss": loss.item(), **stats}


@register_algorithm("GGA-L", space=gga_l_space)
class GGA_L(_DomainGradientAlgorithm):
    """GGA-L; see the module docstring. It perturbs gradients, not weights."""

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        sims = self.pairwise_cosines(self.domain_gradients(minibatches))
        mean_sim = sum(sims) / len(sims)
        loss = self.erm_step(x, y)
        alpha = self.hparams["gga_l_gamma"] * (1 - mean_sim)
        with torch.no_grad():
            for p in self.network.parameters():
                if p.grad is not None:
                    p.grad.add_(torch.randn_like(p.grad) * alpha)
        self.optimizer.step()
        return {"loss": loss.item(), "S": float(mean_sim)}
