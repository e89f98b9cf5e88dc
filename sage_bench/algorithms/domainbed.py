"""DomainBed's baselines: IRM, VREx, GroupDRO, Mixup, MMD, CORAL, RSC and Fish, as
``facebookresearch/DomainBed`` computes them (``domainbed/algorithms.py`` at commit b93c22a).

Each update is the source's, on the runner's network and optimizer instead of the ones
DomainBed builds for itself (``Adam(lr, weight_decay)``): with ``optimizer=adam`` the numbers
are the source's, given the same weights, batches and seeds. Where the source draws random
numbers (Mixup's domain permutation from torch's global generator, its mixing weights from
NumPy's), the same draws are made in the same order. Readings taken where the framework
differs from DomainBed's:

- IRM and VREx replace their Adam by a fresh one when the penalty's anneal ends; here the
  runner's optimizer forgets its state in place (``optimizer.state.clear()``), which gives the
  same numbers and keeps the optimizer the job checkpoints.
- VREx and GroupDRO keep the per-domain losses (and GroupDRO its weights ``q``) in a tensor of
  torch's default type (float32), as the source's ``torch.zeros(len(minibatches))`` does, so a
  float64 network sees them rounded exactly as there.
- MMD's and CORAL's kernels are computed in float32 when the forward pass runs in bf16.
- RSC's percentiles come from ``np.percentile`` on the CPU, as in the source, and the
  per-example feature thresholds are rounded to float32 as the source's ``torch.Tensor(...)``
  does: where a threshold falls on a gradient entry (e.g. 16 features, drop factor 1/3),
  ``torch.quantile``'s rounding would mute a different set of features.
- Fish deep-copies the network for its inner loop; the source rebuilds it from its
  constructor, which draws (unused) initial weights from the global generator. The numbers are
  the same unless the network draws random numbers in its forward pass (dropout).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import autograd

from sage_bench.algorithms.base import Algorithm, FeatureAlgorithm, Minibatches, concat
from sage_bench.algorithms.registry import register_algorithm
from sage_bench.hparams import (
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    HParam,
    SpaceContext,
    choice,
    log_uniform,
)

# Hyperparameters: DomainBed's names, defaults and random-search distributions
# (``domainbed/hparams_registry.py`` at b93c22a). DomainBed tuned them for ResNet-50; no source
# gives values for a CLIP backbone, so these hold for every backbone.


def _int_log_uniform(low_exp: float, high_exp: float):
    return lambda r: int(10 ** r.uniform(low_exp, high_exp))


def irm_space(context: SpaceContext) -> dict[str, HParam]:
    return {
        "irm_lambda": HParam(1e2, log_uniform(-1, 5), "weight of the IRM penalty after the anneal", range=NON_NEGATIVE),
        "irm_penalty_anneal_iters": HParam(
            500, _int_log_uniform(0, 4), "updates with penalty weight 1 before irm_lambda applies", range=NON_NEGATIVE
        ),
    }


def vrex_space(context: SpaceContext) -> dict[str, HParam]:
    return {
        "vrex_lambda": HParam(1e1, log_uniform(-1, 5), "weight of the risk variance after the anneal", range=NON_NEGATIVE),
        "vrex_penalty_anneal_iters": HParam(
            500, _int_log_uniform(0, 4), "updates with penalty weight 1 before vrex_lambda applies", range=NON_NEGATIVE
        ),
    }


def groupdro_space(context: SpaceContext) -> dict[str, HParam]:
    return {
        "groupdro_eta": HParam(1e-2, log_uniform(-3, -1), "step size of the domain weights q", range=NON_NEGATIVE)
    }


def mixup_space(context: SpaceContext) -> dict[str, HParam]:
    return {"mixup_alpha": HParam(0.2, log_uniform(-1, 1), "Beta(alpha, alpha) mixing weights", range=POSITIVE)}


def mmd_space(context: SpaceContext) -> dict[str, HParam]:
    return {"mmd_gamma": HParam(1.0, log_uniform(-1, 1), "weight of the feature-matching penalty", range=NON_NEGATIVE)}


def rsc_space(context: SpaceContext) -> dict[str, HParam]:
    return {
        "rsc_f_drop_factor": HParam(
            1 / 3, lambda r: r.uniform(0, 0.5), "fraction of features muted per example", range=UNIT_INTERVAL
        ),
        "rsc_b_drop_factor": HParam(
            1 / 3, lambda r: r.uniform(0, 0.5), "fraction of examples whose features are muted", range=UNIT_INTERVAL
        ),
    }


def fish_space(context: SpaceContext) -> dict[str, HParam]:
    return {
        "meta_lr": HParam(0.5, choice([0.05, 0.1, 0.5]), "step towards the inner loop's weights", range=UNIT_INTERVAL)
    }


# --------------------------------------------------------------------------------------------
# Risk penalties on one forward pass: IRM, VREx


def _domain_slices(minibatches: Minibatches) -> list[slice]:
    slices, start = [], 0
    for x, _ in minibatches:
        slices.append(slice(start, start + x.shape[0]))
        start += x.shape[0]
    return slices


class _AnnealedPenalty(Algorithm):
    """A penalty whose weight is 1 for the first ``<prefix>_penalty_anneal_iters`` updates and
    ``<prefix>_lambda`` from then on; the optimizer's state is reset when the switch happens."""

    prefix = ""

    def __init__(self, network, optimizer, hparams, **kwargs: Any):
        super().__init__(network, optimizer, hparams, **kwargs)
        self.register_buffer("update_count", torch.tensor([0]))

    def penalty_weight(self) -> float:
        anneal = self.hparams[f"{self.prefix}_penalty_anneal_iters"]
        return self.hparams[f"{self.prefix}_lambda"] if self.update_count.item() >= anneal else 1.0

    def step(self, loss: torch.Tensor) -> None:
        """Reset the optimizer at the end of the anneal (the source's fresh Adam), then step."""
        if self.update_count.item() == self.hparams[f"{self.prefix}_penalty_anneal_iters"]:
            self.optimizer.state.clear()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.update_count += 1


