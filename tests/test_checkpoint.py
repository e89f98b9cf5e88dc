"""Mid-run checkpoints: a stopped job resumes and writes what an uninterrupted one writes."""

from __future__ import annotations

import datetime
import errno
import io
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sage_bench.algorithms.erm import ERM
from sage_bench.cli import main
from sage_bench.config import load_job
from sage_bench.lock import JobAlreadyRunning, is_running, job_lock
from sage_bench.records import MEASUREMENT_KEYS, read_records
from sage_bench.run import checkpoint as ckpt
from sage_bench.run import run_job

REPO = Path(__file__).resolve().parents[1]
SHORT = ["steps=25", "checkpoint_freq=10", "progress=false", "hparams.batch_size=16"]


def comparable(job_dir: Path) -> list[dict]:
    """The records without what measures the machine (time, memory) or names the folder."""
    records = []
    for record in read_records(job_dir):
        record = {k: v for k, v in record.items() if k not in MEASUREMENT_KEYS}
        record["args"] = {k: v for k, v in record["args"].items() if k != "output_dir"}
        records.append(record)
    return records


def signal_at_update(monkeypatch, call: int, signum: int = signal.SIGTERM) -> None:
    """Make the process receive ``signum`` during the ``call``-th training step."""
    original = ERM.update
    calls = itertools.count(1)

    def update(self, minibatches):
        if next(calls) == call:
            os.kill(os.getpid(), signum)
        return original(self, minibatches)

    monkeypatch.setattr(ERM, "update", update)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The records of the uninterrupted job."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = load_job([*SHORT, f"output_dir={tmp_path_factory.mktemp('reference')}"])
        return comparable(run_job(spec))
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def _stopped_at_step_14(tmp_path_factory) -> Path:
    """The folder of a job stopped by SIGTERM during step 13: the records of steps 0 and 10 and
    the checkpoint before step 14 (the first test below checks exactly that)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = load_job([*SHORT, f"output_dir={tmp_path_factory.mktemp('stopped')}"])
        with pytest.MonkeyPatch.context() as patch:
            signal_at_update(patch, call=14)
            with pytest.raises(ckpt.JobInterrupted):
                run_job(spec)
        return spec.job_dir
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def stopped(tmp_path, _stopped_at_step_14):
    """This test's own copy of the job stopped at step 14, in ``tmp_path`` (the folder's name is
    the job's identity, so the same spec finds it there)."""
    spec = load_job([*SHORT, f"output_dir={tmp_path}"])
    shutil.copytree(_stopped_at_step_14, spec.job_dir)
    return spec


def test_sigterm_mid_run_then_resume_gives_the_same_records(tmp_path, monkeypatch, reference):
    spec = load_job([*SHORT, f"output_dir={tmp_path}"])
    signal_at_update(monkeypatch, call=14)  # step 13: between the records of steps 10 and 20
    with pytest.raises(ckpt.JobInterrupted) as stopped:
        run_job(spec)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.next_step == 14
    assert [r["step"] for r in read_records(spec.job_dir)] == [0, 10]
    assert (spec.job_dir / ckpt.CHECKPOINT_FILE).exists()
    assert not (spec.job_dir / "err.txt").exists()  # stopped, not failed
    assert not (spec.job_dir / "done").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    monkeypatch.undo()
    run_job(spec)
    assert comparable(spec.job_dir) == reference
    lines = (spec.job_dir / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 10, 20, 24]  # no duplicate line
    assert "resumed from the checkpoint before step 14" in (spec.job_dir / "out.txt").read_text()
    assert sorted(p.name for p in spec.job_dir.iterdir()) == [
        "done",
        "job.json",
        "out.txt",  # no lock file: a finished job leaves none
        "results.jsonl",
    ]


