"""SAGE: Spectral-Aware Gradient-Aligned Exploration (the paper's Algorithm 1).

One step:

1. Per-domain gradients ``g_k`` at ``w`` (``sage_bench.geometry.domain_gradients``: one
   forward+backward per domain over its own examples, which together cost one pass over the
   batch); the clean loss and the total gradient ``g = sum_k (n_k/n) g_k`` come from the same
   passes.
2. Agreement ``S`` = mean pairwise cosine of the flattened ``g_k``; noise scale
   ``beta = gamma (1 - S)``. With a single training domain there is no pair: ``S = 1`` and no
   noise is added.
3. Spectral perturbation from ``g``: ``e_W = rho ||W||_F polar(G)`` for every parameter with two
   or more dimensions (conv kernels flattened to ``(out, -1)``), ``e = rho g / ||g||`` for
   vectors (``sage_bench.geometry.spectral_perturbation``).
4. Gradient ``g_adv`` of the mean cross-entropy at ``w + e``; weights restored to ``w``.
5. ``g_final = g_adv + beta * xi`` with ``xi ~ N(0, I)`` from the algorithm's own seeded
   generator (noise is added to the gradient, as in Algorithm 1 line 29); base optimizer step.

Besides the losses, ``S`` and ``beta``, ``update`` returns what the perturbation and the noise
did: ``grad_change = ||g_adv - g|| / ||g||``, ``noise_ratio = ||beta xi|| / ||g_adv||`` and, on
measured steps, ``perturbation_fidelity`` (see ``sage_bench.algorithms.sharpness``). The
Newton-Schulz iteration runs in ``polar_dtype`` (``None``: float32; the runner sets it from
``precision.polar``); the perturbation is added to the weights in their own precision.

Hyperparameters: ``rho``, ``gamma``; ablation switches ``orthogonalize`` (off: ``G/||G||_F``),
``layer_scale`` (off: drop ``||W||_F``), ``noise`` (off: ``beta = 0``); ``polar`` (``quintic``:
Muon's Newton-Schulz, what Algorithm 1 names; ``cubic``: Eq. 7; ``svd``: exact), ``ns_steps``;
``domain_grads`` (``chunks``, ``concat`` or ``vmap``: how per-domain gradients are computed;
same numbers except with BatchNorm in training mode).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sage_bench.algorithms.base import Minibatches, concat
from sage_bench.algorithms.registry import register_algorithm
from sage_bench.algorithms.sharpness import TwoPassAlgorithm, as_floats
from sage_bench.geometry import (
    add_gaussian_noise_,
    domain_gradients,
    global_norm,
    mean_pairwise_cosine,
    noise_scale,
    spectral_perturbation,
)
from sage_bench.geometry.domain_grads import DOMAIN_GRAD_METHODS
from sage_bench.geometry.polar import POLAR_METHODS
from sage_bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, HParam, SpaceContext, const, log_uniform


def sage_space(context: SpaceContext) -> dict[str, HParam]:
    """SAGE's hyperparameters: the paper's DomainBed values for real images (appendix E); for
    the small embedded data sets, values that train them well."""
    if context.family == "large":
        rho = HParam(1e-6, log_uniform(-7, -5), "spectral perturbation radius, relative to ||W||_F", range=NON_NEGATIVE)
        gamma = HParam(1e-6, log_uniform(-7, -5), "largest noise scale (at S = -1 it is 2 gamma)", range=NON_NEGATIVE)
    else:
        rho = HParam(1e-3, log_uniform(-4, -2), "spectral perturbation radius, relative to ||W||_F", range=NON_NEGATIVE)
        gamma = HParam(1e-3, log_uniform(-4, -2), "largest noise scale (at S = -1 it is 2 gamma)", range=NON_NEGATIVE)
    return {
        "rho": rho,
        "gamma": gamma,
        "orthogonalize": HParam(True, const(True), "polar factor of each weight gradient (off: G/||G||_F)"),
        "layer_scale": HParam(True, const(True), "scale each perturbation by ||W||_F"),
        "noise": HParam(True, const(True), "agreement-scaled gradient noise at the descent step"),
        "polar": HParam("quintic", const("quintic"), "how the polar factor is computed", POLAR_METHODS),
        "ns_steps": HParam(5, const(5), "Newton-Schulz iterations", range=AT_LEAST_ONE),
        "domain_grads": HParam(
            "chunks", const("chunks"), "how per-domain gradients are computed", DOMAIN_GRAD_METHODS
        ),
    }


@register_algorithm("SAGE", space=sage_space)
class SAGE(TwoPassAlgorithm):
    """Spectral perturbation for flatness, agreement-scaled gradient noise for alignment.

    BatchNorm running statistics are frozen during the perturbed pass (as GSAM's and SAGM's
    authors do); parameters the loss does not depend on are left alone.
    """

    freeze_bn_in_perturbed_pass = True
    polar_dtype: torch.dtype | None = None  # precision of the Newton-Schulz iteration

    def __init__(self, network, optimizer, hparams: Mapping[str, Any]):
        super().__init__(network, optimizer, hparams)
        # drawn from the global generator, so the noise is fixed by the job's seed
        self.noise_seed = int(torch.randint(0, 2**62, (1,)).item())
        self._generator: torch.Generator | None = None

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The seeded generator the descent noise is drawn from (on the parameters' device)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.noise_seed)
        return self._generator

    def get_extra_state(self) -> dict[str, Any]:
        state = {"noise_seed": self.noise_seed}
        if self._generator is not None:
            state["generator_state"] = self._generator.get_state()
            state["generator_device"] = str(self._generator.device)
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.noise_seed = int(state["noise_seed"])
        self._generator = None
        if "generator_state" in state:
            generator = self.noise_generator(torch.device(state["generator_device"]))
            generator.set_state(state["generator_state"])

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        h = self.hparams
        params = self.trainable()
        grads = domain_gradients(
            self.network, params, minibatches, method=h["domain_grads"], autocast=self.autocast
        )
        agreement = mean_pairwise_cosine(grads.grads)
        beta = noise_scale(agreement.item(), h["gamma"]) if h["noise"] else 0.0
        del grads.grads  # only the total is needed from here on
        params, total = self.used(params, [g if u else None for g, u in zip(grads.total, grads.used, strict=True)])

        e = spectral_perturbation(
            params,
            total,
            h["rho"],
            orthogonalize=h["orthogonalize"],
            layer_scale=h["layer_scale"],
            polar=h["polar"],
            ns_steps=h["ns_steps"],
            polar_dtype=self.polar_dtype,
        )
        x, y = concat(minibatches)
        loss_adv, grads_adv = self.perturbed_grad(x, y, params, e)
        stats = self.perturbation_stats(params, e, total, grads_adv)
        adv_norm = global_norm(grads_adv)
        noise_norm = torch.zeros((), device=adv_norm.device)
        if beta != 0.0:
            noise_norm = add_gaussian_noise_(grads_adv, beta, self.noise_generator(grads_adv[0].device))
        stats["noise_ratio"] = torch.where(adv_norm > 0, noise_norm / adv_norm, 0.0)
        self.descend(params, grads_adv)
        return as_floats(
            {"loss": grads.loss, "perturbed_loss": loss_adv, "S": agreement, "beta": beta, **stats}
        )
