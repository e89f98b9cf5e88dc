"""Mid-run checkpoints: a stopped job resumes and writes what an uninterrupted one writes."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sage_bench.algorithms.erm import ERM
from sage_bench.config import load_job
from sage_bench.records import read_records
from sage_bench.run import checkpoint as ckpt
from sage_bench.run import run_job
from sage_bench.run.lock import JobAlreadyRunning, is_running, job_lock

REPO = Path(__file__).resolve().parents[1]
SHORT = ["steps=25", "checkpoint_freq=10", "progress=false", "hparams.batch_size=16"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the CPU kernels' sums then do not depend on the machine's load,
    and the subprocesses below (OMP_NUM_THREADS=1) compute exactly what this process does."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def comparable(job_dir: Path) -> list[dict]:
    """The records without what measures the machine (time, memory) or names the folder."""
    records = []
    for record in read_records(job_dir):
        record = {k: v for k, v in record.items() if k not in ("step_time", "mem_gb")}
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
        "lock",
        "out.txt",
        "results.jsonl",
    ]


def test_records_written_after_the_checkpoint_are_dropped_on_resume(
    tmp_path, monkeypatch, reference
):
    """A job killed after writing a record but before its next checkpoint (or while writing a
    line) leaves records the resumed run writes again: they are dropped, never duplicated."""
    spec = load_job([*SHORT, f"output_dir={tmp_path}"])
    signal_at_update(monkeypatch, call=14)
    with pytest.raises(ckpt.JobInterrupted):
        run_job(spec)
    monkeypatch.undo()
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
    assert ckpt.load_checkpoint(spec.job_dir, spec.job_id, spec.steps).step == 11
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
def test_unusable_checkpoint_is_reported_and_the_job_starts_over(
    tmp_path, monkeypatch, reference, spoil, reason
):
    spec = load_job([*SHORT, f"output_dir={tmp_path}"])
    signal_at_update(monkeypatch, call=14)
    with pytest.raises(ckpt.JobInterrupted):
        run_job(spec)
    monkeypatch.undo()
    spoil(spec.job_dir / ckpt.CHECKPOINT_FILE, spec)

    run_job(spec)
    assert comparable(spec.job_dir) == reference
    log = (spec.job_dir / "out.txt").read_text()
    assert reason in log and "starting again from step 0" in log
    assert not (spec.job_dir / ckpt.CHECKPOINT_FILE).exists()


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
