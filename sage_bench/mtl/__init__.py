"""Multi-task learning (the paper's Table 2): tasks, losses, metrics, ``Delta_m`` and the
gradient aggregators, as the MTAN lineage (CAGrad, Nash-MTL, FAMO, FairGrad, SAMO) computes them.

    from sage_bench.mtl import aggregate, delta_m
    direction, weights = aggregate("mgda", grads, losses)   # grads: K x P
    delta_m({"seg_miou": 0.39, ...}, "NYUv2")

The names are imported on first use: ``sage_bench.mtl.tasks`` and ``sage_bench.mtl.delta_m``
need no torch, so the collector reads them without it.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_MODULES = {
    "AGGREGATORS": "sage_bench.aggregators",
    "aggregate": "sage_bench.aggregators",
    "DELTA_M_BASES": "sage_bench.mtl.delta_m",
    "delta_m": "sage_bench.mtl.delta_m",
    "delta_m_from": "sage_bench.mtl.delta_m",
    "MultiTaskLoss": "sage_bench.mtl.losses",
    "task_loss": "sage_bench.mtl.losses",
    "MetricAccumulator": "sage_bench.mtl.metrics",
    "metric_names": "sage_bench.mtl.tasks",
    "Task": "sage_bench.mtl.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATORS",
    "DELTA_M_BASES",
    "MetricAccumulator",
    "MultiTaskLoss",
    "Task",
    "aggregate",
    "delta_m",
    "delta_m_from",
    "metric_names",
    "task_loss",
]
