"""Sweeps on a real SLURM: the tests start a single-node cluster with MIG-like GPU slices.

Without root or without the SLURM packages these tests are skipped, and the skip says why;
with ``SAGE_BENCH_REQUIRE_SLURM=1`` (set by ``.ci/run``) they fail instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from sage_bench.cli import main
from sage_bench.config import load_job
from sage_bench.records import MEASUREMENT_KEYS, read_records
from sage_bench.run import run_job
from sage_bench.sweep import Sweep
from sage_bench.sweep.plan import SweepJob
from sage_bench.sweep.state import QUEUED, RUNNING, read_launch_record, sweep_states
from tests.helpers.slurm_cluster import LocalSlurm, SlurmUnavailable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("SAGE_BENCH_REQUIRE_SLURM") == "1"
STEPS = ["steps=100", "checkpoint_freq=25", "hparams.batch_size=16"]
DEFINITION = [
    "--datasets", "RotatedDigits", "--algorithms", "ERM", "--test-envs", "0", "1",
    "--n-hparams", "1", "--n-trials", "1", *STEPS,
    "hparams.lr=0.001,0.002",  # 0.002: two jobs made to fail (see digits_sweep)
]  # fmt: skip
LAUNCHER = [
    "launcher=slurm", "launcher.gres=gpu:1g.20gb:1", "launcher.cpus_per_task=1", "launcher.mem_gb=2",
    "launcher.timeout_min=10",
]  # fmt: skip
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def slurm():
    try:
        cluster = LocalSlurm.start(slices={"1g.20gb": 2, "3g.40gb": 1})
    except SlurmUnavailable as exc:
        if REQUIRED:
            pytest.fail(f"SAGE_BENCH_REQUIRE_SLURM=1 but SLURM cannot be started: {exc}")
        pytest.skip(f"no local SLURM cluster: {exc}")
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in cluster.env.items():
                mp.setenv(key, value)
            mp.setenv("PYTHONPATH", str(REPO))  # the jobs import this checkout
            mp.setenv("OMP_NUM_THREADS", "1")  # and compute what the references below compute
            mp.chdir(REPO)
            yield cluster
    finally:
        cluster.stop()


def diagnose(job_dir: Path) -> str:
    """The end of a job's log and of its SLURM task's error log, for a failing assertion."""
    text = [f"{job_dir}:", *(job_dir / "out.txt").read_text().splitlines()[-15:]]
    log = read_launch_record(job_dir).get("log")
    if log and Path(log).exists():
        text += [f"{log}:", *Path(log).read_text().splitlines()[-25:]]
    return "\n".join(text)


def comparable(job_dir: Path) -> list[dict]:
    records = []
    for record in read_records(job_dir):
        record = {k: v for k, v in record.items() if k not in MEASUREMENT_KEYS}
        record["args"] = {
            k: v for k, v in record["args"].items() if k not in ("output_dir", "device")
        }
        records.append(record)
    return records


def reference_records(job: SweepJob, tmp_path: Path) -> list[dict]:
    """The records of ``job`` run here without interruption, with one thread like the task."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = [o for o in job.overrides if not o.startswith("output_dir=")]
        return comparable(run_job(load_job([*overrides, f"output_dir={tmp_path}"])))
    finally:
        torch.set_num_threads(previous)


def job_pid(job_dir: Path) -> int:
    """The process of the job's latest attempt (every attempt appends to out.txt)."""
    return int(re.findall(r"\(pid (\d+)\)", (job_dir / "out.txt").read_text())[-1])


def hold_and_signal(job_dir: Path, signal_it) -> threading.Thread:
    """Freeze the job's process mid-run, let SLURM signal it, let it go on: it stops after its
    current step, wherever that is, however fast the machine. SLURM may take seconds to answer
    while it requeues another task, so the signalling runs in a thread."""
    pid = job_pid(job_dir)
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        pytest.fail(f"{job_dir} finished before it could be stopped mid-run; give it more steps")

    def signal_and_continue():
        try:
            signal_it()
        finally:
            os.kill(pid, signal.SIGCONT)

    thread = threading.Thread(target=signal_and_continue)
    thread.start()
    return thread


@dataclass
class Watched:
    out: Path
    jobs: list[SweepJob]
    array_id: str
    max_running: int = 0
    states_after_launch: list[str] = field(default_factory=list)
    relaunch_output: str = ""
    interrupted: dict[str, int] = field(default_factory=dict)  # how, at which pid


