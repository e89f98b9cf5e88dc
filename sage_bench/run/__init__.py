"""Running one job: a ``JobSpec`` in, an output folder in DomainBed's format out."""

from sage_bench.run.train import run_job

__all__ = ["run_job"]
