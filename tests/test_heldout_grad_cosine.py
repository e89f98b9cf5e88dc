"""The held-out gradient cosine (Figure 5): its value, that it leaves training alone, its plot."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from sage_bench.algorithms import build_algorithm
from sage_bench.config import load_job
from sage_bench.errors import ConfigError
from sage_bench.records import MEASUREMENT_KEYS, read_records
from sage_bench.run import run_job
from sage_bench.run.alignment import HeldOutGradientProbe, held_out_gradient_cosine
from tests.helpers.nets import domains, tiny_mlp


def test_cosine_of_mean_training_gradient_with_the_test_gradient():
    network = tiny_mlp()
    algorithm = build_algorithm("ERM", network, torch.optim.SGD(network.parameters(), lr=0.1))
    algorithm.train()
    batches = domains((4,), 3, k=4, n=6, seed=2)
    train, test = batches[:3], batches[3:]
    before = [p.detach().clone() for p in network.parameters()]

    got = held_out_gradient_cosine(algorithm, train, test)

    def flat_grad(x, y):
        loss = F.cross_entropy(network(x), y)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(network.parameters()))])

    mean_train = torch.stack([flat_grad(x, y) for x, y in train]).mean(dim=0)
    expected = F.cosine_similarity(mean_train, flat_grad(*test[0]), dim=0).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert algorithm.training  # train mode restored
    assert all(p.grad is None for p in network.parameters())
    assert all(torch.equal(p, b) for p, b in zip(network.parameters(), before, strict=True))


def test_probe_leaves_the_global_generators_alone():
    network = tiny_mlp()
    algorithm = build_algorithm("ERM", network, torch.optim.SGD(network.parameters(), lr=0.1))
    test_set = TensorDataset(torch.randn(20, 4), torch.randint(3, (20,)))
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    probe = HeldOutGradientProbe([test_set], batch_size=5, seed=0, device=torch.device("cpu"))
    probe.measure(0, algorithm, domains((4,), 3, k=2, n=5))
    probe.measure(3, algorithm, domains((4,), 3, k=2, n=5, seed=1))
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    record = probe.record()
    assert [s for s, _ in record["test_grad_cosine_trace"]] == [0, 3]
    assert record["test_grad_cosine"] == pytest.approx(np.mean([c for _, c in record["test_grad_cosine_trace"]]))
    assert probe.record() == {}  # nothing measured since


SHORT = ["steps=11", "checkpoint_freq=5", "progress=false", "hparams.batch_size=16", "algorithm=SAGE", "test_envs=[1]"]


@pytest.mark.slow
def test_logging_the_cosine_does_not_change_training(tmp_path):
    from sage_bench.cli import main

    plain = run_job(load_job([*SHORT, f"output_dir={tmp_path / 'plain'}"]))
    logged = run_job(load_job([*SHORT, f"output_dir={tmp_path / 'logged'}", "test_grad_cosine_freq=2"]))
    a, b = read_records(plain), read_records(logged)
    compared = [k for k in a[0] if k.endswith("_acc") or k in ("loss", "perturbed_loss", "S", "beta")]
    assert [[r[k] for k in compared] for r in a] == [[r[k] for k in compared] for r in b]
    assert "test_grad_cosine" not in a[0]
    steps = [s for r in b for s, _ in r["test_grad_cosine_trace"]]
    assert steps == [0, 2, 4, 6, 8, 10]
    assert all(-1.0 <= c <= 1.0 for r in b for _, c in r["test_grad_cosine_trace"])

    out = tmp_path / "figure"
    assert main(["analyze", "alignment", str(tmp_path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (job,) = summary["data"]["jobs"].values()
    assert job["steps"] == steps and job["algorithm"] == "SAGE" and job["test_envs"] == [1]
    assert len(summary["notes"]) == 2  # the plain job is listed as skipped
    assert (out / "alignment.png").exists()
    # only jobs without the cosine: a clear error
    assert main(["analyze", "alignment", str(tmp_path / "plain"), "--out", str(out)]) == 2


def test_negative_frequency_is_refused():
    with pytest.raises(ConfigError, match="test_grad_cosine_freq"):
        load_job(["test_grad_cosine_freq=-1"])


@pytest.mark.slow
def test_a_resumed_job_records_the_same_cosines(tmp_path, monkeypatch):
    """Stopped between two measurements of one record interval, a job resumes with the test
    loaders where they were and the values measured so far: its records, cosines and traces
    included, are those of a job never stopped."""
    import os
    import signal

    from sage_bench.algorithms.erm import ERM
    from sage_bench.run import checkpoint as ckpt

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = ["steps=12", "checkpoint_freq=5", "progress=false", "hparams.batch_size=16", "test_envs=[1]", "test_grad_cosine_freq=3"]
        reference = read_records(run_job(load_job([*job, f"output_dir={tmp_path / 'reference'}"]), console=False))
        spec = load_job([*job, f"output_dir={tmp_path / 'stopped'}"])
        original, calls = ERM.update, iter(range(1, 100))

        def update(self, minibatches):
            if next(calls) == 8:  # step 7: step 6 measured, step 9 not yet, both in the record of step 10
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, minibatches)

        monkeypatch.setattr(ERM, "update", update)
        with pytest.raises(ckpt.JobInterrupted):
            run_job(spec, console=False)
        monkeypatch.undo()
        assert torch.load(spec.job_dir / ckpt.CHECKPOINT_FILE, weights_only=True)["probe"] == {"position": 3, "trace": [reference[2]["test_grad_cosine_trace"][0]]}
        resumed = read_records(run_job(spec, console=False))
    finally:
        torch.set_num_threads(previous)
    drop = (*MEASUREMENT_KEYS, "args")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [{k: v for k, v in r.items() if k not in drop} for r in reference]
    assert [s for r in resumed for s, _ in r.get("test_grad_cosine_trace", [])] == [0, 3, 6, 9]