def test_records_written_after_the_checkpoint_are_dropped_on_resume(stopped, reference):
    """A job killed after writing a record but before its next checkpoint (or while writing a
    line) leaves records the resumed run writes again: they are dropped, never duplicated."""
    spec = stopped
    results = spec.job_dir / "results.jsonl"
    stale = dict(read_records(spec.job_dir)[-1], step=20, loss=123.0)
    with open(results, "a") as f:
        f.write(
            json.dumps(stale) + "\n" + '{"step": 24, "loss": 0.5, "env0_in'
        )  # cut short by a kill
    run_job(spec)
    assert comparable(spec.job_dir) == reference


def test_killed_job_resumes_from_its_last_periodic_checkpoint(tmp_path, monkeypatch, reference):
    spec = load_job([*SHORT, f"output_dir={tmp_path}"])
    original = ERM.update
    calls = itertools.count(1)

    def update(self, minibatches):
        if next(calls) == 17:
            raise SystemExit("killed")  # no chance to save: the checkpoint of step 11 remains
        return original(self, minibatches)

    monkeypatch.setattr(ERM, "update", update)
    with pytest.raises(SystemExit):
        run_job(spec)
    assert ckpt.load_checkpoint(spec.job_dir, spec.job_id, spec.settings.steps).step == 11
    monkeypatch.undo()
    run_job(spec)
    assert comparable(spec.job_dir) == reference
    assert not (spec.job_dir / "err.txt").exists()  # a successful run clears the old error


def _foreign_job_checkpoint(path: Path, spec) -> None:
    other = load_job([*SHORT, "output_dir=unused", "trial_seed=1"])
    payload = torch.load(path, weights_only=True)
    payload["job_id"] = other.job_id
    torch.save(payload, path)


def _unsafe_pickle(path: Path, spec) -> None:
    torch.save({"format": ckpt.FORMAT, "when": datetime.date(2024, 1, 1)}, path)


def _garbage(path: Path, spec) -> None:
    path.write_bytes(b"\x00not a checkpoint" * 100)


def _truncated(path: Path, spec) -> None:
    path.write_bytes(path.read_bytes()[:2000])


def _wrong_network(path: Path, spec) -> None:
    payload = torch.load(path, weights_only=True)
    payload["algorithm"] = {
        k: v[..., :1] if v.dim() else v for k, v in payload["algorithm"].items()
    }
    torch.save(payload, path)


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (_garbage, "cannot be read"),
        (_truncated, "cannot be read"),
        (_unsafe_pickle, "cannot be read"),
        (_foreign_job_checkpoint, "belongs to job"),
        (_wrong_network, "does not fit this job"),
    ],
)
def test_unusable_checkpoint_is_reported_and_the_job_starts_over(stopped, reference, spoil, reason):
    spec = stopped
    spoil(spec.job_dir / ckpt.CHECKPOINT_FILE, spec)

    spoiled = (spec.job_dir / ckpt.CHECKPOINT_FILE).read_bytes()

    run_job(spec)
    assert comparable(spec.job_dir) == reference
    log = (spec.job_dir / "out.txt").read_text()
    assert reason in log and "starting again from step 0" in log
    assert not (spec.job_dir / ckpt.CHECKPOINT_FILE).exists()
    (aside,) = spec.job_dir.glob(ckpt.CHECKPOINT_FILE + ".unusable-*")  # kept for a look, not deleted
    assert aside.read_bytes() == spoiled and f"moved it to {aside}" in log


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE])
def test_a_checkpoint_that_cannot_be_read_from_disk_fails_the_job_and_stays(stopped, monkeypatch, reference, code):
    """An I/O error (a failing disk, a stale NFS handle) is not a bad checkpoint: the job fails,
    so that it is retried, and the checkpoint is left as it is; the retry resumes from it."""
    spec = stopped
    saved = (spec.job_dir / ckpt.CHECKPOINT_FILE).read_bytes()

    def failing_read(f, *args, **kwargs):
        f.read(100)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "load", failing_read)
    with pytest.raises(OSError, match="cannot read the checkpoint .* it is kept"):
        run_job(spec)
    monkeypatch.undo()
    assert (spec.job_dir / ckpt.CHECKPOINT_FILE).read_bytes() == saved
    assert not list(spec.job_dir.glob("*.unusable-*"))
    assert os.strerror(code) in (spec.job_dir / "err.txt").read_text()
    run_job(spec)
    assert comparable(spec.job_dir) == reference
    assert "resumed from the checkpoint before step 14" in (spec.job_dir / "out.txt").read_text()


