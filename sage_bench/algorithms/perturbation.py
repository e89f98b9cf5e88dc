"""How an algorithm computes its gradient at perturbed weights: ``perturbation=difference``,
``linearized`` or ``auto`` (shared by the SAM family, GAM, SAGE, SAMO-X and SAGE-X).

- ``difference``: a forward and backward pass at ``w + e`` (the authors' second pass), in the
  job's training precision.
- ``linearized``: ``g(w) + ||e|| H (e / ||e||)`` by one Hessian-vector product in the job's
  training precision (``sage_bench.geometry.linearized``); the perturbed loss is
  ``L(w) + <g(w), e>``. Exact to first order: right where the perturbation is small next to
  the curvature's scale (SAGE's ``rho = 1e-6``), wrong where it is not (SAM's ``rho = 0.05``).
  BatchNorm running statistics are updated by the clean pass only (in ``difference`` mode SAM
  and DISAM update them again in the perturbed pass, as their authors' code does).
- ``auto``: on the first step and on every step the runner measures (a record's step), a
  ``ChangeProbe`` measures on the step's batch the change the perturbation makes to the
  gradient by each candidate -- by default on CUDA the difference in bf16, the linearized
  product in bf16 and the difference in float32, in that order of cost -- against a reference,
  and the cheapest candidate whose relative error is at most ``perturbation_tolerance`` computes
  the following steps, its precision too (``precision.train=auto`` follows the choice). Where
  the training precision is float32 the only candidate is the float32 difference: ``auto`` is
  then ``difference``, and nothing is measured.

On the measured steps the step's statistics carry each candidate's ``<candidate>_error``
(``difference_bf16_error``, ``linearized_bf16_error``, ``difference_fp32_error``),
``reference_change`` (the change's size relative to the gradient) and ``perturbation_error``
(the error of the candidate in use); the choice is in the algorithm's state (a resumed job
continues with it) and ``perturbation_choice()`` names it for the records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sage_bench.geometry.linearized import Candidate, ChangeProbe, choose, linearized_grad

PERTURBATION_METHODS = ("auto", "difference", "linearized")
DEFAULT_PERTURBATION = "auto"
DEFAULT_TOLERANCE = 0.01
ERROR_WARNING = 0.05  # a recorded perturbation_error above this is reported (collect.loading has a copy)
# the candidates of ``auto`` when the training precision is left to it on CUDA, cheapest first
AUTO_CANDIDATES = (
    Candidate("difference", torch.bfloat16),
    Candidate("linearized", torch.bfloat16),
    Candidate("difference", None),
)


def check_perturbation(method: Any, tolerance: Any) -> tuple[str, float]:
    """``(method, tolerance)`` checked, or a ``ValueError`` naming the bad one and what is valid."""
    if method not in PERTURBATION_METHODS:
        raise ValueError(f"bad value for 'perturbation': {method!r}; valid choices: {', '.join(PERTURBATION_METHODS)}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance > 0:
        raise ValueError(f"bad value for 'perturbation.tolerance': {tolerance!r}; must be a number > 0 (default 0.01)")
    return method, float(tolerance)


class PerturbedGradient:
    """The ``perturbation`` setting of an algorithm that takes gradients at perturbed weights;
    see the module docstring. Subclasses: ``TwoPassAlgorithm`` (domain generalization), ``SAMO``
    (multi-task), both ``nn.Module``s with a ``network``. The runner calls
    ``configure_perturbation`` before restoring a checkpoint."""

    takes_perturbed_gradient: ClassVar[bool] = True
    perturbation: str = "difference"
    perturbation_tolerance: float = DEFAULT_TOLERANCE
    autocast_dtype: torch.dtype | None
    measure_fidelity: bool = False
    _candidates: tuple[Candidate, ...] | None = None  # auto's, when set by configure_perturbation
    _probe_stats: dict[str, float] | None = None  # measured this step, not yet returned

    def configure_perturbation(
        self, method: str, tolerance: float = DEFAULT_TOLERANCE, candidates: Sequence[Candidate] | None = None
    ) -> None:
        """Set the method (``difference``, ``linearized``, ``auto``), ``auto``'s tolerance and
        candidates (cheapest first; ``None``: the difference and the linearized product in the
        training autocast dtype, or the float32 difference alone when that is float32)."""
        self.perturbation, self.perturbation_tolerance = check_perturbation(method, tolerance)
        self._candidates = None if candidates is None else tuple(candidates)
        if self.perturbation == "auto" and len(self.candidates()) > 1:
            self._choice_index()

    def _choice_index(self) -> torch.Tensor:
        """The index of auto's choice, -1 before the first measurement: a buffer, so that a
        checkpoint keeps it (registered only where there is a choice to keep, so checkpoints of
        jobs without one load as before)."""
        if "perturbation_index" not in self._buffers:
            device = next(self.network.parameters()).device
            self.register_buffer("perturbation_index", torch.tensor(-1, device=device))
            self.register_load_state_dict_post_hook(lambda module, keys: module._follow_choice())
        return self._buffers["perturbation_index"]

    def _follow_choice(self) -> None:
        """After a checkpoint is loaded: train in the precision of the restored choice (the
        clean pass of the next step runs before any measurement)."""
        index = int(self._buffers["perturbation_index"])
        if self.perturbation == "auto" and index >= 0:
            self.autocast_dtype = self.candidates()[index].dtype

    def candidates(self) -> tuple[Candidate, ...]:
        if self._candidates is not None:
            return self._candidates
        if self.autocast_dtype is None:
            return (Candidate("difference", None),)
        return (Candidate("difference", self.autocast_dtype), Candidate("linearized", self.autocast_dtype))

    def perturbation_in_use(self) -> Candidate:
        """The candidate that computes this step's perturbed gradients."""
        if self.perturbation != "auto":
            return Candidate(self.perturbation, self.autocast_dtype)
        candidates = self.candidates()
        if len(candidates) == 1:
            return candidates[0]
        return candidates[max(int(self._choice_index()), 0)]

    def perturbation_choice(self) -> dict[str, str]:
        """What computes the perturbed gradients now, for the records."""
        candidate = self.perturbation_in_use()
        dtype = "float32" if candidate.dtype is None else str(candidate.dtype).removeprefix("torch.")
        return {"perturbation_method": candidate.method, "perturbation_dtype": dtype}

    def decide_perturbation(
        self, params: Sequence[nn.Parameter], perturbation: Sequence[torch.Tensor],
        probe_loss: Callable[[nn.Module], torch.Tensor],
    ) -> Candidate:  # fmt: skip
        """The candidate for this step: with ``auto``, measured first on the first step and once
        on each measured step (``measure_fidelity``); ``probe_loss(network)`` is the batch's
        scalar loss, computed in the network's floating-point type without autocast."""
        candidates = self.candidates()
        if self.perturbation != "auto" or len(candidates) == 1:
            return self.perturbation_in_use()
        first = int(self._choice_index()) < 0
        if first or (self.measure_fidelity and self._probe_stats is None):
            errors = ChangeProbe(self.network, probe_loss).measure(params, perturbation, candidates)
            index = choose(errors, candidates, self.perturbation_tolerance)
            self._choice_index().fill_(index)
            self.autocast_dtype = candidates[index].dtype  # precision.train=auto follows the choice
            errors["perturbation_error"] = errors[f"{candidates[index].name}_error"]
            self._probe_stats = errors
        return self.perturbation_in_use()

    def probe_stats(self) -> dict[str, float]:
        """What the probe measured this step (nothing on other steps); call once per step."""
        stats, self._probe_stats = self._probe_stats or {}, None
        return stats


