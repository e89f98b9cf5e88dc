"""The training loop of each kind of job, keyed by the records' task value (the kinds' table
is ``sage_bench.config.kinds``; the loops live here, in the layer that runs jobs, and the
configuration below never imports them)."""

from __future__ import annotations

from collections.abc import Callable

from sage_bench.algorithms import Algorithm, MultiTaskAlgorithm
from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK
from sage_bench.run import dg, mtl
from sage_bench.run.job import Job

TrainingLoop = Callable[[Job], Algorithm | MultiTaskAlgorithm]

LOOPS: dict[str, TrainingLoop] = {
    DOMAIN_GENERALIZATION: dg.train,
    MULTI_TASK: mtl.train,
}


def training_loop(task: str) -> TrainingLoop:
    """The loop that trains a job of the kind ``task`` (a ``JobSpec``'s ``task``)."""
    return LOOPS[task]


__all__ = ["LOOPS", "TrainingLoop", "training_loop"]