@register_algorithm("IRM", space=irm_space)
class IRM(_AnnealedPenalty):
    """Invariant Risk Minimization (Arjovsky et al., 2019), DomainBed's ``IRM``.

    One forward pass of the concatenated batch. Per domain, the penalty is the product of the
    gradients w.r.t. a scale ``s = 1`` of the cross-entropy of the even-position and of the
    odd-position examples (so the order within a batch matters); loss = mean domain
    cross-entropy + ``w`` * mean penalty, ``w`` = 1 before ``irm_penalty_anneal_iters`` updates,
    ``irm_lambda`` after. The optimizer's state is reset at the update where ``w`` switches.
    """

    prefix = "irm"

    @staticmethod
    def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(1.0, device=logits.device).requires_grad_()
        loss_1 = F.cross_entropy(logits[::2] * scale, y[::2])
        loss_2 = F.cross_entropy(logits[1::2] * scale, y[1::2])
        grad_1 = autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = autograd.grad(loss_2, [scale], create_graph=True)[0]
        return torch.sum(grad_1 * grad_2)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        weight = self.penalty_weight()
        nll, penalty = 0.0, 0.0
        with self.autocast():
            logits = self.predict(torch.cat([x for x, _ in minibatches]))
            for (_, y), part in zip(minibatches, _domain_slices(minibatches), strict=True):
                nll += F.cross_entropy(logits[part], y)
                penalty += self.irm_penalty(logits[part], y)
        nll /= len(minibatches)
        penalty /= len(minibatches)
        loss = nll + weight * penalty
        self.step(loss)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