def probe_loss_of(loss: Callable[[nn.Module, torch.dtype], torch.Tensor]) -> Callable[[nn.Module], torch.Tensor]:
    """``network -> loss(network, its floating-point dtype)``: a probe's loss from a loss that
    casts the batch's inputs to ``dtype``."""

    def probe(network: nn.Module) -> torch.Tensor:
        dtype = next(p.dtype for p in network.parameters() if p.is_floating_point())
        return loss(network, dtype)

    return probe


def linearized_task_gradients(
    network: nn.Module, shared: list[nn.Parameter], heads: dict[str, list[nn.Parameter]],
    shared_eps: list[torch.Tensor], head_eps: dict[str, list[torch.Tensor]], losses_fn: Callable[[], torch.Tensor],
    tasks: Sequence[str] | None = None, autocast: Callable[[], Any] | None = None,
) -> tuple[list[list[torch.Tensor]], dict[str, list[torch.Tensor]], torch.Tensor]:  # fmt: skip
    """Multi-task rows, one perturbation for the tasks ``tasks`` (default: every task in
    ``heads``): each task's linearized gradient of the shared parameters (a list of tensors per
    task) and of its own head, and the linearized losses; ``losses_fn()`` returns the tasks'
    losses as a 1-D tensor in the order of ``tasks``; ``autocast``: the training precision."""
    tasks = list(heads) if tasks is None else list(tasks)
    params = shared + [p for t in tasks for p in heads[t]]
    eps = list(shared_eps) + [e for t in tasks for e in head_eps[t]]
    losses, grads = linearized_grad(network, params, eps, losses_fn, *(() if autocast is None else (autocast,)))
    rows, own, start = [], {}, len(shared)
    for k, task in enumerate(tasks):
        rows.append(grads[k][: len(shared)])
        own[task] = grads[k][start : start + len(heads[task])]
        start += len(heads[task])
    return rows, own, losses
