"""Launching a sweep: what ``sage-bench sweep launch`` and ``sage-bench reproduce`` run."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from sage_bench.errors import UserError
from sage_bench.sweep import disk
from sage_bench.sweep.launchers import compose_launcher, make_launcher
from sage_bench.sweep.plan import Sweep
from sage_bench.sweep.state import DONE, NOT_LAUNCHED, QUEUED, RUNNING, format_status, sweep_states


def launch_sweep(
    sweep: Sweep,
    launcher_overrides: Sequence[str] = (),
    *,
    dry_run: bool = False,
    write_jobs: Path | None = None,
    skip_disk_check: bool = False,
) -> int:
    """Launch every job of ``sweep`` that is not done, queued or running; returns an exit code.

    ``launcher_overrides`` choose and configure the launcher (``launcher=slurm``,
    ``launcher.gres=...``). ``dry_run`` lists the jobs; ``write_jobs`` writes them to a job
    list for ``slurm/array.sbatch``; neither launches anything. Before launching, the disk the
    sweep needs is compared with what is free.
    """
    launcher_cfg = compose_launcher(launcher_overrides)
    jobs = sweep.jobs()
    states = sweep_states(jobs)
    print(f"sweep {sweep.group}: {format_status(jobs, states).splitlines()[0]}")
    todo = [job for job in jobs if states[job.job_dir] not in (DONE, QUEUED, RUNNING)]
    resumed = sum(states[job.job_dir] != NOT_LAUNCHED for job in todo)

    if write_jobs:
        write_jobs.parent.mkdir(parents=True, exist_ok=True)
        write_jobs.write_text("".join(job.line + "\n" for job in todo))
        print(f"wrote {len(todo)} jobs to {write_jobs}")
        if todo:
            # how many run at once is up to the array's %N: assume all
            print(disk.estimate_disk(todo, len(todo)).describe(disk.free_bytes(sweep.output_dir)))
            print("submit them with e.g.")
            print(f"  sbatch --array=0-{len(todo) - 1}%32 slurm/array.sbatch {write_jobs}")
        return 0
    if dry_run:
        for job in todo:
            print(f"{states[job.job_dir]:<13} {job.describe()}  {job.job_dir}")
        return 0
    if not todo:
        print("nothing to launch")
        return 0

    if (
        any(job.spec.wandb.get("mode", "off") != "off" for job in todo)
        and importlib.util.find_spec("wandb") is None
    ):
        raise UserError(
            "wandb.mode is not off but wandb is not installed: pip install 'sage-bench[wandb]'"
        )
    launcher = make_launcher(launcher_cfg, sweep.output_dir)
    estimate = disk.estimate_disk(todo, launcher.concurrency)
    free = disk.free_bytes(sweep.output_dir)
    print(estimate.describe(free))
    if estimate.needed > free and not skip_disk_check:
        raise UserError(
            f"{sweep.output_dir} has too little free disk for this sweep; free some, choose another "
            "--output-dir, or add --skip-disk-check"
        )
    print(
        f"launching {len(todo)} jobs ({resumed} of them resume) with launcher={launcher_cfg.name}",
        flush=True,
    )
    failed = launcher.launch(todo)
    if failed:
        print(f"{failed} of {len(todo)} jobs did not finish; `sage-bench sweep status` shows why")
        return 1
    return 0
