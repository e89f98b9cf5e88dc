"""Multi-task algorithms: STL, and LS / MGDA / FairGrad over per-task gradients of shared parameters.

A ``MultiTaskAlgorithm`` wraps a network whose ``forward(x)`` returns ``{task: prediction}`` and
which offers ``shared_parameters()``, ``task_parameters(task)`` and ``task_names`` (e.g.
``sage_bench.models.mtan.MTAN``), a torch optimizer over its parameters, hyperparameters, and a
loss function ``(outputs, targets) -> {task: loss}`` (``sage_bench.mtl.MultiTaskLoss``). It owns
neither network nor optimizer. ``update(x, targets)`` does one training step and returns floats
to log; ``predict(x)`` gives the network's outputs.

A ``GradientAggregation`` row does what the lineage's ``weight_method.backward`` does, from one
forward and ``K`` backward passes: the ``K x P`` matrix ``G`` of each task's gradient of the
shared parameters goes to an aggregator (``sage_bench.aggregators``), whose direction becomes the
shared parameters' gradient and whose weights scale each head's own gradient (1 where it has
none); then the shared gradient is clipped where the method's repository clips it, and the
optimizer steps. Each aggregator module declares its row (``sage_bench.aggregators.Row``), its
hyperparameters and its sources' clip; ``register_row`` registers one row class per
declaration, for the built-in methods and for those a plugin declares later. Clipping, as the repositories behind Table 2 do it: LS and MGDA (nash-mtl, FAMO)
never clip (FAMO's base class clips *before* ``backward``, a no-op); FairGrad clips the shared
gradient to norm 1 after aggregation; the rows whose sources differ (PCGrad, GradDrop, CAGrad,
Nash-MTL, ...) have a ``max_norm`` hyperparameter whose default is the data set's source's clip:
on NYUv2 nash-mtl's code, on any other data set FAMO's, the policy the FAMO, FairGrad and SAMO
repositories share (the protocol the SAGE paper follows).

Where the authors' code calls ``torch.autograd.grad(loss, shared_parameters)`` (PCGrad, IMTL-G,
Nash-MTL) it raises on MTAN, whose task losses do not reach the other tasks' attention modules;
such a gradient is taken as zeros here, as CAGrad's and GradDrop's flattening does. State, saved
with the algorithm's ``state_dict``: PCGrad's ``random.Random`` (the authors shuffle with
Python's global ``random``), GradDrop's ``torch.Generator`` (theirs: ``torch.rand_like``), both
seeded once from torch's global generator (the job's seed); MoCo's tracking variables and step;
Nash-MTL's previous weights (its warm start) and step counter.

A parameter no task's loss depends on keeps ``grad = None`` (Adam leaves it alone), as with the
lineage's ``loss.backward()``: STL leaves the other tasks' attention modules and heads untouched.

Each row is registered once, class and hyperparameter space together, with
``register_algorithm(name, space=..., task=MULTI_TASK)`` (``sage_bench.algorithms.registry``);
``sage_bench.algorithms.build_multitask_algorithm`` builds one by name, and ``sage-bench train``
runs it on a multi-task data set (``sage_bench.run.mtl``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from sage_bench.aggregators import Method, aggregate, get_method, on_register
from sage_bench.algorithms.registry import MULTI_TASK, register_algorithm
from sage_bench.data.catalog import MULTITASK_TASKS
from sage_bench.geometry import flatten, grads_of_losses, unflatten
from sage_bench.hparams import HParam, SpaceContext

LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


@dataclass
class TaskGradients:
    """Per-task losses and gradients from one forward and ``K`` backward passes."""

    losses: torch.Tensor  # (K,) detached, in task order
    shared: torch.Tensor  # (K, P): row k is task k's gradient of the shared parameters, flattened
    heads: dict[str, list[torch.Tensor]]  # each task's gradient of its own head
    shared_used: list[bool]  # whether any task's loss depends on each shared parameter
    per_task_shared: list[list[torch.Tensor]] | None = None  # rows of ``shared`` as tensors, if kept


class NoiseSource:
    """A ``torch.Generator`` on the parameters' device, seeded once from the global generator
    (so fixed by the job's seed) and saved with the algorithm (``state_dict``/``load_state_dict``)."""

    def __init__(self) -> None:
        self.seed = int(torch.randint(0, 2**62, (1,)).item())
        self._generator: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"seed": self.seed}
        if self._generator is not None:
            state["generator_state"] = self._generator.get_state()
            state["generator_device"] = str(self._generator.device)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        if "generator_state" in state:
            self.generator(torch.device(state["generator_device"])).set_state(state["generator_state"])


