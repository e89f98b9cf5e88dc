"""Loss-weighting methods: per-task loss weights that change during training.

Each is a small stateful object with the authors' ``get_weighted_loss`` as
``weighted_loss(losses) -> (loss, weights)``: ``loss`` is the authors' scalar objective, whose
gradient with respect to the network is ``sum_k weights_k grad L_k`` (``weights`` is detached,
shape ``(K,)``, and is also each head's coefficient). Call it once per step; it advances the
method's state (DWA's loss history, RLW's draw). After the network's optimizer step call
``update(new_losses)``: UW takes an Adam step on its log-variances, FAMO (``needs_new_losses``)
takes one on its logits from the losses of a second, no-grad forward pass on the same batch.
``state_dict()`` holds everything (histories, learned tensors, optimizer state, counters) in
types ``torch.load(weights_only=True)`` reads, so a resumed run continues identically.

All five are linear in the task gradients, so they are also aggregators:
``aggregate("si", G, losses)``, ``aggregate("rlw", G, losses, generator=...)`` and, with the
object that holds the state, ``aggregate("dwa" | "uw" | "famo", G, losses, weighting=obj)``
return ``(G^T weights, weights)``, the direction a backward of ``loss`` gives.

Sources (AvivNavon/nash-mtl cce1840 and Cranial-XIX/FAMO 0a6ad06, ``methods/weight_methods.py``):

| class | code | objective | weights |
|---|---|---|---|
| ``ScaleInvariant`` | ``ScaleInvariantLinearScalarization`` | ``sum_k log L_k`` | ``1 / L_k`` |
| ``RandomLossWeighting`` | ``RLW`` | ``sum_k w_k L_k``, ``w = softmax(randn(K))`` | ``w_k`` |
| ``DynamicWeightAverage`` | ``DynamicWeightAverage`` | ``mean_k(w_k L_k)`` | ``w_k / K`` |
| ``UncertaintyWeighting`` | ``Uncertainty`` | ``sum_k (exp(-s_k) L_k + s_k) / 2`` | ``exp(-s_k) / 2`` |
| ``FAMO`` | FAMO's ``FAMO`` | ``sum_k z_k log(L_k + 1e-8) / c`` | ``z_k / (c (L_k + 1e-8))`` |

Learned tensors and their Adam optimizers live on the CPU (``K`` numbers); weights are returned
on the device of ``losses``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from sage_bench.aggregators import register_aggregator
from sage_bench.hparams import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, HParam, choice, const


class LossWeighting:
    """Per-task loss weights for ``num_tasks`` tasks; see the module docstring."""

    name: ClassVar[str]
    #: True where ``update`` needs the losses of a no-grad forward after the optimizer step.
    needs_new_losses: ClassVar[bool] = False

    def __init__(self, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be positive, got {num_tasks}")
        self.num_tasks = num_tasks

    def weighted_loss(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, weights)`` for this step's ``K`` losses; advances the state."""
        self._check(losses)
        return self._weighted_loss(losses)

    def _weighted_loss(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def update(self, new_losses: torch.Tensor | None = None) -> None:
        """After the network's optimizer step: update learned weights (UW, FAMO)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state; got keys {sorted(state)}")

    def _check(self, losses: torch.Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"{type(self).__name__} expects {self.num_tasks} losses, got shape {tuple(losses.shape)}"
            )


class ScaleInvariant(LossWeighting):
    """SI: the sum of log-losses (weights ``1 / L_k``)."""

    name = "si"

    def _weighted_loss(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.log(losses).sum(), 1.0 / losses.detach()


class RandomLossWeighting(LossWeighting):
    """RLW (Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022): weights
    ``softmax(randn(K))`` drawn afresh each step, in float32 as the code does, from
    ``generator`` (torch's global generator when None, as the authors' ``torch.randn``)."""

    name = "rlw"

    def __init__(self, num_tasks: int, generator: torch.Generator | None = None):
        super().__init__(num_tasks)
        self.generator = generator

    def draw(self) -> torch.Tensor:
        """One draw of the weights (float32, CPU)."""
        return F.softmax(torch.randn(self.num_tasks, generator=self.generator), dim=-1)

    def _weighted_loss(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.draw().to(losses.device)
        return (losses * weights).sum(), weights

    def state_dict(self) -> dict[str, Any]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.generator is None:
            super().load_state_dict(state)
        else:
            self.generator.set_state(state["generator"])


class DynamicWeightAverage(LossWeighting):
    """DWA (Liu et al., "End-to-End Multi-Task Learning with Attention", CVPR 2019), per step as
    nash-mtl's ``DynamicWeightAverage`` does it.

    The last ``2 * window`` step losses are kept in a first-in-first-out buffer that starts as
    ones (float32, as the code). From the step after ``window + 1`` earlier steps on (the code's
    ``running_iterations > iteration_window``), ``r = mean(newer half) / mean(older half)`` and
    ``w = K softmax(r / T)``; before, ``w = 1``. The objective is ``mean_k(w_k L_k)``, so the weights
    are ``w_k / K``. The buffer still holds some of its initial ones when the first ratio is taken,
    as in the code.
    """

    name = "dwa"

    def __init__(self, num_tasks: int, temperature: float = 2.0, window: int = 25):
        super().__init__(num_tasks)
        self.temperature = temperature
        self.window = window
        self.costs = np.ones((2 * window, num_tasks), dtype=np.float32)
        self.dwa_weights = np.ones(num_tasks, dtype=np.float32)
        self.steps = 0

    def _weighted_loss(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.costs = np.concatenate(
            [self.costs[1:], losses.detach().cpu().numpy().astype(np.float32).reshape(1, -1)]
        )
        if self.steps > self.window:
            ratio = self.costs[self.window :].mean(0) / self.costs[: self.window].mean(0)
            exp = np.exp(ratio / self.temperature)
            self.dwa_weights = (self.num_tasks * exp) / exp.sum()
        self.steps += 1
        w = torch.from_numpy(self.dwa_weights.astype(np.float32)).to(losses.device)
        weights = w / self.num_tasks
        return (w * losses).mean(), weights

    def state_dict(self) -> dict[str, Any]:
        return {
            "costs": torch.from_numpy(self.costs.copy()),
            "weights": torch.from_numpy(self.dwa_weights.copy()),
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.costs = state["costs"].numpy().copy()
        self.dwa_weights = state["weights"].numpy().copy()
        self.steps = int(state["steps"])


class _LearnedWeighting(LossWeighting):
    """A weighting with one learned tensor of ``K`` numbers and its own Adam optimizer."""

    def __init__(self, num_tasks: int, lr: float, weight_decay: float = 0.0):
        super().__init__(num_tasks)
        self.param = torch.zeros(num_tasks, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.param], lr=lr, weight_decay=weight_decay)
        self.last_losses: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "param": self.param.detach().clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "last_losses": None if self.last_losses is None else self.last_losses.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            self.param.copy_(state["param"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        last = state["last_losses"]
        self.last_losses = None if last is None else last.clone()

    def _losses_seen(self) -> torch.Tensor:
        if self.last_losses is None:
            raise RuntimeError(f"{type(self).__name__}.update() before any weighted_loss()")
        return self.last_losses


class UncertaintyWeighting(_LearnedWeighting):
    """UW (Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR 2018),
    as nash-mtl's ``Uncertainty``: ``sum_k (exp(-s_k) L_k + s_k) / 2`` with learned
    log-variances ``s`` (from 0) and Adam at ``lr`` 0.025 (the code's ``--method-params-lr``).

    In the authors' trainer ``s`` is a second parameter group of the network's Adam, so their
    StepLR also halves its learning rate; schedule ``self.optimizer`` the same way to match.
    ``update()`` (after the network's step) sets ``s.grad`` to the objective's gradient at this
    step's losses and steps Adam, which is what the shared Adam did to ``s``.
    """

    name = "uw"

    def __init__(self, num_tasks: int, lr: float = 0.025):
        super().__init__(num_tasks, lr)

    @property
    def log_vars(self) -> torch.Tensor:
        return self.param

    def _objective(self, losses: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
        return sum(
            0.5 * (torch.exp(-s) * loss + s) for loss, s in zip(losses, log_vars, strict=True)
        )

    def _weighted_loss(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_losses = losses.detach().cpu().clone()
        log_vars = self.param.detach().to(losses.device)
        weights = 0.5 * torch.exp(-log_vars)
        return self._objective(losses, log_vars), weights

    def update(self, new_losses: torch.Tensor | None = None) -> None:
        losses = self._losses_seen().to(self.param.dtype)
        (grad,) = torch.autograd.grad(self._objective(losses, self.param), self.param)
        self.optimizer.zero_grad()
        self.param.grad = grad
        self.optimizer.step()


class FAMO(_LearnedWeighting):
    """FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023), as the
    ``FAMO`` class of Cranial-XIX/FAMO with its image-to-image trainers (minimum losses 0).

    ``z = softmax(xi)`` of learned logits ``xi`` (from 0), ``c = sum_k z_k / (L_k + 1e-8)``
    (detached), objective ``sum_k z_k log(L_k + 1e-8) / c``. After the network's step, with the
    losses ``L'`` of a no-grad forward on the same batch, ``delta = log(L + 1e-8) - log(L' + 1e-8)``,
    ``xi.grad = J_softmax(xi)^T delta`` and Adam (``lr`` 0.025, weight decay ``gamma``) steps;
    this Adam is not scheduled. ``gamma`` is 0.001 for NYU-v2 and 0.01 for Cityscapes in the
    run scripts (the class default is 1e-5).
    """

    name = "famo"
    needs_new_losses = True

    def __init__(self, num_tasks: int, gamma: float = 1e-5, lr: float = 0.025):
        super().__init__(num_tasks, lr, weight_decay=gamma)

    @property
    def logits(self) -> torch.Tensor:
        return self.param

    def _weighted_loss(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_losses = losses.detach().cpu().clone()
        z = F.softmax(self.param.detach(), -1).to(losses.device)
        shifted = losses + 1e-8
        c = (z / shifted.detach()).sum()
        weights = (torch.ones_like(z) / c) * z / shifted.detach()
        return (shifted.log() * z / c).sum(), weights

    def update(self, new_losses: torch.Tensor | None = None) -> None:
        if new_losses is None:
            raise ValueError(
                "FAMO.update needs the losses of a no-grad forward pass after the optimizer step"
            )
        self._check(new_losses)
        previous = self._losses_seen()
        current = new_losses.detach().cpu().to(previous.dtype)
        delta = (previous + 1e-8).log() - (current + 1e-8).log()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(
                F.softmax(self.param, -1), self.param, grad_outputs=delta.to(self.param.dtype)
            )
        self.optimizer.zero_grad()
        self.param.grad = grad
        self.optimizer.step()


LOSS_WEIGHTINGS: dict[str, type[LossWeighting]] = {
    cls.name: cls
    for cls in (
        ScaleInvariant,
        RandomLossWeighting,
        DynamicWeightAverage,
        UncertaintyWeighting,
        FAMO,
    )
}


# -- hyperparameter spaces (the run scripts' defaults; the names are the classes' keywords) --


def dwa_space(dataset: str | None = None) -> dict[str, HParam]:
    """DWA: ``T = 2`` (MTAN paper and ``--dwa-temp``), window 25 steps (nash-mtl's); no search."""
    return {
        "temperature": HParam(2.0, const(2.0), "DWA's softmax temperature T", range=POSITIVE),
        "window": HParam(25, const(25), "steps in each half of DWA's loss history", range=AT_LEAST_ONE),
    }


def uw_space(dataset: str | None = None) -> dict[str, HParam]:
    """UW: Adam learning rate 0.025 for the log-variances (``--method-params-lr``); no search."""
    return {"lr": HParam(0.025, const(0.025), "Adam learning rate of the log-variances", range=POSITIVE)}


def famo_space(dataset: str | None = None) -> dict[str, HParam]:
    """FAMO: logits' Adam learning rate 0.025; weight decay ``gamma`` 0.001 (NYU-v2 ``run.sh``,
    also CelebA and QM9) or 0.01 (Cityscapes ``run.sh``), searched over {1e-4, 1e-3, 1e-2}, a
    decade either side of the NYU-v2 value."""
    gamma = 0.01 if dataset == "Cityscapes" else 0.001
    return {
        "gamma": HParam(gamma, choice([1e-4, 1e-3, 1e-2]), "weight decay of FAMO's logits", range=NON_NEGATIVE),
        "lr": HParam(0.025, const(0.025), "Adam learning rate of FAMO's logits", range=POSITIVE),
    }


# -- the same methods as aggregators (no repository clips them: FAMO's base class clips before
# -- the backward, which clips nothing) --------------------------------------------------------


def _direction(grads: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights = weights.to(dtype=grads.dtype, device=grads.device)
    return weights @ grads, weights


def _require(weighting: LossWeighting | None, cls: type[LossWeighting]) -> LossWeighting:
    if not isinstance(weighting, cls):
        raise TypeError(
            f"aggregator {cls.name!r} keeps its state in a {cls.__name__}: pass "
            f"weighting={cls.__name__}(num_tasks, ...), got {weighting!r}"
        )
    return weighting


@register_aggregator("si")
def si(grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_k g_k / L_k, 1 / L)``."""
    return _direction(grads, ScaleInvariant(grads.shape[0]).weighted_loss(losses)[1])


@register_aggregator("rlw")
def rlw(
    grads: torch.Tensor, losses: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G^T w, w)`` with ``w = softmax(randn(K))`` drawn from ``generator``."""
    return _direction(
        grads, RandomLossWeighting(grads.shape[0], generator).weighted_loss(losses)[1]
    )


@register_aggregator("dwa", space=dwa_space)
def dwa(
    grads: torch.Tensor, losses: torch.Tensor, *, weighting: DynamicWeightAverage | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G^T w / K, w / K)``; advances ``weighting``'s loss history."""
    return _direction(grads, _require(weighting, DynamicWeightAverage).weighted_loss(losses)[1])


@register_aggregator("uw", space=uw_space)
def uw(
    grads: torch.Tensor, losses: torch.Tensor, *, weighting: UncertaintyWeighting | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_k exp(-s_k)/2 g_k, exp(-s)/2)``; call ``weighting.update()`` after the step."""
    return _direction(grads, _require(weighting, UncertaintyWeighting).weighted_loss(losses)[1])


@register_aggregator("famo", space=famo_space)
def famo(
    grads: torch.Tensor, losses: torch.Tensor, *, weighting: FAMO | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G^T w, w)``, ``w_k = z_k / (c (L_k + 1e-8))``; call ``weighting.update(new_losses)``
    after the step."""
    return _direction(grads, _require(weighting, FAMO).weighted_loss(losses)[1])
