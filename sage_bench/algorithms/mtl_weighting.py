"""Table 2's loss-weighting rows: SI, RLW, DWA, UW and FAMO as multi-task algorithms.

Each row does what the lineage's trainers do with its ``weight_method`` (AvivNavon/nash-mtl
cce1840 and Cranial-XIX/FAMO 0a6ad06, ``experiments/{nyuv2,cityscapes}/trainer.py``): one
forward, the method's objective from the ``K`` task losses (``sage_bench.aggregators.weighting``),
**one** backward of that objective, an optimizer step. The backward gives the shared parameters
``sum_k w_k g_k`` and head ``k`` its gradient times ``w_k``; no repository clips these methods
(FAMO's base class clips *before* the backward, which clips nothing).

Per row, beyond that:

- RLW draws its weights from a ``torch.Generator`` of its own, seeded once from torch's global
  generator (the job's seed), where the authors call ``torch.randn`` on the global one; its state
  is saved, so a resumed run draws what the uninterrupted one would.
- DWA keeps the per-step loss history of the lineage's ``DynamicWeightAverage`` (a FIFO of
  ``2 * window`` steps, window 25). It is per *step*: MTAN's original per-epoch DWA is not what
  the rows of Table 2 ran, so the row needs no end-of-epoch hook.
- UW: in the authors' trainer the log-variances are a second parameter group (lr 0.025,
  ``--method-params-lr``) of the network's optimizer, so the network's StepLR halves their
  learning rate too. Here they get an optimizer of the same class and settings as the network's
  (a parameter group of their own, as there), and before each of its steps its learning rate is
  set to ``method_params_lr`` times the network's current learning rate over its initial one
  (``initial_lr``, which schedulers record): any multiplicative schedule (StepLR, exponential,
  cosine to 0) of the network's optimizer is followed, as it was there.
- FAMO: after the optimizer step a second forward pass, without gradients and in training mode
  (so BatchNorm updates its running statistics a second time, as in FAMO's trainer), gives the
  losses its logits learn from; the logits' Adam (lr 0.025, weight decay ``gamma``) is FAMO's own
  and unscheduled, as there.

The state (histories, learned tensors, their optimizers, generators) is saved with the
algorithm's ``state_dict`` in types ``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sage_bench.aggregators import get_method
from sage_bench.aggregators import weighting as lw
from sage_bench.algorithms.multitask import MultiTaskAlgorithm, NoiseSource
from sage_bench.algorithms.registry import MULTI_TASK, no_hparams, register_algorithm
from sage_bench.hparams import HParam, SpaceContext

# --------------------------------------------------------------------------------------------
# Hyperparameter spaces: each weighting's declared space (``sage_bench.aggregators.weighting``),
# with ``lr`` called ``method_params_lr`` (as the trainers' flag), since ``lr`` is the network's.


def weighting_space(method: str):
    """The registered space of the row of the weighting ``method``."""

    def space(context: SpaceContext) -> dict[str, HParam]:
        renamed = {"lr": "method_params_lr"}
        return {renamed.get(n, n): spec for n, spec in get_method(method).space(context.dataset).items()}

    space.__name__ = f"{method}_space"
    return space


dwa_space, uw_space, famo_space = weighting_space("dwa"), weighting_space("uw"), weighting_space("famo")


# --------------------------------------------------------------------------------------------
# The rows


class LossWeightingAlgorithm(MultiTaskAlgorithm):
    """A row that weights the task losses: one forward, one backward of the weighting's
    objective, one optimizer step, then ``after_step`` (UW's and FAMO's own updates)."""

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        self.weighting = self.make_weighting()

    def make_weighting(self) -> lw.LossWeighting:
        raise NotImplementedError

    def after_step(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> None:
        """What the method does after the network's optimizer step (nothing by default)."""

    def update(self, x, targets):
        losses = torch.stack(self.task_losses(x, targets))
        objective, weights = self.weighting.weighted_loss(losses)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.step()
        self.after_step(x, targets)
        stats = self.loss_stats(losses.detach())
        stats.update({f"weight_{t}": w.item() for t, w in zip(self.tasks, weights, strict=True)})
        return stats

    def get_extra_state(self) -> dict[str, Any]:
        return {"weighting": self.weighting.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weighting.load_state_dict(state["weighting"])


@register_algorithm("SI", space=no_hparams, task=MULTI_TASK)
class SI(LossWeightingAlgorithm):
    """Scale-invariant LS (nash-mtl ``ScaleInvariantLinearScalarization``): ``sum_k log L_k``,
    so task ``k`` is weighted ``1 / L_k``."""

    def make_weighting(self) -> lw.LossWeighting:
        return lw.ScaleInvariant(len(self.tasks))


@register_algorithm("RLW", space=no_hparams, task=MULTI_TASK)
class RLW(LossWeightingAlgorithm):
    """Random loss weighting (nash-mtl ``RLW``): ``w = softmax(randn(K))`` each step, from the
    algorithm's own seeded generator (``self.noise``)."""

    def make_weighting(self) -> lw.LossWeighting:
        self.noise = NoiseSource()
        return lw.RandomLossWeighting(len(self.tasks), generator=self.noise.generator(torch.device("cpu")))


@register_algorithm("DWA", space=dwa_space, task=MULTI_TASK)
class DWA(LossWeightingAlgorithm):
    """Dynamic weight average as the lineage runs it (nash-mtl ``DynamicWeightAverage``):
    ``mean_k(w_k L_k)``, ``w = K softmax(r / T)`` from the ratio ``r`` of the mean losses of the
    last ``window`` steps to those of the ``window`` before (ones until ``window + 1`` steps)."""

    def make_weighting(self) -> lw.LossWeighting:
        return lw.DynamicWeightAverage(len(self.tasks), self.hparams["temperature"], self.hparams["window"])


@register_algorithm("UW", space=uw_space, task=MULTI_TASK)
class UW(LossWeightingAlgorithm):
    """Uncertainty weighting (nash-mtl ``Uncertainty``): ``sum_k (exp(-s_k) L_k + s_k) / 2``
    with learned log-variances ``s``, stepped after the network by an optimizer like the
    network's, whose learning rate follows the network's schedule (module docstring)."""

    def make_weighting(self) -> lw.LossWeighting:
        lr = self.hparams["method_params_lr"]
        weighting = lw.UncertaintyWeighting(len(self.tasks), lr=lr)
        weighting.optimizer = optimizer_like(self.optimizer, [weighting.log_vars], lr)
        group = self.optimizer.param_groups[0]
        self.base_lr = float(group.get("initial_lr", group["lr"]))
        return weighting

    def log_vars_lr(self) -> float:
        """``method_params_lr`` scaled as the network's learning rate has been since the start."""
        group = self.optimizer.param_groups[0]
        return self.hparams["method_params_lr"] * (group["lr"] / group.get("initial_lr", self.base_lr))

    def after_step(self, x, targets):
        for group in self.weighting.optimizer.param_groups:
            group["lr"] = self.log_vars_lr()
        self.weighting.update()

    def get_extra_state(self) -> dict[str, Any]:
        return {**super().get_extra_state(), "base_lr": self.base_lr}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        self.base_lr = float(state["base_lr"])


@register_algorithm("FAMO", space=famo_space, task=MULTI_TASK)
class FAMO(LossWeightingAlgorithm):
    """FAMO (Cranial-XIX/FAMO ``FAMO``): ``sum_k z_k log(L_k + 1e-8) / c`` with ``z = softmax(xi)``;
    after the step, a no-grad forward on the same batch gives the new losses its logits ``xi``
    learn from (Adam, lr ``method_params_lr``, weight decay ``gamma``)."""

    def make_weighting(self) -> lw.LossWeighting:
        return lw.FAMO(len(self.tasks), gamma=self.hparams["gamma"], lr=self.hparams["method_params_lr"])

    def after_step(self, x, targets):
        with torch.no_grad():
            new_losses = torch.stack(self.task_losses(x, targets))
        self.weighting.update(new_losses)


def optimizer_like(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s class and settings over ``params`` at ``lr``: what a
    second parameter group of ``optimizer`` would be (its step is per parameter)."""
    options = {**optimizer.defaults, "lr": lr}
    for cuda_only in ("fused", "capturable"):  # the K log-variances live on the CPU
        if options.get(cuda_only):
            options[cuda_only] = False
    try:
        return type(optimizer)(params, **options)
    except TypeError as exc:
        raise TypeError(
            f"UW steps its log-variances with an optimizer like the network's, and cannot build a "
            f"{type(optimizer).__name__} from its settings ({exc}); use a torch.optim optimizer"
        ) from exc
