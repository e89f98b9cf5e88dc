"""One process per job folder: with flock, without it (a lock file of its own), and when the
folder is deleted while a process waits for its lock."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sage_bench import lock
from sage_bench.cli import main
from sage_bench.lock import JobAlreadyRunning, is_running, job_lock
from sage_bench.records import read_records
from sage_bench.sweep import Sweep, sweep_states
from sage_bench.sweep import state as st

REPO = Path(__file__).resolve().parents[1]
SHORT = ["steps=21", "checkpoint_freq=10", "hparams.batch_size=16"]

# Makes fcntl.flock fail as on a file system without locks (Lustre mounted without -o flock).
NO_FLOCK = (
    "import errno, fcntl\n"
    "def _no_flock(fd, operation):\n"
    "    raise OSError(errno.ENOLCK, 'No locks available')\n"
    "fcntl.flock = _no_flock\n"
)


@pytest.fixture
def no_flock(monkeypatch):
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", flock)


def test_deleted_while_waiting_the_waiter_locks_the_new_folder(tmp_path):
    """A process that waited for the lock of a folder deleted meanwhile must not hold a lock on
    the deleted file while another process starts the job in the new folder."""
    job_dir = tmp_path / "job"
    got_it = threading.Event()
    release = threading.Event()

    def waiter():
        with job_lock(job_dir, wait_s=10):
            got_it.set()
            release.wait(10)

    with job_lock(job_dir):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)  # the waiter has opened the old lock file and waits
        shutil.rmtree(job_dir)
    assert got_it.wait(10)
    assert (job_dir / "lock").exists() and is_running(job_dir)  # held on the folder's file
    with pytest.raises(JobAlreadyRunning):
        with job_lock(job_dir, wait_s=0):
            pass
    release.set()
    thread.join()
    assert not is_running(job_dir)


def test_without_flock_a_lock_file_keeps_one_process_per_job(tmp_path, no_flock):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    assert not is_running(job_dir)
    with job_lock(job_dir):
        owner = (job_dir / lock.OWNER_FILE).read_text()
        assert owner.startswith(f"pid {os.getpid()} on ")
        assert is_running(job_dir)
        with pytest.raises(JobAlreadyRunning, match=f"pid {os.getpid()}"):
            with job_lock(job_dir, wait_s=0.2):
                pass
        assert st.job_state(job_dir) == st.RUNNING
        assert st.delete_if_incomplete(job_dir) == st.RUNNING and job_dir.exists()
    assert not (job_dir / lock.OWNER_FILE).exists() and not is_running(job_dir)
    assert st.job_state(job_dir) == st.INTERRUPTED


def test_without_flock_the_lock_file_is_kept_alive_and_abandoned_ones_are_taken_over(
    tmp_path, no_flock, monkeypatch
):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    owner = job_dir / lock.OWNER_FILE

    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    with job_lock(job_dir):
        os.utime(owner, (time.time() - 1000, time.time() - 1000))
        time.sleep(0.3)
        assert time.time() - owner.stat().st_mtime < 1  # touched again

    # a process of this host that died: taken over at once
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    owner.write_text(f"pid {int(dead.stdout)} on {lock.socket.gethostname()} token x\n")
    assert not is_running(job_dir)
    with job_lock(job_dir, wait_s=0):
        assert f"pid {os.getpid()} " in owner.read_text()

    # a process on another host: alive while its file is touched, abandoned after STALE_S
    owner.write_text("pid 1 on some-other-node token y\n")
    assert is_running(job_dir)
    with pytest.raises(JobAlreadyRunning, match="pid 1 on some-other-node"):
        with job_lock(job_dir, wait_s=0.2):
            pass
    old = time.time() - lock.STALE_S - 10
    os.utime(owner, (old, old))
    assert not is_running(job_dir)
    with job_lock(job_dir, wait_s=0):
        assert f"pid {os.getpid()} " in owner.read_text()
    assert not owner.exists()


def test_taking_over_an_abandoned_lock_file_never_steals_a_new_one(tmp_path, monkeypatch):
    """Two processes find the same abandoned file; the other one replaces it with its own just
    after this one read it: this one must leave the new file in place."""
    owner = tmp_path / lock.OWNER_FILE
    owner.write_text("pid 1 on some-other-node token old\n")
    judge = lock._owner_alive

    def meanwhile(path, text=None):
        alive = judge(path, "pid 1 on some-other-node token old\n")
        path.write_text("pid 2 on yet-another-node token new\n")  # the other process took over
        return alive

    old = time.time() - lock.STALE_S - 10
    os.utime(owner, (old, old))
    monkeypatch.setattr(lock, "_owner_alive", meanwhile)
    assert not lock._take_over_if_abandoned(owner)
    assert owner.read_text() == "pid 2 on yet-another-node token new\n"
    assert [p.name for p in tmp_path.iterdir()] == [lock.OWNER_FILE]


@pytest.mark.slow
def test_without_flock_a_running_train_process_is_running_to_status_and_delete_incomplete(
    tmp_path, capsys, monkeypatch, no_flock
):
    """A real `train` process on a file system without flock: `sweep status` shows it running and
    `delete_incomplete` keeps it; it finishes normally."""
    out = tmp_path / "sweep"
    (job,) = Sweep(out, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], SHORT).jobs()
    script = (
        NO_FLOCK + "import sys\nfrom sage_bench.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "train", *job.overrides],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (job.job_dir / "results.jsonl").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        assert not (job.job_dir / "lock").read_text()  # no flock: nothing written there
        assert sweep_states([job]) == {job.job_dir: st.RUNNING}
        args = [
            "--output-dir",
            str(out),
            "--datasets",
            "RotatedDigits",
            "--algorithms",
            "ERM",
            "--test-envs",
            "0",
            "--n-hparams",
            "1",
            "--n-trials",
            "1",
            *SHORT,
        ]
        assert main(["sweep", "status", *args]) == 0
        assert "1 jobs: 0 done, 1 incomplete (1 running)" in capsys.readouterr().out
        assert main(["sweep", "delete_incomplete", *args, "--yes"]) == 0
        assert "no failed or interrupted job to delete" in capsys.readouterr().out
        # even when listed before it started, the job is looked at again under its lock
        assert st.delete_if_incomplete(job.job_dir) == st.RUNNING
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert (job.job_dir / "done").exists() and not (job.job_dir / lock.OWNER_FILE).exists()
    assert [r["step"] for r in read_records(job.job_dir)] == [0, 10, 20]


_HOLD = """
import sys, time
from sage_bench.lock import job_lock
with job_lock(sys.argv[1], wait_s=30) as held:
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow  # a second process and its waits
def test_a_lock_file_removed_on_release_passes_the_lock_to_one_waiter_at_a_time(tmp_path):
    """The holder deletes the file before it lets go: a process that waited on that file takes a
    new one, and a third process that arrives meanwhile cannot hold the lock at the same time."""
    job_dir = tmp_path / "job"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with job_lock(job_dir) as held:
        held.remove_on_release = True
        waiter = subprocess.Popen([sys.executable, "-c", _HOLD, str(job_dir), "2"], env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)  # the waiter has opened the file and waits for it
        assert waiter.poll() is None
    assert waiter.stdout.readline() == "holding\n"  # it took the lock, on a new file
    assert (job_dir / "lock").exists() and is_running(job_dir)
    with pytest.raises(JobAlreadyRunning, match=f"pid {waiter.pid} on"):
        with job_lock(job_dir, wait_s=0):
            pass
    assert waiter.wait(30) == 0
    with job_lock(job_dir, wait_s=0) as held:
        held.remove_on_release = True
    assert not (job_dir / "lock").exists() and not is_running(job_dir)


def test_a_finished_job_leaves_no_lock_file(tmp_path):
    out = tmp_path / "out"
    assert main(["train", "dataset=RotatedDigits", *SHORT, "progress=false", f"output_dir={out}"]) == 0
    (job_dir,) = out.iterdir()
    assert (job_dir / "done").exists() and not (job_dir / "lock").exists()