@pytest.fixture(scope="module")
def digits_sweep(slurm, tmp_path_factory) -> Watched:
    """Four jobs on two 1g.20gb slices. While it runs: SLURM kills and requeues the first job
    (``scontrol requeue``, as a preemption), and sends the second its pre-timeout signal
    (SIGUSR2) so that it requeues itself; the two others fail."""
    out = tmp_path_factory.mktemp("slurm") / "digits"
    jobs = Sweep(
        out, ["RotatedDigits"], ["ERM"], [[0], [1]], [0], [0], [*STEPS, "hparams.lr=0.001,0.002"]
    ).jobs()
    for job in jobs[2:]:  # a results file that cannot be written: these jobs fail once they run
        (job.job_dir / "results.jsonl").mkdir(parents=True)
    assert main(["sweep", "launch", "--output-dir", str(out), *DEFINITION, *LAUNCHER]) == 0
    task_ids = [read_launch_record(job.job_dir)["slurm_job_id"] for job in jobs]
    watched = Watched(out, jobs, task_ids[0].split("_")[0])
    # at once: queued (or already running), and the same command again submits nothing
    watched.states_after_launch = list(sweep_states(jobs).values())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["sweep", "launch", "--output-dir", str(out), *DEFINITION, *LAUNCHER]) == 0
    watched.relaunch_output = printed.getvalue()
    actions = {
        jobs[0].job_dir: ("requeue", lambda: slurm.run("scontrol", "requeue", task_ids[0])),
        jobs[1].job_dir: ("timeout", lambda: slurm.run("scancel", "--signal=USR2", task_ids[1])),
    }
    threads = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for _ in range(10):  # look at the job folders often, ask SLURM now and then
            for job_dir, (how, act) in list(actions.items()):
                if read_records(job_dir):  # the first record is written: the job is mid-run
                    watched.interrupted[how] = job_pid(job_dir)
                    threads.append(hold_and_signal(job_dir, act))
                    del actions[job_dir]
            time.sleep(0.02)
        states = slurm.states(watched.array_id)
        watched.max_running = max(watched.max_running, sum(s == "RUNNING" for s in states.values()))
        settled = all(
            (j.job_dir / "done").exists() or (j.job_dir / "err.txt").exists() for j in jobs
        )
        if settled and len(states) == len(jobs) and not any(t in slurm.queue() for t in task_ids):
            break
    else:
        pytest.fail(f"the sweep did not finish in {TIMEOUT_S} s: {slurm.states(watched.array_id)}")
    for thread in threads:
        thread.join()
    return watched


def test_queued_jobs_are_not_submitted_twice(digits_sweep):
    assert set(digits_sweep.states_after_launch) <= {QUEUED, RUNNING}
    assert "nothing to launch" in digits_sweep.relaunch_output
    assert len(digits_sweep.states_after_launch) == 4


def test_the_array_completes_on_mig_slices_two_at_a_time(digits_sweep, slurm, capsys):
    for job in digits_sweep.jobs[:2]:
        assert (job.job_dir / "done").exists(), diagnose(job.job_dir)
    assert (
        len(
            {read_launch_record(j.job_dir)["slurm_job_id"].split("_")[0] for j in digits_sweep.jobs}
        )
        == 1
    )
    assert digits_sweep.max_running == 2  # four tasks, two 1g.20gb slices
    devices = set()
    for job in digits_sweep.jobs:
        devices |= set(
            re.findall(r"CUDA_VISIBLE_DEVICES: (\S+)", (job.job_dir / "out.txt").read_text())
        )
    assert devices <= {"0", "1"} and devices
    assert (
        main(["sweep", "status", "--output-dir", str(digits_sweep.out), *DEFINITION, *LAUNCHER])
        == 0
    )
    assert "4 jobs: 2 done, 2 incomplete (2 failed), 0 not launched" in capsys.readouterr().out


