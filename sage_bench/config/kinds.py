"""The table of job kinds: the records' task value -> its ``JobKind`` (``sage_bench.config.kind``).

Everything above the configuration that asks "which kind of job?" asks here (or asks the
``JobSpec``'s settings); adding a kind is a module beside ``dg`` and ``mtl`` and one entry.
"""

from __future__ import annotations

from sage_bench.config import dg, mtl
from sage_bench.config.kind import JobKind
from sage_bench.data.catalog import ALL_DATASET_NAMES, dataset_task
from sage_bench.errors import ConfigError

JOB_KINDS: dict[str, JobKind] = {kind.task: kind for kind in (dg.KIND, mtl.KIND)}


def job_kind(task: str) -> JobKind:
    """The kind of the task value ``task`` (a ``JobSpec``'s ``task``, a record's ``args.task``)."""
    return JOB_KINDS[task]


def dataset_kind(dataset: str) -> JobKind:
    """The kind of job ``dataset`` makes, or a ``ConfigError`` listing the data sets."""
    task = dataset_task(dataset)
    if task is None:
        raise ConfigError(f"unknown dataset {dataset!r}; valid choices: {', '.join(sorted(ALL_DATASET_NAMES))}")
    return JOB_KINDS[task]


def other_kinds(kind: JobKind) -> list[JobKind]:
    """Every kind but ``kind``."""
    return [other for other in JOB_KINDS.values() if other is not kind]


__all__ = ["JOB_KINDS", "dataset_kind", "job_kind", "other_kinds"]
