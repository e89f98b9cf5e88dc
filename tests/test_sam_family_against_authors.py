"""Each algorithm against an independent transcription of its authors' update (1e-6).

Both sides run in float64, so what is compared is the update rule, not float32 rounding
(which Adam amplifies wherever a gradient is rounding noise). The Newton-Schulz iterations
still run in float32 on both sides, as in training.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sage_bench.algorithms import build_algorithm
from tests.helpers.nets import domains, small_cnn, tiny_mlp
from tests.reference import updates as ref

STEPS = 4


def _optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4)


def _batches(shape, classes, k=3, n=5):
    steps = [domains(shape, classes, k=k, n=n, seed=10 * s) for s in range(STEPS)]
    return [[(x.double(), y) for x, y in batch] for batch in steps]


def _assert_same(net_a, net_b, tol=1e-6):
    for (name, a), b in zip(net_a.named_parameters(), net_b.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=tol), f"{name}: max diff {(a - b).abs().max().item():.2e}"
    for (name, a), b in zip(net_a.named_buffers(), net_b.buffers(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=tol), name


BASELINES = [
    ("SAM", {"rho": 0.05}, lambda m, o, b: ref.sam_step(m, o, b, rho=0.05)),
    ("GSAM", {"rho": 0.05, "alpha": 0.3}, lambda m, o, b: ref.gsam_step(m, o, b, rho=0.05, alpha=0.3)),
    ("SAGM", {"rho": 0.05, "alpha": 0.01}, lambda m, o, b: ref.sagm_step(m, o, b, rho=0.05, alpha=0.01)),
    ("DISAM", {"rho": 0.05, "lambda": 0.5}, lambda m, o, b: ref.disam_step(m, o, b, rho=0.05, lam=0.5)),
]


def _bn_mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("make_net, shape, classes", [(tiny_mlp, (4,), 3), (_bn_mlp, (4,), 3), (small_cnn, (1, 16, 16), 10)])
@pytest.mark.parametrize("name, hparams, reference_step", BASELINES, ids=[b[0] for b in BASELINES])
def test_baseline_matches_authors_update(name, hparams, reference_step, make_net, shape, classes, optimizer):
    net = make_net().double()
    twin = copy.deepcopy(net)
    algo = build_algorithm(name, net, _optimizer(optimizer, net.parameters()), hparams)
    twin_opt = _optimizer(optimizer, twin.parameters())
    for batch in _batches(shape, classes):
        ours = algo.update(batch)
        theirs = reference_step(twin, twin_opt, batch)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert ours["perturbed_loss"] == pytest.approx(theirs["perturbed_loss"], rel=1e-5)
    _assert_same(net, twin)


def test_disam_with_unequal_domain_batches_uses_sample_weighted_variance():
    net = tiny_mlp().double()
    twin = copy.deepcopy(net)
    g = torch.Generator().manual_seed(0)
    sizes = (2, 5, 9)
    batch = [
        (torch.randn(n, 4, generator=g, dtype=torch.float64) + i, torch.randint(3, (n,), generator=g))
        for i, n in enumerate(sizes)
    ]
    algo = build_algorithm("DISAM", net, torch.optim.SGD(net.parameters(), lr=0.1), {"rho": 0.05, "lambda": 1.0})
    algo.update(batch)
    ref.disam_step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), batch, rho=0.05, lam=1.0, weighting="samples")
    _assert_same(net, twin)


SAGE_VARIANTS = [
    {"polar": "svd"},
    {"polar": "quintic"},
    {"polar": "cubic", "ns_steps": 7},
    {"polar": "svd", "orthogonalize": False},
    {"polar": "svd", "layer_scale": False},
    {"polar": "svd", "noise": False},
    {"polar": "quintic", "domain_grads": "concat"},
]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("make_net, shape, classes", [(tiny_mlp, (4,), 3), (small_cnn, (1, 16, 16), 10)])
@pytest.mark.parametrize("variant", SAGE_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_sage_matches_algorithm_1(variant, make_net, shape, classes, optimizer):
    rho, gamma = 0.02, 0.05
    net = make_net().double()
    twin = copy.deepcopy(net)
    algo = build_algorithm("SAGE", net, _optimizer(optimizer, net.parameters()), {"rho": rho, "gamma": gamma, **variant})
    twin_opt = _optimizer(optimizer, twin.parameters())
    noise_source = torch.Generator().manual_seed(algo.noise_seed)  # the same draws as the algorithm's
    kwargs = {
        "polar": variant["polar"],
        "ns_steps": variant.get("ns_steps", 5),
        "orthogonalize": variant.get("orthogonalize", True),
        "layer_scale": variant.get("layer_scale", True),
        "noise_on": variant.get("noise", True),
    }
    for batch in _batches(shape, classes):
        ours = algo.update(batch)
        noise = ref.gaussian_noise(twin, noise_source) if kwargs["noise_on"] else None
        theirs = ref.sage_step(twin, twin_opt, batch, rho, gamma, noise, **kwargs)
        for key in ("loss", "perturbed_loss", "S", "beta"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key
    _assert_same(net, twin)
