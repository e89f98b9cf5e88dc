"""F-MTL (Phan et al., ICCV 2025): SAM per task around the lineage's solvers (the ``FMTL`` class
says how a step is computed).

The plain gradient-aggregating rows of Table 2 (LS, MGDA, FairGrad, PCGrad, GradDrop, IMTL-G,
CAGrad, MoCo, Nash-MTL) are declared with their aggregators (``sage_bench.aggregators``) and
registered as ``GradientAggregation`` rows by ``sage_bench.algorithms.multitask``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from sage_bench.aggregators import aggregate
from sage_bench.aggregators.gram import gram_matrix
from sage_bench.aggregators.mgda import min_norm_weights
from sage_bench.algorithms.multitask import (
    MultiTaskAlgorithm,
    python_random_state,
    set_python_random_state,
)
from sage_bench.algorithms.perturbation import PerturbedGradient
from sage_bench.algorithms.registry import MULTI_TASK, register_algorithm
from sage_bench.algorithms.samo import SAMO, sam_scale
from sage_bench.hparams import NON_NEGATIVE, POSITIVE, HParam, SpaceContext, const

# --------------------------------------------------------------------------------------------
# F-MTL


FMTL_SOLVERS = ("mgda", "pcgrad", "cagrad", "imtl")
FMTL_COMBINES = ("split", "sam")


def fmtl_space(context: SpaceContext) -> dict[str, HParam]:
    """F-MTL's hyperparameters. The repository's run scripts do not say which of its variants
    Table 2's row is; the defaults are the runs its result-collection scripts read
    (``{nyuv2,city2scape}/get_result.py``): NYUv2 and other data sets: PCGrad, split, rho 0.05,
    ASAM scaling (the trainer's default); Cityscapes: MGDA, split, rho 0.0025, plain SAM, no
    normalisation (the Cityscapes trainer comments it out). Only ``rho`` is searched."""
    city = context.dataset == "Cityscapes"
    solver, rho = ("mgda", 0.0025) if city else ("pcgrad", 0.05)
    return {
        "solver": HParam(solver, const(solver), "the multi-task solver on the (SAM) task gradients", FMTL_SOLVERS),
        "combine": HParam(
            "split", const("split"),
            "split: the solver on the clean gradients and on SAM minus clean, summed; sam: the solver on the SAM gradients",
            FMTL_COMBINES,
        ),
        "rho": HParam(rho, lambda r: float(r.choice([0.0025, 0.01, 0.05, 0.5, 2.0])), "SAM radius of each task's perturbation", range=POSITIVE),
        "adaptive": HParam(not city, const(not city), "ASAM scaling: perturbation theta^2 g / || |theta| g ||"),
        "normalize": HParam(not city, const(not city), "split MGDA: each task's clean and SAM-minus-clean gradient at unit norm"),
        "c": HParam(0.4, const(0.4), "CAGrad's c (solver cagrad)", range=NON_NEGATIVE),
    }  # fmt: skip


@register_algorithm("F-MTL", space=fmtl_space, task=MULTI_TASK)
class FMTL(PerturbedGradient, MultiTaskAlgorithm):
    """F-MTL (Phan et al., ICCV 2025), as ``train.py`` of VietHoang1512/FS-MTL (1371ec5,
    ``nyuv2/`` and ``city2scape/``) computes a step:

    1. One forward (BatchNorm statistics updated), each task's gradient ``g_t`` of the shared
       parameters and of its head (one backward per task).
    2. Per task, SAM perturbations from its own gradients: the shared parameters by
       ``rho s g_t / || s' g_t ||`` and its head by the same rule on the head gradient (each with
       its own norm), where ``s = theta^2`` and ``s' = |theta|`` with ``adaptive`` (ASAM without
       ASAM's ``eta``), 1 otherwise.
    3. Per task, at the perturbed weights (BatchNorm statistics frozen, as SAMO's step 4, whose
       code this shares): its SAM gradient of the shared parameters and of its own head.
    4. ``combine="sam"`` (the code's ``a-X``): the solver on the SAM gradients; ``"split"``
       (``X``): the solver on the clean ``g_t`` plus the solver on ``h_t = g^SAM_t - g_t``.
       Solvers as in that code: MGDA ``K sum lambda_t v_t`` with its torch copy of Sener and
       Koltun's solver (stopping at ``sum change^2 < 1e-5``), the split variant with every
       ``g_t`` and ``h_t`` at unit norm when ``normalize``; PCGrad the sum of projections
       (``random.shuffle`` order, once for ``g`` then once for ``h``); CAGrad
       ``(g_0 + cc g_w / ||g_w||) / (1 + c^2)`` *without* the factor ``K`` of the lineage's copy;
       IMTL-G ``sum alpha_t v_t``.
    5. Heads: their own SAM gradient (weight 1). No clipping. Optimizer step.

    Where the code meets torch >= 2's ``zero_grad()`` (gradients ``None`` for other tasks'
    attention modules, which its lists then skip, misaligning them), such gradients are zeros,
    what torch < 2 gave. Its solver's ``.cuda()`` calls are not needed here.
    """

    perturbs_weights = True
    # the per-task passes at perturbed weights are SAMO's step 4 exactly, with its choice of
    # how they are computed (``perturbation``: difference, linearized, auto)
    per_task_perturbed_gradients = SAMO.per_task_perturbed_gradients
    decide_task_perturbation = SAMO.decide_task_perturbation

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        # PCGrad's projection orders (the code uses Python's global random), seeded by the job
        self.orders_rng = random.Random(int(torch.randint(0, 2**62, (1,)).item()))

    def sam_perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """FS-MTL's ``rho s g / || s' g ||`` over ``params`` (one norm for the list)."""
        if self.hparams["adaptive"]:
            scale = sam_scale([p.detach().abs() * g for p, g in zip(params, grads, strict=True)], self.hparams["rho"])
            return [p.detach().pow(2) * g * scale for p, g in zip(params, grads, strict=True)]
        scale = sam_scale(grads, self.hparams["rho"])
        return [g * scale for g in grads]

    def combine_rows(self, rows: torch.Tensor, losses: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The solver's shared direction for the ``K x P`` matrix ``rows``, scaled as FS-MTL."""
        solver, k = self.hparams["solver"], rows.shape[0]
        if solver == "mgda":
            if normalize:
                rows = rows / rows.norm(dim=1, keepdim=True)
            weights = min_norm_weights(gram_matrix(rows).numpy(), stop="squared_l2")
            return torch.as_tensor(weights, dtype=rows.dtype, device=rows.device) @ rows * k
        if solver == "pcgrad":
            return aggregate("pcgrad", rows, losses, generator=self.orders_rng)[0]
        if solver == "cagrad":
            return aggregate("cagrad", rows, losses, c=self.hparams["c"])[0] / k
        return aggregate("imtl", rows, losses)[0]

    def update(self, x, targets):
        shared = self.shared_parameters()
        losses = self.task_losses(x, targets)
        clean = self.task_gradients(losses, keep_tensors=True)
        shared_eps = [self.sam_perturbation(shared, grads) for grads in clean.per_task_shared]
        head_eps = {t: self.sam_perturbation(self.head_parameters(t), clean.heads[t]) for t in self.tasks}
        sam_rows, head_grads, perturbed_losses = self.per_task_perturbed_gradients(x, targets, shared_eps, head_eps)
        if self.hparams["combine"] == "sam":
            direction = self.combine_rows(sam_rows, clean.losses)
        else:
            normalize = self.hparams["normalize"]
            direction = self.combine_rows(clean.shared, clean.losses, normalize)
            direction = direction + self.combine_rows(sam_rows - clean.shared, clean.losses, normalize)
        self.set_gradients(direction, head_grads)
        self.step()
        return {**self.loss_stats(clean.losses), **self.loss_stats(perturbed_losses, prefix="perturbed_")}

    def get_extra_state(self) -> dict[str, Any]:
        return {"orders_rng": python_random_state(self.orders_rng)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        set_python_random_state(self.orders_rng, state["orders_rng"])