def _stored_computation(path: Path, **changes) -> None:
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            payload["computation"][section][name] = value
        else:
            payload["computation"][section] = value
    torch.save(payload, path)


@pytest.mark.parametrize(
    "change, said",
    [
        # an upgrade that changed a default: the old optimizer state must not continue as the new
        ({"hparams__lr": 0.0005}, "hparams.lr was 0.0005, now 0.001"),
        ({"sage_bench": "0.0.9"}, "sage-bench 0.0.9 wrote it, this is "),
        # written in another precision
        ({"args__tf32": False}, "args.tf32 was False, now 'auto'"),
        ({"version": 1}, "an older sage-bench wrote it without the hyperparameters"),
    ],
)
def test_a_checkpoint_of_another_computation_is_refused_until_asked_to_start_over(
    tmp_path, stopped, capsys, reference, change, said
):
    command = [*SHORT, f"output_dir={tmp_path}"]
    spec = stopped
    path = spec.job_dir / ckpt.CHECKPOINT_FILE
    if change.get("version"):
        payload = torch.load(path, weights_only=True)
        payload["version"] = 1
        del payload["computation"]
        torch.save(payload, path)
    else:
        _stored_computation(path, **change)
    saved = path.read_bytes()

    assert main(["train", *command]) == 2
    err = capsys.readouterr().err
    assert said in err and "--start-over" in err and "delete_incomplete" in err
    assert path.read_bytes() == saved  # nothing resumed, nothing lost
    assert said in (spec.job_dir / "err.txt").read_text()

    assert main(["train", *command, "--start-over"]) == 0
    # named for what it is: a checkpoint set aside by --start-over, not an unusable one
    assert not list(spec.job_dir.glob(ckpt.CHECKPOINT_FILE + ".unusable-*"))
    (aside,) = spec.job_dir.glob(ckpt.CHECKPOINT_FILE + ".before-start-over-*")
    assert aside.read_bytes() == saved
    assert comparable(spec.job_dir) == reference
    assert "starting over from step 0 as asked" in (spec.job_dir / "out.txt").read_text()


