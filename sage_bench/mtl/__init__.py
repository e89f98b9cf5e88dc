"""Multi-task learning (the paper's Table 2): tasks, losses, metrics, ``Delta_m`` and the
gradient aggregators, as the MTAN lineage (CAGrad, Nash-MTL, FAMO, FairGrad, SAMO) computes them.

    from sage_bench.mtl import aggregate, delta_m
    direction, weights = aggregate("mgda", grads, losses)   # grads: K x P
    delta_m({"seg_miou": 0.39, ...}, "NYUv2")
"""

from sage_bench.aggregators import AGGREGATORS, aggregate
from sage_bench.mtl.delta_m import DELTA_M_BASES, delta_m, delta_m_from
from sage_bench.mtl.losses import MultiTaskLoss, task_loss
from sage_bench.mtl.metrics import MetricAccumulator, metric_names
from sage_bench.mtl.tasks import Task

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
