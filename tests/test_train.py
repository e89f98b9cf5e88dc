"""A job end to end: output folder, record format, determinism."""

from __future__ import annotations

import json
import shutil

import pytest

from sage_bench.config import load_job
from sage_bench.records import read_records
from sage_bench.run import run_job

SHORT = ["steps=21", "checkpoint_freq=10", "progress=false", "hparams.batch_size=16"]


def _run(tmp_path, *overrides):
    spec = load_job([*SHORT, f"output_dir={tmp_path}", *overrides])
    return spec, run_job(spec)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The folder of the job ``SHORT`` trained once, for the tests that need a finished job."""
    return _run(tmp_path_factory.mktemp("finished"))[1]


@pytest.mark.parametrize("dataset, n_envs", [("RotatedDigits", 6), ("ColoredDigits", 3)])
def test_short_run_writes_domainbed_records(tmp_path, dataset, n_envs):
    spec, job_dir = _run(tmp_path, f"dataset={dataset}", "test_envs=[1]")
    assert job_dir == tmp_path / spec.job_id
    assert (job_dir / "done").read_text() == "done"
    log = (job_dir / "out.txt").read_text()
    assert "HParams:" in log and "step" in log
    records = read_records(job_dir)
    assert [r["step"] for r in records] == [0, 10, 20]  # step % freq == 0, and the last step
    for r in records:
        expected = {"step", "epoch", "loss", "step_time", "mem_gb", "hparams", "args"}
        expected |= {f"env{i}_{s}_acc" for i in range(n_envs) for s in ("in", "out")}
        assert expected <= set(r)
        assert all(0.0 <= r[f"env{i}_in_acc"] <= 1.0 for i in range(n_envs))
        assert r["hparams"] == spec.hparams
        args = r["args"]
        assert args["dataset"] == dataset and args["algorithm"] == "ERM"
        assert args["test_envs"] == [1] and args["trial_seed"] == 0 and args["hparams_seed"] == 0
        assert args["output_dir"] == str(job_dir)
        assert isinstance(r["loss"], float) and r["step_time"] > 0 and r["mem_gb"] > 0
    in_len = 0.8 * 1797 / n_envs
    assert records[1]["epoch"] == pytest.approx(10 / (int(in_len) / 16), rel=0.02)
    # a DomainBed reader: every line is JSON with sorted keys
    lines = (job_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)


def test_same_arguments_same_accuracies(tmp_path, finished):
    a = finished
    _, b = _run(tmp_path / "b")
    ra, rb = read_records(a), read_records(b)
    keys = [k for k in ra[0] if k.endswith("_acc") or k == "loss"]
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]
    _, c = _run(tmp_path / "c", "seed=123")
    rc = read_records(c)
    assert [r["loss"] for r in rc] != [r["loss"] for r in ra]


def test_done_job_is_not_rerun(tmp_path, capsys, finished):
    job_dir = tmp_path / finished.name
    shutil.copytree(finished, job_dir)
    before = (job_dir / "results.jsonl").read_text()
    _run(tmp_path)
    assert "already done" in capsys.readouterr().out
    assert (job_dir / "results.jsonl").read_text() == before


def test_failure_is_written_to_err_txt(tmp_path, monkeypatch):
    from sage_bench.algorithms.erm import ERM

    def boom(self, minibatches):
        raise RuntimeError("exploded on purpose")

    monkeypatch.setattr(ERM, "update", boom)
    spec = load_job([*SHORT, f"output_dir={tmp_path}"])
    with pytest.raises(RuntimeError):
        run_job(spec)
    assert "exploded on purpose" in (spec.job_dir / "err.txt").read_text()
    assert not (spec.job_dir / "done").exists()


def test_cli_train_end_to_end(tmp_path, capsys):
    from sage_bench.cli import main

    code = main(["train", *SHORT, "dataset=ColoredDigits", "test_envs=[2]", f"output_dir={tmp_path}"])
    assert code == 0
    job_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert read_records(job_dir)[-1]["step"] == 20


@pytest.mark.parametrize("algorithm", ["SAM", "GSAM", "SAGM", "DISAM", "SAGE"])
def test_every_algorithm_trains_through_the_runner(tmp_path, algorithm):
    spec, job_dir = _run(tmp_path, f"algorithm={algorithm}", "steps=11", "checkpoint_freq=5")
    records = read_records(job_dir)
    assert [r["step"] for r in records] == [0, 5, 10]
    assert {"loss", "perturbed_loss"} <= set(records[-1])
    assert records[-1]["hparams"]["rho"] == spec.hparams["rho"]
    if algorithm == "SAGE":
        assert {"S", "beta"} <= set(records[-1])
        assert -1.0 <= records[-1]["S"] <= 1.0 and records[-1]["beta"] >= 0.0