@register_algorithm("VREx", space=vrex_space)
class VREx(_AnnealedPenalty):
    """Risk Extrapolation, V-REx (Krueger et al., 2021), DomainBed's ``VREx``.

    Per-domain cross-entropies ``L_k`` from one forward pass; loss = mean(L) + ``w`` *
    mean((L - mean(L))^2) (the biased variance), ``w`` as IRM's with ``vrex_lambda`` and
    ``vrex_penalty_anneal_iters``. The returned ``nll`` is the last domain's, as in the source.
    """

    prefix = "vrex"

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        weight = self.penalty_weight()
        with self.autocast():
            logits = self.predict(torch.cat([x for x, _ in minibatches]))
            losses = torch.zeros(len(minibatches), device=logits.device)
            for i, ((_, y), part) in enumerate(zip(minibatches, _domain_slices(minibatches), strict=True)):
                nll = F.cross_entropy(logits[part], y)
                losses[i] = nll
        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        loss = mean + weight * penalty
        self.step(loss)
        return {"loss": loss.item(), "nll": nll.item(), "penalty": penalty.item()}


# --------------------------------------------------------------------------------------------
# Reweighting and mixing domains: GroupDRO, Mixup


@register_algorithm("GroupDRO", space=groupdro_space)
class GroupDRO(Algorithm):
    """Group DRO (Sagawa et al., 2020), DomainBed's ``GroupDRO``.

    One forward pass per domain. The buffer ``q`` (ones at the first update) is multiplied, one
    domain after the other, by ``exp(groupdro_eta * L_k)``, then normalised; the loss is
    ``<L, q>``. ``q`` is part of the ``state_dict``, so a resumed job continues with it.
    """

    def __init__(self, network, optimizer, hparams, **kwargs: Any):
        super().__init__(network, optimizer, hparams, **kwargs)
        device = next(network.parameters()).device
        self.register_buffer("q", torch.empty(0, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "q")
        if isinstance(saved, torch.Tensor) and saved.shape != self.q.shape:  # empty until the first update
            self.q = torch.empty(saved.shape, dtype=saved.dtype, device=self.q.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        device = minibatches[0][0].device
        if not len(self.q):
            self.q = torch.ones(len(minibatches), device=device)
        losses = torch.zeros(len(minibatches), device=device)
        for m, (x, y) in enumerate(minibatches):
            with self.autocast():
                losses[m] = F.cross_entropy(self.predict(x), y)
            self.q[m] *= (self.hparams["groupdro_eta"] * losses[m].data).exp()
        self.q /= self.q.sum()
        loss = torch.dot(losses, self.q)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


def random_pairs_of_minibatches(minibatches: Minibatches) -> list[tuple[tuple, tuple]]:
    """DomainBed's pairs: a random permutation ``perm`` of the domains (torch's global
    generator), then ``(perm[i], perm[i + 1 mod K])``, both cut to the shorter length."""
    perm = torch.randperm(len(minibatches)).tolist()
    pairs = []
    for i in range(len(minibatches)):
        j = i + 1 if i < len(minibatches) - 1 else 0
        (xi, yi), (xj, yj) = minibatches[perm[i]], minibatches[perm[j]]
        n = min(len(xi), len(xj))
        pairs.append(((xi[:n], yi[:n]), (xj[:n], yj[:n])))
    return pairs


@register_algorithm("Mixup", space=mixup_space)
class Mixup(Algorithm):
    """Inter-domain Mixup (Yan et al., 2020; Wang et al., 2020), DomainBed's ``Mixup``.

    For each pair of domains from ``random_pairs_of_minibatches``, in order, a weight
    ``lam ~ Beta(mixup_alpha, mixup_alpha)`` from NumPy's global generator, the mixed input
    ``lam x_i + (1 - lam) x_j`` and the loss ``lam CE(., y_i) + (1 - lam) CE(., y_j)``; the
    objective is their sum over the number of domains.
    """

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        objective = 0.0
        for (xi, yi), (xj, yj) in random_pairs_of_minibatches(minibatches):
            lam = float(np.random.beta(self.hparams["mixup_alpha"], self.hparams["mixup_alpha"]))
            x = lam * xi + (1 - lam) * xj
            with self.autocast():
                predictions = self.predict(x)
                objective += lam * F.cross_entropy(predictions, yi)
                objective += (1 - lam) * F.cross_entropy(predictions, yj)
        objective /= len(minibatches)
        self.optimizer.zero_grad()
        objective.backward()
        self.optimizer.step()
        return {"loss": objective.item()}


# --------------------------------------------------------------------------------------------
# Feature matching: MMD, CORAL


def _cdist_squared(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, clamped at 1e-30 (DomainBed's ``my_cdist``)."""
    x1_norm = x1.pow(2).sum(dim=-1, keepdim=True)
    x2_norm = x2.pow(2).sum(dim=-1, keepdim=True)
    res = torch.addmm(x2_norm.transpose(-2, -1), x1, x2.transpose(-2, -1), alpha=-2).add_(x1_norm)
    return res.clamp_min_(1e-30)


GAUSSIAN_GAMMAS = (0.001, 0.01, 0.1, 1, 10, 100, 1000)


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of Gaussian kernels ``exp(-gamma d^2)`` over DomainBed's seven ``gamma``."""
    distances = _cdist_squared(x, y)
    kernel = torch.zeros_like(distances)
    for gamma in GAUSSIAN_GAMMAS:
        kernel.add_(torch.exp(distances.mul(-gamma)))
    return kernel


def mmd_gaussian(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean K(x, x) + mean K(y, y) - 2 mean K(x, y)`` with ``gaussian_kernel``."""
    return gaussian_kernel(x, x).mean() + gaussian_kernel(y, y).mean() - 2 * gaussian_kernel(x, y).mean()


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the means plus of the covariances (divided by ``n - 1``)."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cent_x, cent_y = x - mean_x, y - mean_y
    cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
    cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()


class _FeatureMatching(FeatureAlgorithm):
    """DomainBed's ``AbstractMMD``: mean per-domain cross-entropy + ``mmd_gamma`` * the mean
    over domain pairs ``i < j`` of a distance between their features (one featurizer pass per
    domain)."""

    distance = staticmethod(mmd_gaussian)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        objective, penalty = 0.0, 0.0
        nmb = len(minibatches)
        with self.autocast():
            features = [self.featurizer(x) for x, _ in minibatches]
            classifs = [self.head(f) for f in features]
        if self.autocast_dtype is not None:  # the kernels in float32, not in the forward's bf16
            features = [f.float() for f in features]
        for i in range(nmb):
            objective += F.cross_entropy(classifs[i], minibatches[i][1])
            for j in range(i + 1, nmb):
                penalty += self.distance(features[i], features[j])
        objective /= nmb
        if nmb > 1:
            penalty /= nmb * (nmb - 1) / 2
        self.optimizer.zero_grad()
        (objective + self.hparams["mmd_gamma"] * penalty).backward()
        self.optimizer.step()
        if torch.is_tensor(penalty):
            penalty = penalty.item()
        return {"loss": objective.item(), "penalty": penalty}


@register_algorithm("MMD", space=mmd_space)
class MMD(_FeatureMatching):
    """Feature matching with MMD (Li et al., 2018): a sum of seven Gaussian kernels."""

    distance = staticmethod(mmd_gaussian)


@register_algorithm("CORAL", space=mmd_space)
class CORAL(_FeatureMatching):
    """Deep CORAL (Sun & Saenko, 2016): squared differences of feature means and covariances."""

    distance = staticmethod(coral_distance)



# --------------------------------------------------------------------------------------------
# RSC


@register_algorithm("RSC", space=rsc_space)
class RSC(FeatureAlgorithm):
    """Representation Self-Challenging (Huang et al., 2020), DomainBed's ``RSC``.

    ``f`` = features of the concatenated batch, ``p`` = logits, ``g = d sum(p * onehot(y)) / d f``
    (no graph). ``mask_f``: features whose ``g`` is below the row's ``(1 - rsc_f_drop_factor)``
    percentile; ``changes``: true-class probability minus the same with ``f * mask_f``;
    ``mask_b``: examples whose change is below the batch's ``(1 - rsc_b_drop_factor)``
    percentile. Loss = CE(head(f * (mask_f or mask_b)), y). No random draws (DomainBed's RSC
    mutes by percentile, where the paper draws spatial or channel muting at random).
    """

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        drop_f = (1 - self.hparams["rsc_f_drop_factor"]) * 100
        drop_b = (1 - self.hparams["rsc_b_drop_factor"]) * 100
        all_x, all_y = concat(minibatches)
        with self.autocast():
            all_f = self.featurizer(all_x)
            all_p = self.head(all_f)
        all_o = F.one_hot(all_y, all_p.shape[1])
        all_g = autograd.grad((all_p * all_o).sum(), all_f)[0]
        percentiles = np.percentile(_numpy(all_g), drop_f, axis=1)
        percentiles = torch.tensor(percentiles, dtype=torch.float32, device=all_g.device).unsqueeze(1)
        mask_f = all_g.lt(percentiles).float()
        with self.autocast():
            all_p_muted = self.head(all_f * mask_f)
        all_s = F.softmax(all_p, dim=1)
        all_s_muted = F.softmax(all_p_muted, dim=1)
        changes = (all_s * all_o).sum(1) - (all_s_muted * all_o).sum(1)
        percentile = float(np.percentile(_numpy(changes), drop_b))
        mask_b = changes.lt(percentile).float().view(-1, 1)
        mask = torch.logical_or(mask_f, mask_b).float()
        with self.autocast():
            loss = F.cross_entropy(self.head(all_f * mask), all_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}


def _numpy(t: torch.Tensor) -> np.ndarray:
    """``t`` on the CPU as a NumPy array (bf16 and fp16 as float32, which NumPy has)."""
    t = t.detach()
    return (t if t.dtype in (torch.float32, torch.float64) else t.float()).cpu().numpy()


# --------------------------------------------------------------------------------------------
# Fish


@register_algorithm("Fish", space=fish_space)
class Fish(Algorithm):
    """Fish (Shi et al., 2022), DomainBed's ``Fish``: gradient matching by a first-order
    meta-update.

    Each update copies the network, builds an inner optimizer of the runner's optimizer's type
    and settings over the copy (DomainBed: ``Adam(lr, weight_decay)``) and gives it the inner
    state kept from the previous update, takes one inner step per domain in the given order
    (the paper shuffles the domains; DomainBed does not), keeps the inner optimizer's state, and
    moves every entry of the network's ``state_dict`` (buffers too) by
    ``meta_lr * (inner - current)``. The runner's optimizer is never stepped. The inner
    optimizer's state is the algorithm's extra state, so checkpoints resume it. The returned
    loss is the last domain's.
    """

    def __init__(self, network, optimizer, hparams, **kwargs: Any):
        super().__init__(network, optimizer, hparams, **kwargs)
        self.inner_optimizer_state: dict[str, Any] | None = None

    def inner_optimizer(self, clone: torch.nn.Module) -> torch.optim.Optimizer:
        """An optimizer like ``self.optimizer`` (type, groups, settings) over ``clone``'s
        parameters that correspond to the network's, with the kept inner state."""
        index = {id(p): i for i, p in enumerate(self.network.parameters())}
        clone_params = list(clone.parameters())
        groups = []
        for group in self.optimizer.param_groups:
            if any(id(p) not in index for p in group["params"]):
                raise ValueError("Fish: the optimizer holds parameters that are not the network's")
            settings = {k: v for k, v in group.items() if k != "params"}
            groups.append({**settings, "params": [clone_params[index[id(p)]] for p in group["params"]]})
        optimizer = type(self.optimizer)(groups, **self.optimizer.defaults)
        if self.inner_optimizer_state is not None:
            optimizer.load_state_dict(self.inner_optimizer_state)
        return optimizer

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        clone = copy.deepcopy(self.network)
        optimizer = self.inner_optimizer(clone)
        for x, y in minibatches:
            with self.autocast():
                loss = F.cross_entropy(clone(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        self.inner_optimizer_state = optimizer.state_dict()
        meta_lr = self.hparams["meta_lr"]
        with torch.no_grad():
            inner = clone.state_dict()
            for name, weight in self.network.state_dict().items():
                weight.copy_(weight + meta_lr * (inner[name] - weight))
        return {"loss": loss.item()}

    def get_extra_state(self) -> dict[str, Any]:
        return {} if self.inner_optimizer_state is None else {"inner_optimizer": self.inner_optimizer_state}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.inner_optimizer_state = state.get("inner_optimizer")
