"""What one SLURM array task runs: one job of a sweep, resumable and requeueable.

submitit pickles a ``SweepTask`` and the job's overrides; on the compute node it calls the task.
The job resumes from its checkpoint when it has one. When a signal stops it (the checkpoint is
then saved), the signal is handed on to the handler submitit installed: for SLURM's pre-timeout
signal (SIGUSR2) submitit requeues the task, which then resumes; SIGTERM (preemption, requeue,
cancellation) is left to SLURM, which requeues a preempted ``--requeue`` task by itself.
"""

from __future__ import annotations

import signal

import submitit

from sage_bench.config import load_job
from sage_bench.lock import JobAlreadyRunning
from sage_bench.run import run_job
from sage_bench.run.checkpoint import JobInterrupted


class SweepTask(submitit.helpers.Checkpointable):
    """Runs the job that ``overrides`` define; submitit requeues it after its time limit with
    the same arguments (``Checkpointable.checkpoint``), and the job resumes from its checkpoint."""

    def __call__(self, overrides: list[str]) -> str:
        spec = load_job(overrides)
        try:
            return str(run_job(spec))
        except JobAlreadyRunning as exc:  # the same job queued twice: let the other one run it
            print(exc, flush=True)
            return f"{spec.job_dir}: already running elsewhere"
        except JobInterrupted as exc:
            signal.raise_signal(
                exc.signum
            )  # submitit's handler: requeue (SIGUSR2) or log (SIGTERM)
            raise
