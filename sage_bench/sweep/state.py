"""Where each job of a sweep stands, read from its folder (and from SLURM's queue).

- ``done``: the job finished (``done`` marker);
- ``running``: a process holds the job's lock, or SLURM runs the task it was submitted as;
- ``queued``: submitted to SLURM and waiting in the queue (also after a requeue);
- ``failed``: it stopped on an error (``err.txt``);
- ``interrupted``: it stopped without an error (signal, time limit, out of memory, node
  failure...); launching it again resumes from its checkpoint;
- ``not launched``: no folder yet.

The middle four are DomainBed's "incomplete". ``delete_if_incomplete`` deletes a failed or
interrupted job's folder only after looking again while it holds the job's lock.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sage_bench.lock import LOCK_FILE, OWNER_FILE, JobAlreadyRunning, is_running, job_lock
from sage_bench.records import ERROR_FILE, LOG_FILE, is_done
from sage_bench.run.checkpoint import CHECKPOINT_FILE
from sage_bench.sweep.plan import SweepJob

DONE = "done"
RUNNING = "running"
QUEUED = "queued"
FAILED = "failed"
INTERRUPTED = "interrupted"
NOT_LAUNCHED = "not launched"
INCOMPLETE = (RUNNING, QUEUED, FAILED, INTERRUPTED)

LAUNCH_FILE = "launch.json"  # how a queued job was launched (SLURM job id, log files)

# SLURM job states in which a task is still to run or running.
_SLURM_WAITING = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "SUSPENDED",
    "RESIZING",
}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def write_launch_record(job_dir: Path, **info: Any) -> None:
    """Note in the job's folder how it was launched (e.g. ``slurm_job_id``, ``log``)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    record = {**info, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (job_dir / LAUNCH_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_launch_record(job_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((job_dir / LAUNCH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def slurm_queue() -> dict[str, str] | None:
    """This user's SLURM jobs and array tasks that are not finished, ``{job id: state}``
    (array tasks as ``ARRAYID_INDEX``); ``None`` when SLURM cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    try:
        result = subprocess.run(
            # every state: squeue's default leaves out e.g. REQUEUED, which a requeued task passes through
            [
                "squeue",
                "--noheader",
                "--array",
                "--states=all",
                "--user",
                getpass.getuser(),
                "--format",
                "%i %T",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    queue = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and (parts[1] in _SLURM_WAITING or parts[1] in _SLURM_RUNNING):
            queue[parts[0]] = parts[1]
    return queue


def job_state(job_dir: Path, queue: Mapping[str, str] | None = None, *, locked: bool = False) -> str:
    """The state of one job folder (see the module docstring); ``queue`` from ``slurm_queue``;
    ``locked``: this process holds the job's lock, so no other process runs it."""
    if is_done(job_dir):
        return DONE
    if not job_dir.exists():
        return NOT_LAUNCHED
    if not locked and is_running(job_dir):
        return RUNNING
    slurm_id = read_launch_record(job_dir).get("slurm_job_id")
    if queue and slurm_id in queue:
        if queue[slurm_id] in _SLURM_RUNNING:
            return RUNNING
        if queue[slurm_id] in _SLURM_WAITING:
            return QUEUED
    if (job_dir / ERROR_FILE).exists():
        return FAILED
    return INTERRUPTED


def sweep_queue(jobs: Sequence[SweepJob]) -> dict[str, str] | None:
    """SLURM's queue (``slurm_queue``) if some job of the sweep was submitted to SLURM."""
    if any((job.job_dir / LAUNCH_FILE).exists() for job in jobs):
        return slurm_queue()
    return None


def sweep_states(jobs: Sequence[SweepJob]) -> dict[Path, str]:
    """The state of every job, by job folder (one ``squeue`` call for the whole sweep)."""
    queue = sweep_queue(jobs)
    return {job.job_dir: job_state(job.job_dir, queue) for job in jobs}


def delete_if_incomplete(job_dir: Path, queue: Mapping[str, str] | None = None) -> str:
    """Delete the folder of a failed or interrupted job; return the state the job was in.

    The state is looked at again while holding the job's lock (without waiting for it), so a
    job that was resumed, finished or queued since the caller looked is kept (its state is
    returned), and no process can start it while its folder goes. The checkpoint goes first: a
    deletion cut short leaves a job that starts over, never one that resumes without its
    records. A process that starts the job during the deletion keeps the folder it recreates.
    """
    if not job_dir.exists():
        return NOT_LAUNCHED
    try:
        with job_lock(job_dir, wait_s=0):
            state = job_state(job_dir, queue, locked=True)
            if state in (FAILED, INTERRUPTED):
                _delete_folder(job_dir)
            return state
    except JobAlreadyRunning:
        return RUNNING


def _delete_folder(job_dir: Path) -> None:
    """Delete a job folder whose lock this process holds: checkpoints first, the lock last."""

    def order(path: Path) -> tuple[bool, bool]:
        return not path.name.startswith(CHECKPOINT_FILE), path.name in (LOCK_FILE, OWNER_FILE)

    for path in sorted(job_dir.iterdir(), key=order):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    try:
        job_dir.rmdir()
    except OSError as exc:  # another process started the job meanwhile: the folder is its own
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a text file (empty if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def error_tail(job_dir: Path, lines: int = 10) -> tuple[Path | None, list[str]]:
    """Where a stopped job says why: the end of ``err.txt``, else of its SLURM error log, else
    the ``job failed: ...`` line of its log (when the disk was too full for ``err.txt``)."""
    candidates = [job_dir / ERROR_FILE]
    log = read_launch_record(job_dir).get("log")
    if log:
        candidates.append(Path(log))
    for path in candidates:
        text = tail(path, lines)
        if any(line.strip() for line in text):
            return path, text
    failed = [line for line in tail(job_dir / LOG_FILE, lines) if line.startswith("job failed: ")]
    if failed:
        return job_dir / LOG_FILE, failed[-1:]
    return None, []


def failure_reason(job_dir: Path) -> str | None:
    """The last non-empty line of ``error_tail``: the exception that stopped the job."""
    _, text = error_tail(job_dir, 10)
    lines = [line.strip() for line in text if line.strip()]
    return lines[-1] if lines else None


def format_status(
    jobs: Sequence[SweepJob], states: Mapping[Path, str], error_lines: int = 10
) -> str:
    """The counts of a sweep's states and, for every failed or interrupted job that left an
    error, the last lines of it."""
    counts = Counter(states[job.job_dir] for job in jobs)
    incomplete = sum(counts[s] for s in INCOMPLETE)
    detail = ", ".join(f"{counts[s]} {s}" for s in INCOMPLETE if counts[s])
    out = [
        f"{len(jobs)} jobs: {counts[DONE]} done, {incomplete} incomplete"
        + (f" ({detail})" if detail else "")
        + f", {counts[NOT_LAUNCHED]} not launched"
    ]
    for job in jobs:
        state = states[job.job_dir]
        if state not in (FAILED, INTERRUPTED):
            continue
        path, text = error_tail(job.job_dir, error_lines)
        if state == INTERRUPTED and path is None:
            continue
        out.append("")
        out.append(f"{state}: {job.describe()}")
        out.append(f"  {job.job_dir}")
        reason = [line.strip() for line in text if line.strip()]
        if reason:
            out.append(f"  reason: {reason[-1]}")
        if path is not None:
            out.append(f"  last lines of {path}:")
            out.extend(f"    {line}" for line in text)
    return "\n".join(out)