@pytest.mark.parametrize("job, how", [(0, "requeue"), (1, "timeout")])
def test_a_job_stopped_mid_run_is_requeued_and_gives_the_same_records(
    digits_sweep, tmp_path, job, how
):
    job = digits_sweep.jobs[job]
    log = (job.job_dir / "out.txt").read_text()
    assert how in digits_sweep.interrupted
    assert (job.job_dir / "done").exists(), diagnose(job.job_dir)
    assert "SLURM_RESTART_COUNT: 1" in log
    assert re.search(r"resumed from the checkpoint before step (\d+)", log)
    step = int(re.search(r"resumed from the checkpoint before step (\d+)", log).group(1))
    assert 0 < step < 100
    assert job_pid(job.job_dir) != digits_sweep.interrupted[how]  # a new process finished it
    assert comparable(job.job_dir) == reference_records(job, tmp_path)
    assert not (job.job_dir / "checkpoint.pt").exists()


def test_status_reports_the_failed_jobs_with_their_error(digits_sweep, capsys):
    assert (
        main(
            [
                "sweep",
                "status",
                "--output-dir",
                str(digits_sweep.out),
                *DEFINITION,
                *LAUNCHER,
                "--lines",
                "3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for job in digits_sweep.jobs[2:]:
        assert f"failed: {job.describe()}" in text and str(job.job_dir) in text
    assert text.count("  reason: IsADirectoryError: [Errno 21] Is a directory") == 2
    assert text.count("IsADirectoryError: [Errno 21] Is a directory") == 4  # the reason, then the last lines


def test_relaunch_skips_done_jobs_and_delete_incomplete_removes_failed_ones(digits_sweep, capsys):
    command = ["--output-dir", str(digits_sweep.out), *DEFINITION, *LAUNCHER]
    assert main(["sweep", "launch", "--dry-run", *command]) == 0
    planned = [line for line in capsys.readouterr().out.splitlines() if line.startswith("failed")]
    assert len(planned) == 2
    assert main(["sweep", "delete_incomplete", "--yes", *command]) == 0
    assert [job.job_dir.exists() for job in digits_sweep.jobs] == [True, True, False, False]
    capsys.readouterr()
    assert main(["sweep", "status", *command]) == 0
    assert "4 jobs: 2 done, 0 incomplete, 2 not launched" in capsys.readouterr().out


def test_plain_sbatch_template_runs_a_job_list_and_requeues_on_the_timeout_signal(
    slurm, tmp_path, capsys
):
    """slurm/array.sbatch with a list from --write-jobs; SIGUSR2 to the batch shell (what
    ``--signal=B:USR2@120`` sends) makes the task checkpoint, requeue and resume."""
    out = tmp_path / "sweep"
    definition = [
        "--output-dir", str(out), "--datasets", "RotatedDigits", "--algorithms", "ERM",
        "--test-envs", "2", "--n-hparams", "1", "--n-trials", "1", *STEPS,
    ]  # fmt: skip
    jobs_file = tmp_path / "jobs.txt"
    assert main(["sweep", "launch", *definition, "--write-jobs", str(jobs_file)]) == 0
    [line] = jobs_file.read_text().splitlines()
    job_dir = load_job(shlex.split(line)).job_dir
    submitted = subprocess.run(
        [
            "sbatch", "--parsable", "--array=0-0", "--gres=gpu:3g.40gb:1", "--cpus-per-task=1", "--mem=2G",
            f"--output={tmp_path}/slurm-%A_%a.out", "slurm/array.sbatch", str(jobs_file),
        ],
        env={**os.environ, "SAGE_BENCH": f"{shlex.quote(os.sys.executable)} -m sage_bench.cli"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    task = submitted.stdout.strip().split(";")[0] + "_0"
    deadline = time.monotonic() + TIMEOUT_S
    signalled = False
    while time.monotonic() < deadline:
        if not signalled and read_records(job_dir):
            hold_and_signal(
                job_dir, lambda: slurm.run("scancel", "--signal=USR2", "--batch", task)
            ).join()
            signalled = True
        if (job_dir / "done").exists() and task not in slurm.queue():
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the task did not finish in {TIMEOUT_S} s: {slurm.states(task)}")
    log = (job_dir / "out.txt").read_text()
    assert signalled and "SLURM_RESTART_COUNT: 1" in log and "stopped by SIGUSR2" in log
    assert "resumed from the checkpoint before step" in log
    jobs = Sweep(out, ["RotatedDigits"], ["ERM"], [[2]], [0], [0], STEPS).jobs()
    assert comparable(job_dir) == reference_records(jobs[0], tmp_path / "reference")
