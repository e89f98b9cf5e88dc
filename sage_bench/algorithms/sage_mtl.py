"""SAGE-X and SAGE-SAMO-X: SAGE (the paper's Algorithm 1) around a multi-task solver X.

The paper publishes no multi-task code. What it states (appendix G, Sec. 5): SAGE replaces the
optimizer's ascent and descent steps of LS, MGDA, FairGrad and SAMO-X "without task-routing or
solver-specific design"; tasks play the role of domains; per-task gradients come from the first
pass over the batch; rho 1e-4 and gamma 1e-5 on both data sets; the protocol of SAMO and FAMO.
Everything else is a choice, made here as one code path with a switch for each:

1. Clean pass: one forward, ``K`` backward passes: each task's loss and gradient (shared
   parameters and its own head). ``S`` = mean pairwise cosine of the tasks' gradients
   (``sage_bench.geometry.mean_pairwise_cosine``) over the shared parameters
   (``agreement_params="shared"``; ``"all"`` adds the heads, which are disjoint across tasks and
   pull ``S`` towards 0); ``beta = gamma (1 - S)``.
2. Ascent direction (``ascent``):

   - ``"mean"`` (SAGE-X's default): one direction for every task, the mean gradient
     ``g = mean_k g_k`` -- "no task routing";
   - ``"samo"`` (SAGE-SAMO-X's default): SAMO's per-task directions
     ``g_t = (1 - beta_samo) g + beta_samo zhat_t`` (``sage_bench.algorithms.samo``), one
     perturbation per task;
   - ``"samo_mean"``: one perturbation from the mean of SAMO's per-task directions.

   Heads: each head's perturbation comes from its part of ``g`` (its task's gradient / K).
3. Perturbation: SAGE's spectral one (``sage_bench.geometry.spectral_perturbation``):
   ``rho ||W||_F polar(G_W)`` for every tensor with two or more dimensions (conv kernels as
   ``(out, -1)``), ``rho g / ||g||`` per vector; on the shared parameters and the heads.
4. Perturbed pass, BatchNorm statistics frozen (as SAMO): with one perturbation one forward and
   ``K`` backward passes; with per-task perturbations one forward per task (as SAMO). Each
   task's perturbed gradient of the shared parameters, and of its own head; by the difference
   or the linearized product as ``perturbation`` says (``sage_bench.algorithms.perturbation``:
   with one perturbation one forward with tangents and ``K`` backward passes).
5. Descent (``descent``):

   - ``"samo"`` (default for both): the solver with the ``*WithSAMO`` scale factors (LS
     ``K sum``, MGDA ``K^2 sum lambda g``, FairGrad ``K G^T w`` with SAMO's residual), heads
     with their own perturbed gradient, the shared gradient clipped to norm 1 -- what a SAGE
     built into SAMO's trainer (the code base of SAGE-SAMO-X, whose protocol the paper follows)
     does;
   - ``"base"``: X's own descent (LS ``sum``, MGDA ``K sum lambda g`` with heads ``K lambda``,
     FairGrad ``K G^T w`` with FairGrad's residual; clipping only for FairGrad). With
     ``rho = 0`` and ``gamma = 0`` this is exactly X.

6. Noise: ``beta xi``, ``xi ~ N(0, I)`` from the algorithm's own seeded generator, added to the
   final gradient of every parameter (``noise_params="all"``; ``"shared"``: the shared ones
   only), after clipping (``noise_after_clip=True``; before, the clip would rescale the noise
   with the gradient). With Adam and the paper's gamma = 1e-5 the noise is small next to a
   clipped gradient either way; after the clip it is exactly ``beta xi``.

With ``rho = 0`` and ``gamma = 0``, SAGE-X with ``descent="base"`` equals X, and SAGE-X with the
default descent equals SAMO-X with ``rho = 0``.
"""

from __future__ import annotations

from typing import Any

import torch

from sage_bench.aggregators import get_method
from sage_bench.algorithms.multitask import NoiseSource
from sage_bench.algorithms.perturbation import linearized_task_gradients
from sage_bench.algorithms.registry import MULTI_TASK, register_algorithm
from sage_bench.algorithms.samo import SAMO, zeroth_order_space
from sage_bench.algorithms.sharpness import frozen_batchnorm_statistics
from sage_bench.geometry import (
    add_gaussian_noise_,
    flatten,
    mean_pairwise_cosine,
    noise_scale,
    perturbed,
    spectral_perturbation,
    unflatten,
)
from sage_bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, HParam, SpaceContext, const, log_uniform

ASCENTS = ("mean", "samo", "samo_mean")
SAMO_ASCENTS = ("samo", "samo_mean")  # SAGE-SAMO-X's; SAGE-X's ascent is always "mean"
DESCENTS = ("samo", "base")


