"""A checkpoint carries the state of Table 1's stateful baselines: resuming gives what an
uninterrupted run gives, bit for bit (CPU).

Two levels: an algorithm saved with the runner's checkpoint functions (``torch.load`` with
``weights_only=True``) into a freshly built one, mid-run; and whole jobs stopped by SIGTERM and
run again (slow).
"""

from __future__ import annotations

import itertools
import os
import signal

import numpy as np
import pytest
import torch

from sage_bench.algorithms import ALGORITHMS, build_algorithm
from sage_bench.algorithms import gradient_agreement as gga
from sage_bench.config import load_job
from sage_bench.run import checkpoint as ckpt
from sage_bench.run import run_job
from tests.test_checkpoint import comparable
from tests.test_table1_baselines_against_sources import K, batches, tiny_classifier

# name, hyperparameters that put the interesting state change after the checkpoint (update 3)
STATEFUL = [
    ("IRM", {"irm_penalty_anneal_iters": 4, "irm_lambda": 10.0}),  # the optimizer reset after resuming
    ("VREx", {"vrex_penalty_anneal_iters": 4}),
    ("GroupDRO", {"groupdro_eta": 0.5}),  # q
    ("Mixup", {}),  # torch's and NumPy's global generators
    ("Fish", {}),  # the inner optimizer's state
    ("DANN", {"mlp_dropout": 0.3, "d_steps_per_g_step": 2}),  # update_count, two optimizers
    ("CDANN", {"mlp_dropout": 0.3}),
    ("IIB", {}),  # its parameter group, BatchNorm statistics, sampling
    ("GGA", {"start_step": 3, "end_step": 4, "neighborhoodSize": 0.02}),  # update_count, uniform draws
    ("GGA-L", {}),
]


def _build(name, hparams, seed):
    net = tiny_classifier(seed=seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    return build_algorithm(name, net, optimizer, hparams, num_domains=K, num_classes=3), optimizer


def _run(name, hparams, tmp_path=None, stop_at=None):
    torch.manual_seed(0)
    np.random.seed(0)
    algo, optimizer = _build(name, hparams, seed=0)
    stats = []
    for t, batch in enumerate(batches(steps=6)):
        if t == stop_at:
            ckpt.save_checkpoint(tmp_path, "job", t, algo, optimizer, {})
            torch.manual_seed(99)  # whatever happens in between
            np.random.seed(99)
            algo, optimizer = _build(name, hparams, seed=5)  # a new process builds everything again
            saved = ckpt.load_checkpoint(tmp_path, "job", 6)
            ckpt.restore_checkpoint(saved, algo, optimizer)
        stats.append(algo.update(batch))
    return stats, algo.state_dict(), optimizer.state_dict()


@pytest.mark.parametrize("name, hparams", STATEFUL, ids=[s[0] for s in STATEFUL])
def test_resuming_an_algorithm_from_a_checkpoint_changes_nothing(name, hparams, tmp_path, monkeypatch):
    monkeypatch.setattr(gga, "SEARCH_STEPS", 20)  # the search's length does not matter here
    stats, state, opt_state = _run(name, hparams)
    stats_resumed, state_resumed, opt_state_resumed = _run(name, hparams, tmp_path, stop_at=3)
    assert stats_resumed == stats
    assert list(state_resumed) == list(state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(state_resumed[key], value), key
    assert str(opt_state_resumed) == str(opt_state)


def test_groupdro_q_loads_whether_or_not_it_has_been_set(tmp_path):
    algo, optimizer = _build("GroupDRO", {}, seed=0)
    ckpt.save_checkpoint(tmp_path, "job", 1, algo, optimizer, {})  # before the first update: q is empty
    algo.update(batches(1)[0])
    fresh, _ = _build("GroupDRO", {}, seed=0)
    fresh.load_state_dict(algo.state_dict())  # an empty q takes a set one
    assert torch.equal(fresh.q, algo.q) and fresh.q.numel() == K
    ckpt.restore_checkpoint(ckpt.load_checkpoint(tmp_path, "job", 6), algo, optimizer)  # and back
    assert algo.q.numel() == 0


# --------------------------------------------------------------------------------------------
# Whole jobs, stopped by SIGTERM after the checkpoint of step 5 and run again

JOB = ["steps=9", "checkpoint_freq=5", "progress=false", "hparams.batch_size=4", "test_envs=[0,1,2]"]
JOB_HPARAMS = {"IRM": ["hparams.irm_penalty_anneal_iters=7"]}  # the optimizer resets after resuming


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tensors this small compute fastest on one thread (``conftest.one_thread``)."""
    yield


@pytest.mark.slow
@pytest.mark.parametrize("name", ["IRM", "GroupDRO", "Fish", "CDANN", "IIB"])  # one of each kind of state
def test_a_stopped_job_resumes_to_the_same_records(name, tmp_path, monkeypatch):
    overrides = [*JOB, f"algorithm={name}", *JOB_HPARAMS.get(name, [])]
    reference = comparable(run_job(load_job([*overrides, f"output_dir={tmp_path / 'a'}"])))

    spec = load_job([*overrides, f"output_dir={tmp_path / 'b'}"])
    original = ALGORITHMS[name].update
    calls = itertools.count(1)

    def update(self, minibatches):
        if next(calls) == 7:  # during step 6, after the checkpoint before step 6
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, minibatches)

    monkeypatch.setattr(ALGORITHMS[name], "update", update)
    with pytest.raises(ckpt.JobInterrupted):
        run_job(spec, console=False)
    monkeypatch.setattr(ALGORITHMS[name], "update", original)
    run_job(spec, console=False)
    assert comparable(spec.job_dir) == reference
