"""SAMO-X (Ban et al., 2025): sharpness-aware multi-task optimisation, as ``OptMN-Lab/SAMO``'s
trainer (``experiments/{nyuv2,cityscapes}/trainer_samo.py``) and its ``*WithSAMO`` weight
methods compute one step.

1. Global gradient: one forward in training mode, ``mean_k L_k`` backward: ``g`` on every
   parameter.
2. For each task ``t`` a zeroth-order estimate of its gradient of the shared parameters: a seed
   ``s_t = randint(1e9)`` from a NumPy generator; ``z`` = one ``normal(0, 1)`` draw per shared
   tensor (in order) from a torch generator seeded with ``s_t``; the network in **eval mode** at
   ``theta + eps z`` and at ``(theta + eps z) - 2 eps z`` gives ``L_t^+`` and ``L_t^-``;
   ``zhat_t = (L_t^+ - L_t^-) / (2 eps) z`` (``eps = zo_eps``; heads are not perturbed).
3. Perturbations: head ``t``: ``rho g_head / (||g_head|| + 1e-12)``. Shared, per task:
   ``g_t = (1 - beta) g + beta zhat_t`` (``zo_mix="raw"``, the NYUv2 trainer: for a large network
   the raw ``zhat`` dominates) or ``(1 - beta) g + beta ||g_n|| zhat_{t,n} / ||zhat_{t,n}||`` per
   tensor ``n`` (``"layerwise"``, the Cityscapes trainer); ``eps_t = rho g_t / (||g_t|| + 1e-12)``
   with one norm over the shared parameters.
4. For each task: shared at ``theta + eps_t``, its head at ``h_t + e_t``, BatchNorm running
   statistics frozen, a forward in training mode and ``L_t``'s gradient: the shared one is kept
   (a parameter ``L_t`` does not use -- another task's attention -- counts as zero), the head's
   is that head's gradient. Weights restored exactly.
5. The solver on the ``K`` perturbed shared gradients with the ``*WithSAMO`` scale factors
   (``overwrite_grad`` multiplies every combination by ``K``): LS ``K sum_t g_t``, MGDA
   ``K^2 sum_t lambda_t g_t``, FairGrad ``K G^T w`` (SAMO's residual ``(A w)^alpha - 1/w``);
   heads keep their own perturbed gradient (weight 1); the shared gradient is clipped to norm 1;
   optimizer step.

Traps of the authors' code, and what is done here:

- ``torch.manual_seed(s_t)`` in their estimator reseeds torch's *global* generator every step
  (changing every later global draw: shuffling, flips); here ``z`` comes from a generator of
  its own with the same seed, so the values are theirs and the global stream is left alone.
- With torch >= 2, ``model.zero_grad()`` sets gradients to ``None``, and their flattening skips
  parameters without a gradient (other tasks' attention), which misaligns or breaks the task
  vectors; the intended zeros are used here (what torch < 2 gave them).
- The Cityscapes trainer has no ``optimizer.zero_grad()``: step 1's backward adds onto the
  previous step's final gradients, so the "global" gradient (and the perturbations built from
  it) includes the last update. ``accumulate_previous=True`` reproduces that (the previous
  final gradients are kept in the algorithm's state, so a resume does the same); it is the
  default on Cityscapes (with ``zo_mix="layerwise"``, that trainer's mixture) and off elsewhere
  (the NYUv2 trainer's ``zo_mix="raw"`` and ``zero_grad``); both stay overridable.
- A zero ``zhat_{t,n}`` makes their layer-wise mixture divide by zero (NaN); so does it here.
- ``adaptive`` (ASAM-style scaling) is off in every run script; it is not implemented.

Step 4's gradients are computed as ``perturbation`` says (``sage_bench.algorithms.perturbation``):
``linearized`` takes, per task, one Hessian-vector product of its loss at ``theta``; ``auto``
measures with the first task's perturbation and loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sage_bench.aggregators import get_method
from sage_bench.algorithms.multitask import GradientAggregation
from sage_bench.algorithms.perturbation import (
    PerturbedGradient,
    linearized_task_gradients,
    probe_loss_of,
)
from sage_bench.algorithms.registry import MULTI_TASK, register_algorithm
from sage_bench.algorithms.sharpness import frozen_batchnorm_statistics
from sage_bench.geometry import flatten, perturbed
from sage_bench.hparams import (
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    HParam,
    SpaceContext,
    choice,
    const,
)

SAM_EPS = 1e-12
SAMO_MAX_NORM = 1.0  # the trainers' clip_grad_norm_(shared, 1.0) after every *WithSAMO backward
ZO_MIXES = ("raw", "layerwise")
# what the *WithSAMO weight methods multiply each solver's usual direction by
WITH_SAMO = {"ls": ("K", {}), "mgda": ("K", {}), "fairgrad": (1, {"residual": "samo"})}


def sam_scale(grads: list[torch.Tensor], rho: float) -> float:
    """``rho / (||g|| + 1e-12)`` as their trainer computes it: the norm of the stacked per-tensor
    norms, taken to a Python float."""
    norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
    return (rho / (norm + SAM_EPS)).item()


class SAMO(PerturbedGradient, GradientAggregation):
    """SAMO-X for ``solver`` in ``ls``, ``mgda``, ``fairgrad``; see the module docstring.

    Hyperparameters: ``rho``, ``beta``, ``zo_eps``, ``zo_mix``, ``accumulate_previous`` and the
    solver's own. State: the NumPy generator of the zeroth-order seeds (seeded once from torch's
    global generator) and, with ``accumulate_previous``, the previous final gradients.
    """

    perturbs_weights = True

    @classmethod
    def passes_per_step(cls, num_tasks, hparams):
        """The global forward and backward (3), two forwards per task for the zeroth-order
        estimate, and a forward and backward per task at its perturbed weights."""
        return 3 + 5 * num_tasks

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        if self.solver not in WITH_SAMO:
            raise ValueError(f"SAMO is defined for the solvers {', '.join(WITH_SAMO)}, not {self.solver!r}")
        self.zo_seed = int(torch.randint(0, 2**32, (1,)).item())
        self.zo_rng = np.random.RandomState(self.zo_seed)
        self.previous: list[torch.Tensor | None] | None = None

    def own_max_norm(self) -> float | None:
        """SAMO's trainers clip the shared gradient to norm 1 whatever the solver."""
        return SAMO_MAX_NORM

    # ------------------------------------------------------------------ the SAMO pieces
    def all_parameters(self) -> list[torch.nn.Parameter]:
        return self.shared_parameters() + [p for t in self.tasks for p in self.head_parameters(t)]

    def global_gradient(self, losses: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """``d mean_k L_k`` on every parameter (``None`` where unused), plus the previous step's
        final gradients with ``accumulate_previous``."""
        params = self.all_parameters()
        grads = list(torch.autograd.grad(torch.stack(losses).mean(), params, allow_unused=True))
        if self.hparams.get("accumulate_previous", False) and self.previous is not None:
            grads = [
                g if prev is None else (prev.clone() if g is None else prev + g)
                for g, prev in zip(grads, self.previous, strict=True)
            ]
        return grads

    def zeroth_order_gradient(self, x: torch.Tensor, targets, task: str) -> list[torch.Tensor]:
        """SAMO's ``GradEstimator.forward`` for ``task``: ``zhat`` on every shared tensor."""
        eps = self.hparams["zo_eps"]
        shared = self.shared_parameters()
        seed = self.zo_rng.randint(1000000000)
        generator = torch.Generator(device=shared[0].device).manual_seed(int(seed))
        zs = [
            torch.normal(mean=0.0, std=1.0, size=p.shape, generator=generator, device=p.device, dtype=p.dtype)
            for p in shared
        ]
        originals = [p.detach().clone() for p in shared]
        training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                for p, z in zip(shared, zs, strict=True):
                    p.copy_(p + 1 * z * eps)
                loss_plus = self.task_losses(x, targets)[self.tasks.index(task)]
                for p, z in zip(shared, zs, strict=True):
                    p.copy_(p + -2 * z * eps)
                loss_minus = self.task_losses(x, targets)[self.tasks.index(task)]
        finally:
            with torch.no_grad():
                for p, original in zip(shared, originals, strict=True):
                    p.copy_(original)
            self.network.train(training)
        projected = ((loss_plus - loss_minus) / (2 * eps)).to(shared[0].dtype)
        return [projected * z for z in zs]

    def mixed_direction(
        self, mean_shared: list[torch.Tensor | None], zhat: list[torch.Tensor]
    ) -> list[torch.Tensor | None]:
        """SAMO's ``g_t``: the global gradient mixed with a task's zeroth-order estimate."""
        beta = self.hparams["beta"]
        out: list[torch.Tensor | None] = []
        for g, z in zip(mean_shared, zhat, strict=True):
            if g is None:
                out.append(None)
            elif self.hparams["zo_mix"] == "raw":
                out.append((1 - beta) * g.clone() + beta * z)
            else:
                n1, n2 = g.norm(p=2).item(), z.norm(p=2).item()
                out.append((1 - beta) * g.clone() + beta * n1 * (z / n2))
        return out

    def samo_direction(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """The shared gradient a ``*WithSAMO`` weight method writes, before clipping."""
        factor, options = WITH_SAMO[self.solver]
        direction, _ = self.solve(grads, losses, **options)
        return direction * (len(self.tasks) if factor == "K" else factor)

    def per_task_perturbed_gradients(
        self, x, targets, shared_eps: list[list[torch.Tensor]], head_eps: dict[str, list[torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]], torch.Tensor]:
        """For each task: its gradients at ``shared + shared_eps[k]``, ``head + head_eps[task]``
        (BatchNorm statistics frozen). Returns the ``K x P`` shared matrix, the head gradients
        and the perturbed losses."""
        shared = self.shared_parameters()
        rows = torch.empty(len(self.tasks), sum(p.numel() for p in shared), dtype=shared[0].dtype, device=shared[0].device)
        heads, losses = {}, []
        if self.decide_task_perturbation(x, targets, shared_eps[0], head_eps, self.tasks[:1]) == "linearized":
            for k, task in enumerate(self.tasks):
                head = {task: self.head_parameters(task)}
                grads, heads_k, loss = linearized_task_gradients(
                    self.network, shared, head, shared_eps[k], head_eps, lambda k=k: self.task_losses(x, targets)[k],
                    autocast=self.autocast,
                )
                rows[k] = flatten(grads[0], like=shared)
                heads[task] = heads_k[task]
                losses.append(loss[0])
            return rows, heads, torch.stack(losses)
        with frozen_batchnorm_statistics(self.network):
            for k, task in enumerate(self.tasks):
                head = self.head_parameters(task)
                with perturbed(shared + head, shared_eps[k] + head_eps[task]):
                    loss = self.task_losses(x, targets)[k]
                    grads = torch.autograd.grad(loss, shared + head, allow_unused=True)
                rows[k] = flatten(grads[: len(shared)], like=shared)
                heads[task] = [torch.zeros_like(p) if g is None else g for p, g in zip(head, grads[len(shared) :], strict=True)]
                losses.append(loss.detach())
        return rows, heads, torch.stack(losses)

    def decide_task_perturbation(self, x, targets, shared_eps, head_eps, tasks) -> str:
        """``difference`` or ``linearized`` for this step (``perturbation``); ``auto`` measures
        the change of the mean loss of ``tasks`` under ``shared_eps`` and their heads' ``head_eps``."""

        def probe(network, dtype):
            losses = self.loss_fn(network(x.to(dtype)), targets)
            return torch.stack([losses[t].to(dtype) for t in tasks]).mean()

        params = self.shared_parameters() + [p for t in tasks for p in self.head_parameters(t)]
        eps = list(shared_eps) + [e for t in tasks for e in head_eps[t]]
        return self.decide_perturbation(params, eps, probe_loss_of(probe)).method

    def remember(self) -> None:
        """Keep the final gradients for the next step's global gradient (``accumulate_previous``;
        a row without it, SAGE-X, never accumulates)."""
        if self.hparams.get("accumulate_previous", False):
            self.previous = [None if p.grad is None else p.grad.detach().clone() for p in self.all_parameters()]

    # ------------------------------------------------------------------ one step
    def update(self, x, targets):
        h = self.hparams
        shared = self.shared_parameters()
        n_shared = len(shared)
        losses = self.task_losses(x, targets)
        mean = self.global_gradient(losses)
        zhat = {t: self.zeroth_order_gradient(x, targets, t) for t in self.tasks}

        shared_eps, head_eps, start = [], {}, n_shared
        for task in self.tasks:
            head = self.head_parameters(task)
            head_grads = mean[start : start + len(head)]
            start += len(head)
            present = [g for g in head_grads if g is not None]
            scale = sam_scale(present, h["rho"])
            head_eps[task] = [torch.zeros_like(p) if g is None else g.clone() * scale for p, g in zip(head, head_grads, strict=True)]
            direction = self.mixed_direction(mean[:n_shared], zhat[task])
            scale = sam_scale([g for g in direction if g is not None], h["rho"])
            shared_eps.append([torch.zeros_like(p) if g is None else g * scale for p, g in zip(shared, direction, strict=True)])

        rows, head_grads, perturbed_losses = self.per_task_perturbed_gradients(x, targets, shared_eps, head_eps)
        clean = torch.stack([loss.detach() for loss in losses])
        self.set_gradients(self.samo_direction(rows, clean), head_grads)
        self.clip_shared(self.max_norm)
        self.remember()
        self.step()
        return {
            **self.loss_stats(clean), **self.loss_stats(perturbed_losses, prefix="perturbed_"), **self.probe_stats()
        }  # fmt: skip

    def get_extra_state(self) -> dict[str, Any]:
        # the NumPy state as tensors and Python numbers: checkpoints load with weights_only=True
        name, keys, pos, has_gauss, cached = self.zo_rng.get_state()
        state = super().get_extra_state()
        state["zo_rng"] = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
        state["previous"] = self.previous
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        name, keys, pos, has_gauss, cached = state["zo_rng"]
        self.zo_rng.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        self.previous = state["previous"]


def cityscapes_trainer(context: SpaceContext | None) -> bool:
    """Whether SAMO's Cityscapes trainer (not its NYU-v2 one) sets the defaults: on Cityscapes."""
    return context is not None and context.dataset == "Cityscapes"


def zeroth_order_space(context: SpaceContext | None = None) -> dict[str, HParam]:
    """SAMO's zeroth-order mixture (shared with SAGE-SAMO-X). ``zo_mix`` and
    ``accumulate_previous`` follow the data set's trainer: Cityscapes' mixes per layer and never
    zeroes the gradients before its first backward; NYU-v2's (and the embedded sets') mixes the raw
    estimate and zeroes them."""
    city = cityscapes_trainer(context)
    mix = "layerwise" if city else "raw"
    return {
        "beta": HParam(
            0.5, choice([0.1, 0.3, 0.5, 0.7, 0.9]), "share of the zeroth-order task gradient in the ascent direction",
            range=UNIT_INTERVAL,
        ),  # fmt: skip
        "zo_eps": HParam(0.01, const(0.01), "step of the zeroth-order (two-point) estimate", range=POSITIVE),
        "zo_mix": HParam(
            mix, const(mix), "raw: the NYU-v2 trainer's mixture; layerwise: the Cityscapes trainer's (default there)", ZO_MIXES
        ),
        "accumulate_previous": HParam(
            city, const(city),
            "add the previous step's final gradients to the global gradient: SAMO's Cityscapes trainer never zeroes "
            "the gradients before its first backward (default there; off elsewhere, as its NYU-v2 trainer)",
        ),  # fmt: skip
    }


def samo_space(solver: str, context: SpaceContext | None = None) -> dict[str, HParam]:
    """SAMO-X's hyperparameters: SAMO's run scripts use rho 0.001, beta 0.5, zo_eps 0.01; the
    mixture and the gradient accumulation of the data set's trainer (``zeroth_order_space``)."""
    return {
        "rho": HParam(0.001, choice([0.0005, 0.001, 0.003, 0.01]), "SAM radius of the joint perturbation", range=NON_NEGATIVE),
        **zeroth_order_space(context),
        **get_method(solver).space(context.dataset if context is not None else None),
    }


def _space(solver: str):
    return lambda context: samo_space(solver, context)


@register_algorithm("SAMO-LS", space=_space("ls"), task=MULTI_TASK)
class SAMOLS(SAMO):
    solver = "ls"


@register_algorithm("SAMO-MGDA", space=_space("mgda"), task=MULTI_TASK)
class SAMOMGDA(SAMO):
    solver = "mgda"


@register_algorithm("SAMO-FairGrad", space=_space("fairgrad"), task=MULTI_TASK)
class SAMOFairGrad(SAMO):
    solver = "fairgrad"
