"""What every reproduction shares: launching a sweep until every job is done
(``launch_until_done``, Table 1 and Table 2) and running jobs in processes here (``run_here``,
the quick variants, and ``add_caveat`` for the note under their tables)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sage_bench.errors import UserError
from sage_bench.sweep.plan import Sweep, SweepJob
from sage_bench.sweep.state import DONE, format_status, sweep_states


def launch_until_done(
    sweep: Sweep, jobs: list[SweepJob], launcher_overrides: Sequence[str], table: str
) -> tuple[int, bool]:
    """Launch the jobs of ``sweep`` that are missing; the launcher's exit code and whether every
    job is done (if not, their states are printed with how to continue)."""
    from sage_bench.sweep.launch import launch_sweep

    code = launch_sweep(sweep, launcher_overrides)
    states = sweep_states(jobs)
    if any(states[job.job_dir] != DONE for job in jobs):
        print(format_status(jobs, states))
        print(f"{table} needs every job; run this command again to continue and collect.")
        return code, False
    return code, True


def run_here(jobs: Sequence[SweepJob], where: Path, workers: int | None = None) -> None:
    """Run the jobs that are not done in ``workers`` processes on this machine (one per core by
    default, ``sage_bench.sweep.pool``), with a progress bar; a failed job is a ``UserError``."""
    from tqdm.auto import tqdm

    from sage_bench.sweep.pool import available_cores, run_jobs_in_processes

    states = sweep_states(jobs)
    todo = [job.spec for job in jobs if states[job.job_dir] != DONE]
    workers = min(workers or available_cores(), max(1, len(todo)))
    print(f"{len(jobs)} jobs ({len(jobs) - len(todo)} already done) in {where}, {workers} at a time")
    with tqdm(total=len(todo), desc="jobs", dynamic_ncols=True) as bar:
        outcome = run_jobs_in_processes(todo, workers, on_done=lambda spec: bar.update())
    if outcome.failed:
        lines = [f"  {spec.job_dir}: {type(error).__name__}: {error}" for spec, error in outcome.failed]
        raise UserError(f"{len(outcome.failed)} quick job(s) failed (err.txt in each folder):\n" + "\n".join(lines))


def add_caveat(text: str, results_dir: Path, caveat: str) -> str:
    """``text`` with the note ``caveat`` under it, and the same note appended to
    ``results_dir/table.md`` (what a quick table's reader must know about its budget)."""
    with open(results_dir / "table.md", "a", encoding="utf-8") as f:
        f.write(f"\n**Note:** {caveat}.\n")
    return text + f"\nNote: {caveat}.\n"


__all__ = ["add_caveat", "launch_until_done", "run_here"]
