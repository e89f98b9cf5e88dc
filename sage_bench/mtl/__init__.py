"""Multi-task learning (the paper's Table 2): tasks, losses, metrics, ``Delta_m`` and the
gradient aggregators, as the MTAN lineage (CAGrad, Nash-MTL, FAMO, FairGrad, SAMO) computes them.

    from sage_bench.mtl import aggregate, delta_m
    direction, weights = aggregate("mgda", grads, losses)   # grads: K x P
    delta_m({"seg_miou": 0.39, ...}, "NYUv2")

``sage_bench.mtl.tasks`` and ``sage_bench.mtl.delta_m`` need no torch (the collector reads
them); the names that do are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from sage_bench.mtl.delta_m import DELTA_M_BASES, delta_m, delta_m_from
from sage_bench.mtl.tasks import Task, metric_names

# name -> the module that defines it (torch)
_MODULES = {
    "AGGREGATORS": "sage_bench.aggregators",
    "aggregate": "sage_bench.aggregators",
    "MultiTaskLoss": "sage_bench.mtl.losses",
    "task_loss": "sage_bench.mtl.losses",
    "MetricAccumulator": "sage_bench.mtl.metrics",
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
