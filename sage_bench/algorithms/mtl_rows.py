"""Table 2's rows by name: class and hyperparameter space, and ``build_multitask_algorithm``.

Example::

    from sage_bench.algorithms.mtl_rows import build_multitask_algorithm
    from sage_bench.models.mtan import mtan
    from sage_bench.mtl import MultiTaskLoss
    from sage_bench.data.digit_scenes import DigitScenes

    data = DigitScenes()
    net = mtan(data.tasks, "narrow")
    algo = build_multitask_algorithm("SAGE-FairGrad", net, torch.optim.Adam(net.parameters(), 1e-3),
                                     MultiTaskLoss(data.tasks), {"rho": 1e-4})
    stats = algo.update(images, targets)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sage_bench import hparams as hp
from sage_bench.algorithms.multitask import (
    LS,
    MGDA,
    STL,
    FairGrad,
    LossFn,
    MultiTaskAlgorithm,
    fairgrad_space,
    ls_space,
    mgda_space,
    stl_space,
)
from sage_bench.algorithms.sage_mtl import (
    SAGELS,
    SAGEMGDA,
    SAGESAMOLS,
    SAGESAMOMGDA,
    SAGEFairGrad,
    SAGESAMOFairGrad,
    sage_space,
)
from sage_bench.algorithms.samo import SAMOLS, SAMOMGDA, SAMOFairGrad, samo_space

Space = Callable[[str], dict[str, hp.HParam]]


def _sage(solver: str, ascent: str) -> Space:
    return lambda family: sage_space(solver, ascent, family)


def _samo(solver: str) -> Space:
    return lambda family: samo_space(solver, family)


# name -> (class, hyperparameter space as a function of the data set family)
MULTITASK_ALGORITHMS: dict[str, tuple[type[MultiTaskAlgorithm], Space]] = {
    "STL": (STL, stl_space),
    "LS": (LS, ls_space),
    "MGDA": (MGDA, mgda_space),
    "FairGrad": (FairGrad, fairgrad_space),
    "SAMO-LS": (SAMOLS, _samo("ls")),
    "SAMO-MGDA": (SAMOMGDA, _samo("mgda")),
    "SAMO-FairGrad": (SAMOFairGrad, _samo("fairgrad")),
    "SAGE-LS": (SAGELS, _sage("ls", "mean")),
    "SAGE-MGDA": (SAGEMGDA, _sage("mgda", "mean")),
    "SAGE-FairGrad": (SAGEFairGrad, _sage("fairgrad", "mean")),
    "SAGE-SAMO-LS": (SAGESAMOLS, _sage("ls", "samo")),
    "SAGE-SAMO-MGDA": (SAGESAMOMGDA, _sage("mgda", "samo")),
    "SAGE-SAMO-FairGrad": (SAGESAMOFairGrad, _sage("fairgrad", "samo")),
}


def multitask_space(name: str, family: str = "large") -> dict[str, hp.HParam]:
    """The hyperparameters of row ``name``."""
    if name not in MULTITASK_ALGORITHMS:
        raise hp.HParamError(f"unknown algorithm {name!r}; valid choices: {', '.join(MULTITASK_ALGORITHMS)}")
    return MULTITASK_ALGORITHMS[name][1](family)


def build_multitask_algorithm(
    name: str,
    network: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    hparams: Mapping[str, Any] | None = None,
    family: str = "large",
) -> MultiTaskAlgorithm:
    """Row ``name`` around ``network`` and ``optimizer``; ``hparams`` overrides its defaults (an
    unknown name or a wrong type is an error that lists what is valid)."""
    space = multitask_space(name, family)
    resolved = hp.apply_overrides(space, hp.defaults(space), dict(hparams or {}))
    return MULTITASK_ALGORITHMS[name][0](network, optimizer, resolved, loss_fn)


__all__ = ["MULTITASK_ALGORITHMS", "build_multitask_algorithm", "multitask_space"]
