"""Running many small CPU jobs at once: one worker process per core, one thread each.

For the small jobs of ``reproduce quick`` a process per job (``SubprocessLauncher``) spends
seconds importing torch for a job that trains for seconds, and one process running the jobs
one after another leaves cores idle (torch's threads help little on such small tensors). Here
each worker process is started once, runs jobs in a single thread, and takes the next job when
one finishes.

Ctrl-C reaches every process: a worker inside a job stops it after its step with a checkpoint
saved (``sage_bench.run.checkpoint.StopSignals``); an idle worker ignores it; the caller gets
``KeyboardInterrupt`` once the running jobs have saved.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from sage_bench.config import JobSpec


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a job's own handler takes Ctrl-C while it runs


def _run(spec: JobSpec) -> Path:
    from sage_bench.run import run_job

    return run_job(spec, console=False)


@dataclass
class PoolResult:
    """What became of each job: the finished ones, and the error of each one that failed."""

    done: list[JobSpec]
    failed: list[tuple[JobSpec, BaseException]]


def run_jobs_in_processes(
    specs: Sequence[JobSpec], workers: int | None = None, on_done: Callable[[JobSpec], None] | None = None
) -> PoolResult:
    """Run ``specs`` in ``workers`` processes (default: one per available core, at most one
    per job); ``on_done`` is called in this process as each job ends, failed or not."""
    result = PoolResult([], [])
    if not specs:
        return result
    workers = min(workers or available_cores(), len(specs))
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
        pending: dict[Future, JobSpec] = {pool.submit(_run, spec): spec for spec in specs}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = pending.pop(future)
                    error = future.exception()
                    if error is None:
                        result.done.append(spec)
                    else:
                        result.failed.append((spec, error))
                    if on_done is not None:
                        on_done(spec)
        except KeyboardInterrupt:
            for future in pending:
                future.cancel()  # jobs not started yet; running ones stop after their step
            pool.shutdown(wait=True)
            raise
    return result