class SAGEMultiTask(SAMO):
    """SAGE around the solver ``solver``; the module docstring lists the steps and switches."""

    default_ascent = "mean"
    polar_dtype: torch.dtype | None = None  # precision of the Newton-Schulz iteration (precision.polar)

    @classmethod
    def passes_per_step(cls, num_tasks, hparams):
        """Clean and perturbed passes (one forward, a backward per task, each); with SAMO's
        ascent, its two zeroth-order forwards per task and one perturbed pass per task."""
        if hparams.get("ascent", cls.default_ascent) == "mean":
            return 2 + 4 * num_tasks
        return 1 + 7 * num_tasks

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        for name, value, valid in (
            ("ascent", self.ascent, ASCENTS), ("descent", self.hparams["descent"], DESCENTS),
            ("agreement_params", self.hparams["agreement_params"], ("shared", "all")),
        ):  # fmt: skip
            if value not in valid:
                raise ValueError(f"hparams.{name}={value!r}; valid choices: {', '.join(valid)}")
        self.noise = NoiseSource()

    @property
    def ascent(self) -> str:
        """``hparams["ascent"]``; SAGE-X has no such hyperparameter: its ascent is ``"mean"``."""
        return self.hparams.get("ascent", self.default_ascent)

    def spectral(self, params, grads) -> list[torch.Tensor]:
        h = self.hparams
        return spectral_perturbation(
            params, grads, h["rho"], orthogonalize=h["orthogonalize"], layer_scale=h["layer_scale"],
            polar=h["polar"], ns_steps=h["ns_steps"], polar_dtype=self.polar_dtype,
        )  # fmt: skip

    def ascent_directions(self, x, targets, mean_shared: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """One shared direction (``mean``, ``samo_mean``) or one per task (``samo``)."""
        if self.ascent == "mean":
            return [mean_shared]
        zhat = {t: self.zeroth_order_gradient(x, targets, t) for t in self.tasks}
        per_task = [self.mixed_direction(mean_shared, zhat[t]) for t in self.tasks]
        if self.ascent == "samo":
            return per_task
        return [torch.stack(list(tensors)).mean(0) for tensors in zip(*per_task, strict=True)]

    def shared_perturbed_gradients(self, x, targets, shared_eps: list[torch.Tensor], head_eps) -> tuple:
        """One perturbation for all tasks: one forward at ``theta + e``, ``K`` backward passes."""
        shared = self.shared_parameters()
        if self.decide_task_perturbation(x, targets, shared_eps, head_eps, self.tasks) == "linearized":
            own = {t: self.head_parameters(t) for t in self.tasks}
            grads, head_grads, losses = linearized_task_gradients(
                self.network, shared, own, shared_eps, head_eps, lambda: torch.stack(self.task_losses(x, targets)),
                autocast=self.autocast,
            )
            return torch.stack([flatten(g, like=shared) for g in grads]), head_grads, losses
        heads = [p for t in self.tasks for p in self.head_parameters(t)]
        with frozen_batchnorm_statistics(self.network), perturbed(
            shared + heads, shared_eps + [e for t in self.tasks for e in head_eps[t]]
        ):
            losses = self.task_losses(x, targets)
            grads = self.task_gradients(losses)
        return grads.shared, grads.heads, grads.losses

    def update(self, x, targets):
        h = self.hparams
        shared = self.shared_parameters()
        n_shared = len(shared)

        # 1. clean pass: per-task gradients, agreement, noise scale
        losses = self.task_losses(x, targets)
        clean = self.task_gradients(losses, keep_tensors=True)
        per_task = clean.per_task_shared
        if h["agreement_params"] == "all":
            per_task = [rows + clean.heads[t] for rows, t in zip(per_task, self.tasks, strict=True)]
        agreement = mean_pairwise_cosine(per_task).item()
        beta = noise_scale(agreement, h["gamma"]) if h["noise"] else 0.0
        # the mean gradient: shared rows averaged, each head's own gradient / K
        mean = unflatten(clean.shared.mean(0), shared) + [g / len(self.tasks) for t in self.tasks for g in clean.heads[t]]
        if h.get("accumulate_previous", False) and self.previous is not None:
            mean = [g if prev is None else g + prev for g, prev in zip(mean, self.previous, strict=True)]

        # 2-3. ascent directions and spectral perturbations
        head_eps, start = {}, n_shared
        for task in self.tasks:
            head = self.head_parameters(task)
            head_eps[task] = self.spectral(head, mean[start : start + len(head)])
            start += len(head)
        directions = self.ascent_directions(x, targets, mean[:n_shared])
        shared_eps = [self.spectral(shared, d) for d in directions]

        # 4. perturbed gradients
        if len(shared_eps) == 1:
            rows, head_grads, perturbed_losses = self.shared_perturbed_gradients(x, targets, shared_eps[0], head_eps)
        else:
            rows, head_grads, perturbed_losses = self.per_task_perturbed_gradients(x, targets, shared_eps, head_eps)
        del clean

        # 5. descent, 6. noise
        if h["descent"] == "samo":
            direction, weights, max_norm = self.samo_direction(rows, perturbed_losses), None, self.max_norm
        else:
            direction, weights = self.solve(rows, perturbed_losses)
            max_norm = self.method.fixed_clip()  # X's own clip, as its row (sage_bench.aggregators)
        self.set_gradients(direction, head_grads, weights)
        if not h["noise_after_clip"]:
            self.add_noise(beta)
        self.clip_shared(max_norm)
        if h["noise_after_clip"]:
            self.add_noise(beta)
        self.remember()
        self.step()
        return {
            **self.loss_stats(torch.stack([loss.detach() for loss in losses])),
            **self.loss_stats(perturbed_losses, prefix="perturbed_"),
            "S": agreement,
            "beta": beta,
            **self.probe_stats(),
        }

    def add_noise(self, beta: float) -> None:
        """``grad += beta xi`` on the parameters ``noise_params`` names (nothing when beta = 0)."""
        params = self.shared_parameters() if self.hparams["noise_params"] == "shared" else self.all_parameters()
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            add_gaussian_noise_(grads, beta, self.noise.generator(grads[0].device))

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "noise": self.noise.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.noise.load_state_dict(state["noise"])


def sage_space(solver: str, ascent: str = "mean", context: SpaceContext | None = None) -> dict[str, HParam]:
    """SAGE-X's (``ascent="mean"``) or SAGE-SAMO-X's (``ascent="samo"``) hyperparameters.
    rho 1e-4 and gamma 1e-5 are the paper's for both multi-task data sets. SAGE-X descends as X
    (``descent="base"``) and has no zeroth-order knobs (it never reads them); SAGE-SAMO-X
    descends as SAMO-X and has SAMO's (with the data set's trainer defaults)."""
    samo = ascent != "mean"
    descent = "samo" if samo else "base"
    space = {
        "rho": HParam(1e-4, log_uniform(-5, -3), "spectral perturbation radius, relative to ||W||_F", range=NON_NEGATIVE),
        "gamma": HParam(1e-5, log_uniform(-6, -4), "largest noise scale (at S = -1 it is 2 gamma)", range=NON_NEGATIVE),
        "orthogonalize": HParam(True, const(True), "polar factor of each weight gradient (off: G/||G||_F)"),
        "layer_scale": HParam(True, const(True), "scale each perturbation by ||W||_F"),
        "noise": HParam(True, const(True), "agreement-scaled gradient noise at the descent step"),
        "polar": HParam("quintic", const("quintic"), "how the polar factor is computed", ("quintic", "cubic", "svd")),
        "ns_steps": HParam(5, const(5), "Newton-Schulz iterations", range=AT_LEAST_ONE),
        "agreement_params": HParam("shared", const("shared"), "parameters S is computed over", ("shared", "all")),
        "descent": HParam(
            descent, const(descent), "base: X's own descent (SAGE-X's default); samo: X with SAMO's scale factors and clip "
            "(SAGE-SAMO-X's default)", DESCENTS,
        ),  # fmt: skip
        "noise_after_clip": HParam(True, const(True), "add the noise after clipping the shared gradient"),
        "noise_params": HParam("all", const("all"), "parameters the noise is added to", ("all", "shared")),
    }
    if samo:
        space["ascent"] = HParam(
            ascent, const(ascent), "SAMO's per-task perturbations, or one from their mean", SAMO_ASCENTS
        )
        space.update(zeroth_order_space(context))
    return {**space, **get_method(solver).space(context.dataset if context is not None else None)}


def _row(name: str, row: str, solver: str, ascent: str) -> type[SAGEMultiTask]:
    cls = type(name, (SAGEMultiTask,), {
        "solver": solver, "default_ascent": ascent, "__doc__": f"SAGE around {solver} (ascent {ascent!r} by default).",
        "__module__": __name__,
    })  # fmt: skip
    return register_algorithm(row, space=lambda context: sage_space(solver, ascent, context), task=MULTI_TASK)(cls)


SAGELS = _row("SAGELS", "SAGE-LS", "ls", "mean")
SAGEMGDA = _row("SAGEMGDA", "SAGE-MGDA", "mgda", "mean")
SAGEFairGrad = _row("SAGEFairGrad", "SAGE-FairGrad", "fairgrad", "mean")
SAGESAMOLS = _row("SAGESAMOLS", "SAGE-SAMO-LS", "ls", "samo")
SAGESAMOMGDA = _row("SAGESAMOMGDA", "SAGE-SAMO-MGDA", "mgda", "samo")
SAGESAMOFairGrad = _row("SAGESAMOFairGrad", "SAGE-SAMO-FairGrad", "fairgrad", "samo")
