"""Sweeps under stress, on real processes: deleting while a job resumes, two launches of one
sweep at once, a full disk, a folder name Hydra does not read unquoted."""

from __future__ import annotations

import errno
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sage_bench.algorithms.erm import ERM
from sage_bench.cli import main
from sage_bench.config import load_job
from sage_bench.lock import is_running, job_lock
from sage_bench.records import MEASUREMENT_KEYS, read_records
from sage_bench.run import checkpoint as ckpt
from sage_bench.run import run_job
from sage_bench.sweep import Sweep, format_status, sweep_states
from sage_bench.sweep import state as st
from sage_bench.sweep.plan import hydra_string

REPO = Path(__file__).resolve().parents[1]
SHORT = ["steps=21", "checkpoint_freq=10", "hparams.batch_size=16"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def definition(out: Path, *extra: str, envs: tuple[str, ...] = ("0",)) -> list[str]:
    return [
        "--output-dir", str(out), "--datasets", "RotatedDigits", "--algorithms", "ERM",
        "--test-envs", *envs, "--n-hparams", "1", "--n-trials", "1", *SHORT, *extra,
    ]  # fmt: skip


def comparable(job_dir: Path) -> list[dict]:
    records = []
    for record in read_records(job_dir):
        record = {k: v for k, v in record.items() if k not in MEASUREMENT_KEYS}
        record["args"] = {k: v for k, v in record["args"].items() if k != "output_dir"}
        records.append(record)
    return records


def interrupt_at_update(monkeypatch, call: int) -> None:
    """The process receives SIGTERM during its ``call``-th training step."""
    original, calls = ERM.update, iter(range(1, 10**6))

    def update(self, minibatches):
        if next(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, minibatches)

    monkeypatch.setattr(ERM, "update", update)


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, "the process ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- delete_incomplete against a resume ------------------------------------------------------


@pytest.mark.slow
def test_a_job_resumed_while_delete_incomplete_asks_is_kept(tmp_path, monkeypatch):
    """`delete_incomplete` lists an interrupted job and asks; meanwhile a real `train` process
    resumes it. Answering yes must not delete the running job, which then finishes with the
    records of an uninterrupted run."""
    out = tmp_path / "sweep"
    (job,) = Sweep(out, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], SHORT).jobs()
    interrupt_at_update(monkeypatch, call=14)
    with pytest.raises(ckpt.JobInterrupted):
        run_job(job.spec, console=False)
    monkeypatch.undo()
    assert sweep_states([job]) == {job.job_dir: st.INTERRUPTED}

    master, terminal = pty.openpty()  # delete_incomplete asks only on a terminal
    deleter = subprocess.Popen(
        [sys.executable, "-m", "sage_bench.cli", "sweep", "delete_incomplete", *definition(out)],
        env=ENV, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    trainer = None
    try:
        os.close(terminal)
        prompt = ""
        while "delete them? [y/N]" not in prompt:
            chunk = os.read(deleter.stdout.fileno(), 1024).decode()
            assert chunk, prompt
            prompt += chunk
        assert "about to delete the folders of 1 failed or interrupted jobs" in prompt
        trainer = subprocess.Popen(
            [sys.executable, "-m", "sage_bench.cli", "train", *job.overrides],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: is_running(job.job_dir), trainer)
        trainer.send_signal(signal.SIGSTOP)  # resumed, and held there while the answer comes
        os.write(master, b"y\n")
        said, _ = deleter.communicate(timeout=120)
        assert deleter.returncode == 0, said
        assert (
            "deleted 0 job folders" in said and "kept 1 that changed since they were listed" in said
        )
        assert "running       RotatedDigits ERM test_envs=[0]" in said
        trainer.send_signal(signal.SIGCONT)
        _, err = trainer.communicate(timeout=300)
        assert trainer.returncode == 0, err
    finally:
        for proc in (deleter, trainer):
            if proc is not None:
                proc.kill()
                proc.wait()
        os.close(master)
    assert "resumed from the checkpoint before step 14" in (job.job_dir / "out.txt").read_text()
    reference = run_job(
        load_job([*SHORT, f"output_dir={tmp_path / 'reference'}", "progress=false"]), console=False
    )
    assert comparable(job.job_dir) == comparable(reference)


def test_delete_incomplete_looks_again_under_the_lock(tmp_path):
    jobs = Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0], [1], [2]], [0], [0]).jobs()
    for job in jobs:
        job.job_dir.mkdir(parents=True)
        (job.job_dir / ckpt.CHECKPOINT_FILE).write_bytes(b"state")
        (job.job_dir / "results.jsonl").write_text("{}\n")
    finished, queued, stopped = jobs
    (finished.job_dir / "done").write_text("done")  # finished since it was listed
    st.write_launch_record(queued.job_dir, launcher="slurm", slurm_job_id="7_1")
    assert st.delete_if_incomplete(finished.job_dir) == st.DONE
    assert st.delete_if_incomplete(queued.job_dir, {"7_1": "PENDING"}) == st.QUEUED
    with job_lock(stopped.job_dir):  # resumed since
        assert st.delete_if_incomplete(stopped.job_dir) == st.RUNNING
    assert all(job.job_dir.exists() for job in jobs)
    assert st.delete_if_incomplete(stopped.job_dir) == st.INTERRUPTED
    assert not stopped.job_dir.exists()
    assert st.delete_if_incomplete(stopped.job_dir) == st.NOT_LAUNCHED


