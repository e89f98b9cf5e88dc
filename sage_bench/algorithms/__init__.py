"""Algorithms by name. ``build_algorithm`` wraps any classifier and optimizer (domain
generalization); ``build_multitask_algorithm`` any multi-task network, optimizer and loss.

Example::

    from sage_bench.algorithms import build_algorithm, build_multitask_algorithm
    algo = build_algorithm("ERM", my_model, torch.optim.Adam(my_model.parameters(), 1e-4))
    stats = algo.update([(x_domain1, y_domain1), (x_domain2, y_domain2)])

    from sage_bench.data import DigitScenes
    from sage_bench.models.mtan import mtan
    from sage_bench.mtl import MultiTaskLoss
    data = DigitScenes()
    net = mtan(data.tasks, "narrow")
    algo = build_multitask_algorithm("SAGE-FairGrad", net, torch.optim.Adam(net.parameters(), 1e-3),
                                     MultiTaskLoss(data.tasks), {"rho": 1e-4})
    stats = algo.update(images, {"seg": labels, "depth": depth, "normal": normals})

Each algorithm is registered once, with its hyperparameter space and its kind of task
(``DOMAIN_GENERALIZATION`` or ``MULTI_TASK``), by
``sage_bench.algorithms.registry.register_algorithm`` where its class is defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sage_bench import hparams as hp
from sage_bench.algorithms import fmtl, mtl_constant, mtl_weighting  # noqa: F401  (multi-task rows register)
from sage_bench.algorithms.adversarial import CDANN, DANN
from sage_bench.algorithms.base import Algorithm, FeatureAlgorithm, Minibatches, NetworkError
from sage_bench.algorithms.domainbed import CORAL, IRM, MMD, RSC, Fish, GroupDRO, Mixup, VREx
from sage_bench.algorithms.erm import ERM
from sage_bench.algorithms.gam import GAM
from sage_bench.algorithms.gradient_agreement import GGA, GGA_L
from sage_bench.algorithms.iib import IIB
from sage_bench.algorithms.multitask import LS, MGDA, STL, FairGrad, LossFn, MultiTaskAlgorithm
from sage_bench.algorithms.perturbation import (
    DEFAULT_PERTURBATION,
    DEFAULT_TOLERANCE,
    PerturbedGradient,
    check_perturbation,
)
from sage_bench.algorithms.registry import (
    ALGORITHMS,
    DOMAIN_GENERALIZATION,
    MULTI_TASK,
    RegisteredAlgorithm,
    algorithms,
    get_algorithm,
    register_algorithm,
)
from sage_bench.algorithms.sage import SAGE
from sage_bench.algorithms.sage_mtl import SAGEMultiTask
from sage_bench.algorithms.samo import SAMO
from sage_bench.algorithms.sharpness import DISAM, GSAM, SAGM, SAM


def get_algorithm_class(name: str) -> type[Algorithm] | type[MultiTaskAlgorithm]:
    """The class registered under ``name``, or an error listing the valid names."""
    return get_algorithm(name).cls


def _registered(name: str, task: str) -> RegisteredAlgorithm:
    """The algorithm ``name`` if it is registered for ``task``, or an error that says what fits."""
    registered = get_algorithm(name)
    if registered.task != task:
        fits = ", ".join(algorithms(task))
        builder = "build_multitask_algorithm" if registered.task == MULTI_TASK else "build_algorithm"
        raise hp.HParamError(
            f"{name} is a {registered.task.replace('_', '-')} algorithm: build it with {builder}; "
            f"the {task.replace('_', '-')} algorithms are {fits}"
        )
    return registered


def _resolved_hparams(registered: RegisteredAlgorithm, context: hp.SpaceContext, hparams) -> dict[str, Any]:
    space = registered.space(context)
    given = dict(hparams or {})
    own = {k: v for k, v in given.items() if k not in hp.SHARED_HPARAM_NAMES}
    return {**given, **hp.apply_overrides(space, hp.defaults(space), own)}


def build_algorithm(
    name: str,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    hparams: Mapping[str, Any] | None = None,
    family: str = "large",
    *,
    dataset: str | None = None,
    backbone: str | None = None,
    num_domains: int | None = None,
    num_classes: int | None = None,
    loss_fn: LossFn | None = None,
    perturbation: str = DEFAULT_PERTURBATION,
    perturbation_tolerance: float = DEFAULT_TOLERANCE,
) -> Algorithm | MultiTaskAlgorithm:
    """Wrap ``network`` and ``optimizer`` in the algorithm called ``name``.

    ``hparams`` may set any of the algorithm's own hyperparameters (the rest keep their
    defaults, see ``sage_bench.hparams``) and may also carry the shared ones a job has
    (``lr``, ``batch_size``, ...), which the algorithm ignores. An unknown name, a value of
    the wrong type or out of its range is an error that says what is valid. ``family``,
    ``dataset`` and ``backbone`` pick the defaults of hyperparameters that depend on them (see
    ``sage_bench.hparams``). ``num_domains`` (the number of training domains, i.e. of minibatches
    per update) and ``num_classes`` are needed by the algorithms that build modules of their own
    (DANN, CDANN, IIB); the others ignore them.

    A multi-task algorithm (registered with ``task=MULTI_TASK``, e.g. ``"PCGrad"``) needs
    ``loss_fn``, the ``(outputs, targets) -> {task: loss}`` of its data set
    (``sage_bench.mtl.MultiTaskLoss``), and a network with per-task outputs
    (``sage_bench.models.mtan``).

    ``perturbation`` (``auto``, ``difference``, ``linearized``) and ``perturbation_tolerance``
    say how an algorithm that takes gradients at perturbed weights (the SAM family, GAM, SAGE,
    SAMO-X, SAGE-X) computes them (``sage_bench.algorithms.perturbation``); other algorithms
    ignore them. Outside the runner, ``auto`` chooses between the difference and the linearized
    product in the algorithm's ``autocast_dtype`` (in float32: the difference).
    """
    if loss_fn is not None:
        if get_algorithm(name).task != MULTI_TASK:
            raise hp.HParamError(f"{name} is a domain-generalization algorithm: it takes no loss_fn")
        return build_multitask_algorithm(
            name, network, optimizer, loss_fn, hparams, family, dataset=dataset,
            perturbation=perturbation, perturbation_tolerance=perturbation_tolerance,
        )  # fmt: skip
    if get_algorithm(name).task == MULTI_TASK:
        raise hp.HParamError(
            f"{name} is a multi-task algorithm: build it with build_multitask_algorithm, or pass loss_fn= "
            "(its data set's (outputs, targets) -> {task: loss}, e.g. sage_bench.mtl.MultiTaskLoss)"
        )
    registered = _registered(name, DOMAIN_GENERALIZATION)
    resolved = _resolved_hparams(registered, hp.SpaceContext(family, dataset, backbone), hparams)
    algorithm = registered.cls(network, optimizer, resolved, num_domains=num_domains, num_classes=num_classes)
    return _with_perturbation(algorithm, perturbation, perturbation_tolerance)


def _with_perturbation(algorithm, method: str, tolerance: float):
    """``algorithm`` with its perturbed-gradient method set (checked for every algorithm)."""
    try:
        check_perturbation(method, tolerance)
    except ValueError as exc:
        raise hp.HParamError(str(exc)) from exc
    if isinstance(algorithm, PerturbedGradient):
        algorithm.configure_perturbation(method, tolerance)
    return algorithm


def build_multitask_algorithm(
    name: str,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    hparams: Mapping[str, Any] | None = None,
    family: str = "large",
    *,
    dataset: str | None = None,
    perturbation: str = DEFAULT_PERTURBATION,
    perturbation_tolerance: float = DEFAULT_TOLERANCE,
) -> MultiTaskAlgorithm:
    """The multi-task row ``name`` (``algorithms(MULTI_TASK)``) around ``network`` (``forward(x)
    -> {task: prediction}``, ``shared_parameters()``, ``task_parameters(task)``, ``task_names``;
    e.g. ``sage_bench.models.mtan.MTAN``), ``optimizer`` and ``loss_fn`` (``(outputs, targets)
    -> {task: loss}``, e.g. ``sage_bench.mtl.MultiTaskLoss``).

    ``hparams`` may set any of the row's own hyperparameters (the rest keep their defaults) and
    may carry the shared ones (``lr``, ``batch_size``), which the row ignores; ``family`` and
    ``dataset`` pick defaults that depend on them. An unknown name, a domain-generalization
    algorithm, or a value of the wrong type or out of range is an error that says what is valid.
    ``perturbation`` and ``perturbation_tolerance``: as for ``build_algorithm`` (SAMO-X, SAGE-X).
    """
    registered = _registered(name, MULTI_TASK)
    resolved = _resolved_hparams(registered, hp.SpaceContext(family, dataset, None), hparams)
    algorithm = registered.cls(network, optimizer, resolved, loss_fn)
    return _with_perturbation(algorithm, perturbation, perturbation_tolerance)


__all__ = [
    "ALGORITHMS",
    "DOMAIN_GENERALIZATION",
    "LS",
    "MGDA",
    "MULTI_TASK",
    "STL",
    "FairGrad",
    "MultiTaskAlgorithm",
    "SAGEMultiTask",
    "SAMO",
    "CDANN",
    "CORAL",
    "DANN",
    "DISAM",
    "ERM",
    "GAM",
    "GGA",
    "GGA_L",
    "GSAM",
    "IIB",
    "IRM",
    "MMD",
    "RSC",
    "SAGE",
    "SAGM",
    "SAM",
    "Algorithm",
    "FeatureAlgorithm",
    "MultiTaskAlgorithm",
    "Fish",
    "GroupDRO",
    "Minibatches",
    "Mixup",
    "NetworkError",
    "VREx",
    "RegisteredAlgorithm",
    "algorithms",
    "build_algorithm",
    "build_multitask_algorithm",
    "get_algorithm",
    "get_algorithm_class",
    "register_algorithm",
]
