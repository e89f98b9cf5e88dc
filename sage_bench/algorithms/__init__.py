"""Algorithms by name. ``build_algorithm`` wraps any classifier and optimizer.

Example::

    from sage_bench.algorithms import build_algorithm
    algo = build_algorithm("ERM", my_model, torch.optim.Adam(my_model.parameters(), 1e-4))
    stats = algo.update([(x_domain1, y_domain1), (x_domain2, y_domain2)])

Each algorithm is registered once, with its hyperparameter space, by
``sage_bench.algorithms.registry.register_algorithm`` where its class is defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sage_bench import hparams as hp
from sage_bench.algorithms import mtl_aggregating, mtl_weighting  # noqa: F401  (multi-task rows register)
from sage_bench.algorithms.adversarial import CDANN, DANN
from sage_bench.algorithms.base import Algorithm, FeatureAlgorithm, Minibatches, NetworkError
from sage_bench.algorithms.domainbed import CORAL, IRM, MMD, RSC, Fish, GroupDRO, Mixup, VREx
from sage_bench.algorithms.erm import ERM
from sage_bench.algorithms.gam import GAM
from sage_bench.algorithms.gradient_agreement import GGA, GGA_L
from sage_bench.algorithms.iib import IIB
from sage_bench.algorithms.multitask import LossFn, MultiTaskAlgorithm
from sage_bench.algorithms.registry import (
    ALGORITHMS,
    MULTI_TASK,
    RegisteredAlgorithm,
    algorithms,
    get_algorithm,
    register_algorithm,
)
from sage_bench.algorithms.sage import SAGE
from sage_bench.algorithms.sharpness import DISAM, GSAM, SAGM, SAM


def get_algorithm_class(name: str) -> type[Algorithm]:
    """The class registered under ``name``, or an error listing the valid names."""
    return get_algorithm(name).cls


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
    """
    registered = get_algorithm(name)
    if (registered.task == MULTI_TASK) != (loss_fn is not None):
        needs = "needs loss_fn=" if loss_fn is None else "takes no loss_fn"
        raise TypeError(f"algorithm {name!r} ({registered.task.replace('_', ' ')}) {needs}")
    space = registered.space(hp.SpaceContext(family, dataset, backbone))
    given = dict(hparams or {})
    own = {k: v for k, v in given.items() if k not in hp.SHARED_HPARAM_NAMES}
    resolved = hp.apply_overrides(space, hp.defaults(space), own)
    if loss_fn is not None:
        return registered.cls(network, optimizer, {**given, **resolved}, loss_fn)
    return registered.cls(
        network, optimizer, {**given, **resolved}, num_domains=num_domains, num_classes=num_classes
    )


__all__ = [
    "ALGORITHMS",
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
    "get_algorithm",
    "get_algorithm_class",
    "register_algorithm",
]
