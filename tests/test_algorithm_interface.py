"""``build_algorithm`` wraps any classifier and optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sage_bench.algorithms import build_algorithm
from sage_bench.hparams import HParamError


def _domains(k=3, n=5, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g), torch.randint(classes, (n,), generator=g)) for _ in range(k)]


def test_erm_on_a_users_model_with_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = [p.detach().clone() for p in model.parameters()]
    algo = build_algorithm("ERM", model, torch.optim.SGD(model.parameters(), lr=0.1), {"lr": 0.1})
    stats = algo.update(_domains())
    assert set(stats) == {"loss"} and type(stats["loss"]) is float
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert algo.predict(torch.randn(2, 4)).shape == (2, 3)


def test_erm_update_is_one_step_of_mean_cross_entropy():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ref = nn.Linear(4, 3)
    ref.load_state_dict(model.state_dict())
    batches = _domains()
    algo = build_algorithm("ERM", model, torch.optim.SGD(model.parameters(), lr=0.5))
    algo.update(batches)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loss = nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, p_ref, g in zip(model.parameters(), ref.parameters(), grads, strict=True):
        assert torch.allclose(p, p_ref - 0.5 * g, atol=1e-7)


def test_unknown_names_are_errors():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(HParamError, match="unknown algorithm 'Nope'.*ERM"):
        build_algorithm("Nope", model, opt)
    with pytest.raises(HParamError, match="unknown hyperparameter 'rho'"):
        build_algorithm("ERM", model, opt, {"rho": 0.1})


def test_out_of_range_hyperparameters_are_refused():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(HParamError, match=r"hparams.rho=-1.0 is out of range: must be in \[0, inf\)"):
        build_algorithm("SAGE", model, opt, {"rho": -1})
    with pytest.raises(HParamError, match=r"hparams.ns_steps=0 is out of range: must be in \[1, inf\)"):
        build_algorithm("SAGE", model, opt, {"ns_steps": 0})
    with pytest.raises(HParamError, match=r"hparams.alpha=1.5 is out of range: must be in \[0, 1\]"):
        build_algorithm("GSAM", model, opt, {"alpha": 1.5})
    with pytest.raises(HParamError, match="hparams.gamma=inf is out of range"):
        build_algorithm("SAGE", model, opt, {"gamma": float("inf")})
    assert build_algorithm("SAGE", model, opt, {"rho": 0, "gamma": 0.0}).hparams["rho"] == 0.0