# -- two launches of one sweep ---------------------------------------------------------------


@pytest.mark.slow
def test_a_job_run_by_another_process_is_not_a_failure(tmp_path, capsys, monkeypatch):
    """A job that another process started after the launch looked (its `train` finds the job's
    lock held) is reported as running elsewhere, not as a job that did not finish. The sweep's
    folder has a name Hydra reads only quoted: the job processes get it right."""
    from sage_bench.sweep.launchers import SubprocessLauncher

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out = tmp_path / "résultats"
    first, held = Sweep(
        out, ["RotatedDigits"], ["ERM"], [[0], [1]], [0], [0], [*SHORT, "steps=3"]
    ).jobs()
    with job_lock(held.job_dir):
        assert SubprocessLauncher([{}]).launch([first, held]) == 0  # no failure
    said = capsys.readouterr().out
    assert f"[2/2] running in another process: {held.job_dir}" in said
    assert "1 of 2 jobs are running in another process" in said
    assert (first.job_dir / "done").exists() and not (held.job_dir / "done").exists()
    assert main(["sweep", "status", *definition(out, "steps=3", envs=("0", "1"))]) == 0
    assert "2 jobs: 1 done, 1 incomplete (1 interrupted)" in capsys.readouterr().out


@pytest.mark.slow
def test_two_launches_of_one_sweep_at_once_both_succeed(tmp_path):
    """Whichever launch gets the job runs it; the other finds it running (or done) and says so:
    both exit 0, and the job is run once."""
    out = tmp_path / "sweep"
    args = definition(out, "steps=3")
    command = [sys.executable, "-m", "sage_bench.cli", "sweep", "launch", *args]
    procs = [
        subprocess.Popen(
            command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    try:
        said = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], said
    assert not any("did not finish" in text for text in said)
    (job,) = Sweep(out, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], [*SHORT, "steps=3"]).jobs()
    assert (job.job_dir / "done").exists()
    assert [r["step"] for r in read_records(job.job_dir)] == [0, 2]  # each step recorded once
    assert (job.job_dir / "out.txt").read_text().count("Environment:") == 1  # run by one process


# -- a full disk -----------------------------------------------------------------------------


def test_a_full_disk_leaves_no_temporary_file_and_status_says_why(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    (job,) = Sweep(out, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], SHORT).jobs()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == ckpt.FORMAT:
            f.write(b"the first megabytes of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="no space left on device while writing"):
        run_job(job.spec, console=False)
    monkeypatch.undo()
    tmp = job.job_dir / (ckpt.CHECKPOINT_FILE + ".tmp")
    assert not tmp.exists()
    reason = f"OSError: [Errno 28] no space left on device while writing {tmp}"
    assert (job.job_dir / "err.txt").read_text().splitlines()[-1] == reason
    assert f"job failed: {reason}" in (job.job_dir / "out.txt").read_text()
    assert st.failure_reason(job.job_dir) == reason
    assert main(["sweep", "status", *definition(out)]) == 0
    assert f"  reason: {reason}" in capsys.readouterr().out

    # err.txt could not be written at all: the log's line says it
    (job.job_dir / "err.txt").write_text("")
    assert f"reason: job failed: {reason}" in format_status([job], sweep_states([job]))

    # space freed: the same job runs to the end
    run_job(job.spec, console=False)
    assert [r["step"] for r in read_records(job.job_dir)] == [0, 10, 20]


def test_a_full_disk_elsewhere_than_the_checkpoint_is_named_too(tmp_path, monkeypatch):
    from sage_bench.run import job as job_shell  # Job.write_record appends the records

    (job,) = Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], SHORT).jobs()

    def append_record(job_dir, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(job_shell, "append_record", append_record)
    with pytest.raises(OSError):
        run_job(job.spec, console=False)
    assert (
        st.failure_reason(job.job_dir)
        == f"OSError: no space left on device while writing in {job.job_dir}"
    )


# -- folder names ----------------------------------------------------------------------------


def test_non_ascii_folder_names_are_quoted_for_hydra(tmp_path):
    assert hydra_string("/data/résultats") == "'/data/résultats'"
    assert hydra_string("/data/results-1.2") == "/data/results-1.2"
    (job,) = Sweep(tmp_path / "résultats", ["RotatedDigits"], ["ERM"], [[0]], [0], [0]).jobs()
    spec = load_job(list(job.overrides))
    assert spec.job_dir == job.job_dir and spec.job_dir.parent.name == "résultats"
    assert spec.wandb["group"] == "résultats"