class MultiTaskAlgorithm(nn.Module):
    """The interface of the multi-task rows; see the module docstring.

    What the runner (``sage_bench.run.mtl``) calls, and what a row may override:

    - ``update(x, targets) -> {name: float}`` once per training step (a batch of images and
      ``{task: target}``); everything a step does, extra forward passes included, happens here.
      The floats are averaged over the epoch into its record (``loss`` and every key ending in
      ``loss`` must stay finite, or the job stops as diverged).
    - ``end_epoch(epoch)`` after the last step of each epoch (0-based), before the epoch's
      evaluation: for rows whose state changes per epoch (e.g. a loss history kept per epoch).
      The default does nothing.
    - ``predict(x) -> {task: prediction}`` for evaluation (the network in eval mode).
    - ``get_extra_state()`` / ``set_extra_state(state)``: the row's own state (generators, solver
      warm starts, loss histories, learned weights and their optimizers), saved in the
      checkpoint through ``state_dict()`` as ``_extra_state``, so a resumed job continues
      exactly. Keep it to tensors and plain containers (checkpoints load with
      ``weights_only=True``). The network's optimizer is saved separately.

    Class attributes: ``perturbs_weights`` (gradients taken at perturbed weights: SAMO, SAGE);
    ``per_task_hparam`` (a hyperparameter naming one task, e.g. STL's ``task``: a sweep plans one
    job per task of the data set unless it is given); ``passes_per_step`` (forward-pass
    equivalents of a step, for the GPU-hour estimate of ``sage-bench reproduce table2``).
    Forward passes go through ``self.autocast()`` (``autocast_dtype``, as the DG ``Algorithm``;
    the runner sets it and ``eval_autocast_dtype`` from ``precision.*``).
    """

    autocast_dtype: torch.dtype | None = None
    eval_autocast_dtype: torch.dtype | None = None
    perturbs_weights: ClassVar[bool] = False
    per_task_hparam: ClassVar[str | None] = None

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        hparams: Mapping[str, Any],
        loss_fn: LossFn,
    ):
        super().__init__()
        self.network = network
        self.optimizer = optimizer
        self.hparams = dict(hparams)
        self.loss_fn = loss_fn
        self.tasks: list[str] = list(network.task_names)

    # ---------------------------------------------------------------------------- plumbing
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device_type = next(self.network.parameters()).device.type
        return torch.autocast(device_type=device_type, dtype=self.autocast_dtype)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.network.shared_parameters() if p.requires_grad]

    def head_parameters(self, task: str) -> list[nn.Parameter]:
        return [p for p in self.network.task_parameters(task) if p.requires_grad]

    def task_losses(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """One forward pass; each task's loss, in task order (half precision upcast to float32)."""
        with self.autocast():
            losses = self.loss_fn(self.network(x), targets)
        return [losses[t] if losses[t].dtype in (torch.float32, torch.float64) else losses[t].float() for t in self.tasks]

    def task_gradients(self, losses: list[torch.Tensor], keep_tensors: bool = False) -> TaskGradients:
        """Each task's gradient of the shared parameters and of its own head, by one backward
        pass per task through the forward that made ``losses`` (``grads_of_losses``)."""
        shared = self.shared_parameters()
        heads = {t: self.head_parameters(t) for t in self.tasks}
        params = shared + [p for t in self.tasks for p in heads[t]]
        grads = grads_of_losses(losses, params)
        rows = torch.empty(len(self.tasks), sum(p.numel() for p in shared), dtype=shared[0].dtype, device=shared[0].device)
        head_grads, start, tensors = {}, len(shared), []
        for k, task in enumerate(self.tasks):
            rows[k] = flatten(grads[k][: len(shared)], like=shared)
            if keep_tensors:
                tensors.append(unflatten(rows[k], shared))
            own = grads[k][start : start + len(heads[task])]
            head_grads[task] = [torch.zeros_like(p) if g is None else g for p, g in zip(heads[task], own, strict=True)]
            start += len(heads[task])
        used = [any(grads[k][j] is not None for k in range(len(self.tasks))) for j in range(len(shared))]
        return TaskGradients(
            torch.stack([loss.detach() for loss in losses]), rows, head_grads, used, tensors if keep_tensors else None
        )

    def set_gradients(
        self,
        shared_direction: torch.Tensor,
        head_grads: Mapping[str, list[torch.Tensor]],
        head_weights: torch.Tensor | None = None,
        shared_used: list[bool] | None = None,
    ) -> None:
        """``.grad`` of the shared parameters from the flat ``shared_direction`` (``None`` where
        no task uses a parameter), of each head ``weight_k *`` its own gradient."""
        self.optimizer.zero_grad(set_to_none=True)
        shared = self.shared_parameters()
        used = shared_used if shared_used is not None else [True] * len(shared)
        for p, g, u in zip(shared, unflatten(shared_direction, shared), used, strict=True):
            p.grad = g if u else None
        for k, task in enumerate(self.tasks):
            weight = None if head_weights is None else head_weights[k]
            for p, g in zip(self.head_parameters(task), head_grads[task], strict=True):
                p.grad = g if weight is None else g * weight

    def clip_shared(self, max_norm: float | None) -> None:
        """The repositories' ``clip_grad_norm_(shared_parameters, max_norm)`` (nothing if None)."""
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.shared_parameters(), max_norm)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @classmethod
    def passes_per_step(cls, num_tasks: int, hparams: Mapping[str, Any]) -> float:
        """Forward-pass equivalents of one step (a backward pass counts as two), for planning:
        here one forward and one backward pass per task."""
        return 1 + 2 * num_tasks

    # ---------------------------------------------------------------------------- interface
    def update(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One training step on a batch; returns floats to log."""
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        """Called by the runner after the last step of epoch ``epoch`` (0-based), before the
        epoch's evaluation; the default does nothing."""

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.network(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.predict(x)

    def loss_stats(self, losses: torch.Tensor, prefix: str = "") -> dict[str, float]:
        stats = {f"{prefix}loss": losses.sum().item()}
        stats.update({f"{prefix}loss_{t}": v.item() for t, v in zip(self.tasks, losses, strict=True)})
        return stats

    def get_extra_state(self) -> dict[str, Any]:
        return {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        pass


def stl_space(context: SpaceContext) -> dict[str, HParam]:
    tasks = tuple(name for name, _ in MULTITASK_TASKS.get(context.dataset or "", ()))
    help = "the one task STL trains (a task name of the data set)"
    return {"task": HParam("seg", lambda r: "seg", help, choices=tasks or None)}


@register_algorithm("STL", space=stl_space, task=MULTI_TASK)
class STL(MultiTaskAlgorithm):
    """Single-task learning (nash-mtl ``STL``): the loss of task ``hparams["task"]`` alone, so the
    shared parameters it uses and its head get its gradient; nothing is clipped. One network per
    task (a sweep plans one job per task); the other heads and attention modules are never
    updated.

    The step's ``loss`` (what the job checks for divergence) is that task's loss; every task's is
    still reported (``loss_<task>``). The other heads' losses are not an objective: an untrained
    normals head can output an exact zero vector, which its L2 normalisation (no epsilon, as the
    lineage's) turns into NaN while the trained task is well."""

    per_task_hparam = "task"

    @classmethod
    def passes_per_step(cls, num_tasks, hparams):
        return 3.0

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        if self.hparams["task"] not in self.tasks:
            raise ValueError(f"STL task {self.hparams['task']!r} is not a task of the network; tasks: {', '.join(self.tasks)}")

    def update(self, x, targets):
        task = self.hparams["task"]
        losses = self.task_losses(x, targets)
        k = self.tasks.index(task)
        params = self.shared_parameters() + self.head_parameters(task)
        grads = torch.autograd.grad(losses[k], params, allow_unused=True)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.step()
        stats = self.loss_stats(torch.stack([loss.detach() for loss in losses]))
        stats["loss"] = stats[f"loss_{task}"]
        return stats


class GradientAggregation(MultiTaskAlgorithm):
    """A solver over the per-task gradients of the shared parameters (see the module docstring).

    ``solver`` names a registered aggregator method (``sage_bench.aggregators.METHODS``); its
    hyperparameters are read from ``hparams`` by the names of its space. The shared gradient is
    clipped to ``max_norm`` (None: no clipping): the ``max_norm`` hyperparameter of a row with a
    tunable clip (0: none), else the method's fixed clip. Aggregators that keep state between
    steps (``state=``) or draw random numbers (``generator=``) get the algorithm's own, which
    its ``state_dict`` saves: a ``torch.Generator``, or for ``generator="python"`` methods (the
    authors shuffle with Python's ``random``, PCGrad) a ``random.Random``; both seeded once from
    torch's global generator (the job's seed).
    """

    solver: str = ""
    tunable_clip: bool = False  # a max_norm hyperparameter (the row's ``Row.tunable_clip``)

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        self.method = get_method(self.solver)
        if self.method.requires is not None:
            self.method.requires()  # before training starts, not at the first step
        self.solver_state: dict[str, Any] = {}
        # drawn from the global generator only by solvers that draw random numbers
        self.solver_noise = NoiseSource() if self.method.takes("generator") else None
        self.orders_rng: random.Random | None = None
        if self.solver_noise is not None and self.method.generator == "python":
            self.orders_rng = random.Random(self.solver_noise.seed)
            self.solver_noise = None
        self.max_norm = self.own_max_norm()

    def own_max_norm(self) -> float | None:
        """The clip of the shared gradient: the ``max_norm`` hyperparameter (0: none) of a row
        with a tunable clip, else the method's fixed clip (None: none)."""
        if self.tunable_clip:
            return self.hparams["max_norm"] or None
        return self.method.fixed_clip()

    def solver_hparams(self) -> dict[str, Any]:
        return {name: self.hparams[name] for name in self.method.space(None)}

    def solve(self, grads: torch.Tensor, losses: torch.Tensor, **extra: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The aggregator's ``(direction, head weights)`` for the ``K x P`` matrix ``grads``."""
        kwargs = {**self.solver_hparams(), **extra}
        if self.method.takes("state"):
            kwargs["state"] = self.solver_state
        if self.solver_noise is not None:
            kwargs["generator"] = self.solver_noise.generator(grads.device)
        elif self.orders_rng is not None:
            kwargs["generator"] = self.orders_rng
        return aggregate(self.solver, grads, losses, **kwargs)

    def update(self, x, targets):
        losses = self.task_losses(x, targets)
        grads = self.task_gradients(losses)
        direction, weights = self.solve(grads.shared, grads.losses)
        self.set_gradients(direction, grads.heads, weights, grads.shared_used)
        self.clip_shared(self.max_norm)
        self.step()
        stats = self.loss_stats(grads.losses)
        if weights is not None:
            stats.update({f"weight_{t}": w.item() for t, w in zip(self.tasks, weights, strict=True)})
        return stats

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"solver_state": self.solver_state}
        if self.solver_noise is not None:
            state["solver_noise"] = self.solver_noise.state_dict()
        if self.orders_rng is not None:
            state["orders_rng"] = python_random_state(self.orders_rng)
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.solver_state = dict(state["solver_state"])
        if self.solver_noise is not None:
            self.solver_noise.load_state_dict(state["solver_noise"])
        if self.orders_rng is not None:
            set_python_random_state(self.orders_rng, state["orders_rng"])


# --------------------------------------------------------------------------------------------
# The rows of the aggregator methods, registered from their declarations


def row_space(method: Method) -> Callable[[SpaceContext], dict[str, HParam]]:
    """The registered space of ``method``'s row: the method's own hyperparameters, then
    ``max_norm`` (the data set's source clip) where the row's clip is tunable."""

    def space(context: SpaceContext) -> dict[str, HParam]:
        own = method.space(context.dataset)
        if method.row is not None and method.row.tunable_clip:
            return {**own, **method.max_norm_space(context.dataset)}
        return own

    space.__name__ = f"{method.name}_space"
    return space


def register_row(method: Method) -> None:
    """Register the ``GradientAggregation`` row that ``method`` declares
    (``sage_bench.aggregators.Row``), if any, as a multi-task algorithm."""
    row = method.row
    if row is None:
        return
    if not row.tunable_clip:
        method.fixed_clip()  # sources that clip differently need a tunable clip: fail here
    name = row.name.replace("-", "")
    cls = type(name, (GradientAggregation,), {
        "solver": method.name, "tunable_clip": row.tunable_clip,
        "__doc__": row.doc or f"The aggregator {method.name!r} as a row.", "__module__": method.fn.__module__,
        "__qualname__": name,
    })  # fmt: skip
    AGGREGATING_ROWS[row.name] = register_algorithm(row.name, space=row_space(method), task=MULTI_TASK)(cls)


#: The row class of every method that declares a row, by row name (built-in and plugins').
AGGREGATING_ROWS: dict[str, type[GradientAggregation]] = {}
on_register(register_row)  # the methods registered so far, and every later one
LS, MGDA, FairGrad = AGGREGATING_ROWS["LS"], AGGREGATING_ROWS["MGDA"], AGGREGATING_ROWS["FairGrad"]


# --------------------------------------------------------------------------------------------
# Python's random.Random state in types torch.load(weights_only=True) reads


def python_random_state(rng: random.Random) -> tuple[int, torch.Tensor, float | None]:
    version, internal, gauss_next = rng.getstate()
    return version, torch.tensor(internal, dtype=torch.int64), gauss_next


def set_python_random_state(rng: random.Random, state: tuple[int, torch.Tensor, float | None]) -> None:
    version, internal, gauss_next = state
    rng.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss_next))