@pytest.mark.slow
def test_sigterm_to_the_train_command_saves_and_the_same_command_resumes(tmp_path, reference):
    """A real signal from outside: the process stops after its step with exit code 128 + 15."""
    command = [sys.executable, "-m", "sage_bench.cli", "train", *SHORT, f"output_dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    job_dir = load_job([*SHORT, f"output_dir={tmp_path}"]).job_dir
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not read_records(job_dir) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "the same command resumes it" in stderr
    stopped_at = torch.load(job_dir / ckpt.CHECKPOINT_FILE, weights_only=True)["step"]
    assert 0 < stopped_at < 25
    assert subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode == 0
    assert comparable(job_dir) == reference


def test_final_model_is_kept_only_when_asked(tmp_path):
    spec = load_job([*SHORT, "steps=3", f"output_dir={tmp_path / 'a'}"])
    assert not (run_job(spec) / "model.pt").exists()
    spec = load_job([*SHORT, "steps=3", f"output_dir={tmp_path / 'b'}", "save_final_model=true"])
    model = torch.load(run_job(spec) / "model.pt", weights_only=True)
    assert model["args"]["job_id"] == spec.job_id
    assert {"network.head.weight", "network.head.bias"} <= set(model["algorithm"])
    assert not (spec.job_dir / ckpt.CHECKPOINT_FILE).exists()


def test_rng_states_round_trip_through_a_safe_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ckpt.capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint readable."""
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ckpt.save_checkpoint(tmp_path, "job", 5, net, opt, {"loss": [1.0]})

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, "job", 9, net, opt, {"loss": [2.0]})
    monkeypatch.undo()
    loaded = ckpt.load_checkpoint(tmp_path, "job", steps=10)
    assert loaded.step == 5 and loaded.interval == {"loss": [1.0]}
    assert not (tmp_path / (ckpt.CHECKPOINT_FILE + ".tmp")).exists()


@pytest.mark.parametrize("found", [signal.default_int_handler, signal.SIG_IGN], ids=["interactive", "background"])
def test_second_ctrl_c_stops_at_once(found):
    """A job takes Ctrl-C whatever SIGINT handler the process started with (started in the
    background, by nohup-like tools or some CI runners, SIGINT is ignored) and gives back the
    one it found."""
    started_with = signal.signal(signal.SIGINT, found)
    try:
        with ckpt.StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert stop.received == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is found
    finally:
        signal.signal(signal.SIGINT, started_with)


def test_a_job_runs_in_one_process_at_a_time(tmp_path):
    spec = load_job([*SHORT, f"output_dir={tmp_path}"])
    spec.job_dir.mkdir(parents=True)
    assert not is_running(spec.job_dir)
    with job_lock(spec.job_dir):
        assert is_running(spec.job_dir)
        with pytest.raises(JobAlreadyRunning, match=f"pid {os.getpid()}"):
            with job_lock(spec.job_dir, wait_s=0.2):
                pass
    assert not is_running(spec.job_dir)


# -- preemption: the whole process group, with data-loading workers --------------------------

WORKERS = ["dataset=ColoredDigits", "num_workers=1", "steps=12", "checkpoint_freq=10", "progress=false", "hparams.batch_size=16"]


@pytest.fixture(scope="module")
def reference_with_workers(tmp_path_factory) -> list[dict]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return comparable(run_job(load_job([*WORKERS, f"output_dir={tmp_path_factory.mktemp('workers')}"])))
    finally:
        torch.set_num_threads(previous)


def _start_in_own_group(command: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, kill_workers", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)]
)
def test_a_stop_signal_to_the_process_group_of_a_job_with_workers(tmp_path, reference_with_workers, signum, kill_workers):
    """SLURM signals every process of a job (SIGTERM on preemption and scancel), a terminal every
    process of its foreground group (Ctrl-C). The loader workers leave the signal to the main
    process, which saves the step it is at, says so once and exits 128 + the signal; a resume
    writes the records of an uninterrupted run. Workers killed outright after the signal
    (SIGKILL) are part of the same stop, not a failure."""
    command = [sys.executable, "-m", "sage_bench.cli", "train", *WORKERS, f"output_dir={tmp_path}"]
    job_dir = load_job([*WORKERS, f"output_dir={tmp_path}"]).job_dir
    proc = _start_in_own_group(command)
    try:
        deadline = time.monotonic() + 180
        while not (job_dir / ckpt.CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        group = os.getpgid(proc.pid)
        assert group == proc.pid and _children(proc.pid)  # the workers are in its group
        os.killpg(group, signal.SIGSTOP)  # hold everything mid-run, whatever the machine's speed
        os.killpg(group, signum)
        if kill_workers:
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
        os.killpg(group, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + signum, stderr
    assert stderr.count("stopping after this step") == 1, stderr  # said by the main process only
    assert not (job_dir / "err.txt").exists()
    if not kill_workers:  # the step it was at is saved, not only the last periodic checkpoint
        assert re.search(r"stopped by SIG\w+ before step \d+; the checkpoint is saved", stderr), stderr
    assert ckpt.load_checkpoint(job_dir, job_dir.name, 12) is not None

    resumed = _start_in_own_group(command)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert comparable(job_dir) == reference_with_workers


@pytest.mark.slow
def test_kill_9_to_the_process_group_then_the_same_command_resumes(tmp_path, reference_with_workers):
    """SIGKILL to every process of a job (SLURM's last word after SIGTERM, the OOM killer, a node
    lost): no chance to save; the job resumes from its last periodic checkpoint and writes the
    records of an uninterrupted run."""
    command = [sys.executable, "-m", "sage_bench.cli", "train", *WORKERS, f"output_dir={tmp_path}"]
    job_dir = load_job([*WORKERS, f"output_dir={tmp_path}"]).job_dir
    proc = _start_in_own_group(command)
    try:
        deadline = time.monotonic() + 180
        while len(read_records(job_dir)) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # killed after the record of step 10, before or after the checkpoint that follows it
    assert ckpt.load_checkpoint(job_dir, job_dir.name, 12).step in (1, 11)
    resumed = _start_in_own_group(command)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert comparable(job_dir) == reference_with_workers


def test_loader_workers_ignore_the_stop_signals():
    from sage_bench.data.loaders import eval_loader, infinite_loader

    class Handlers(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            ignored = [signal.getsignal(s) is signal.SIG_IGN for s in ckpt.STOP_SIGNALS]
            return torch.tensor(ignored + [os.getpid() != main_pid])

    main_pid = os.getpid()
    with ckpt.StopSignals():
        batch = next(infinite_loader(Handlers(), 2, seed=0, num_workers=1))
        assert batch.all()
        assert all(b.all() for b in eval_loader(Handlers(), 2, num_workers=1))
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN  # this process still stops
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, [])  # nothing left blocked


class _Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        return torch.full((4,), float(index))


def _killed_worker(iterator) -> int:
    """SIGKILL the (single) worker of ``iterator`` and wait until it is gone; its pid."""
    (worker,) = iterator._workers
    os.kill(worker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker.pid}/stat").exists() and " Z " not in Path(f"/proc/{worker.pid}/stat").read_text():
        assert time.monotonic() < deadline, "the worker did not die"
        time.sleep(0.01)
    return worker.pid


def test_a_dead_loader_worker_is_reported_by_the_next_read_and_nowhere_else():
    """PyTorch raises its report of a dead worker from its SIGCHLD handler, wherever the main
    thread is: in the middle of a checkpoint being written or of a log line. Here only a read
    reports it, and closing the loaders does not wait for the dead worker."""
    from sage_bench.data.loaders import close_loaders, infinite_loader, is_worker_death

    it = infinite_loader(_Numbers(), 4, seed=0, num_workers=1)
    alive = infinite_loader(_Numbers(), 4, seed=1, num_workers=1)
    next(it), next(alive)
    pid = _killed_worker(it)
    for _ in range(20):  # SIGCHLD has arrived: plain work, a checkpoint write, and no exception
        torch.save({"w": torch.randn(256, 256)}, io.BytesIO())
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match=f"DataLoader worker \\(pid {pid}\\)") as died:
        next(it)
    assert is_worker_death(died.value)
    workers = [*it._workers, *alive._workers]
    started = time.monotonic()
    close_loaders()
    assert time.monotonic() - started < 10
    assert not any(w.is_alive() for w in workers)  # they ignore SIGTERM: they were killed


@pytest.mark.slow
def test_a_loader_worker_killed_without_a_stop_signal_fails_the_job_and_the_process_ends(tmp_path):
    """The OOM killer takes a loader worker: the job fails, saying so in err.txt, and the process
    ends (its other loaders' workers ignore SIGTERM, so nothing may leave them for
    ``multiprocessing`` to wait for at exit)."""
    overrides = [*WORKERS, "steps=400", f"output_dir={tmp_path}"]
    job_dir = load_job(overrides).job_dir
    proc = _start_in_own_group([sys.executable, "-m", "sage_bench.cli", "train", *overrides])
    try:
        deadline = time.monotonic() + 180
        while not (job_dir / ckpt.CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        os.kill(_children(proc.pid)[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1, stderr
    reason = (job_dir / "err.txt").read_text().splitlines()[-1]
    # PyTorch words it by how it noticed: SIGCHLD during the read, or its periodic check; the
    # loader, a socket broken mid-send (sage_bench.data.loaders)
    assert re.fullmatch(
        r"RuntimeError: DataLoader worker \(pid(\(s\))? \d+\) (is killed by signal: Killed|exited unexpectedly"
        r"( while sending a batch \((ConnectionResetError|EOFError|BrokenPipeError|ConnectionError).*\))?)\.? ?",
        reason,
    ), reason
