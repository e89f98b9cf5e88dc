"""The SAM family and SAGE: relations between them, SAGE's components, appendix D."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sage_bench.algorithms import build_algorithm
from sage_bench.algorithms.registry import DOMAIN_GENERALIZATION, algorithms
from sage_bench.algorithms.sharpness import TwoPassAlgorithm
from sage_bench.geometry import sam_perturbation, spectral_perturbation
from tests.helpers.nets import domains, small_cnn, tiny_mlp


def _run(name, net, batches_list, hparams, optimizer="sgd"):
    opt = (
        torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam(net.parameters(), lr=1e-2)
    )
    algo = build_algorithm(name, net, opt, hparams)
    return [algo.update(b) for b in batches_list], net


def _steps(n=4, k=3, seed=0):
    return [domains((4,), 3, k=k, n=5, seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("name, neutral", [("GSAM", {"alpha": 0.0}), ("DISAM", {"lambda": 0.0})])
def test_gsam_and_disam_reduce_to_sam(name, neutral, optimizer):
    steps = _steps()
    _, sam_net = _run("SAM", tiny_mlp(), steps, {"rho": 0.05}, optimizer)
    _, other_net = _run(name, tiny_mlp(), steps, {"rho": 0.05, **neutral}, optimizer)
    for a, b in zip(sam_net.parameters(), other_net.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_sagm_with_zero_alpha_descends_along_mean_of_clean_and_sam_gradients():
    net = tiny_mlp()
    ref = copy.deepcopy(net)
    batch = _steps(1)[0]
    algo = build_algorithm("SAGM", net, torch.optim.SGD(net.parameters(), lr=0.1), {"rho": 0.05, "alpha": 0.0})
    algo.update(batch)
    x = torch.cat([b[0] for b in batch])
    y = torch.cat([b[1] for b in batch])
    params = list(ref.parameters())
    g = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
    e = sam_perturbation(g, 0.05)
    moved = copy.deepcopy(ref)  # the same network at w + e
    with torch.no_grad():
        for p, d in zip(moved.parameters(), e, strict=True):
            p.add_(d)
    g_adv = torch.autograd.grad(F.cross_entropy(moved(x), y), list(moved.parameters()))
    for p, p0, a, b in zip(net.parameters(), params, g, g_adv, strict=True):
        assert torch.allclose(p, p0 - 0.1 * 0.5 * (a + b), atol=1e-6)


@pytest.mark.parametrize("name", sorted(algorithms(DOMAIN_GENERALIZATION)))
def test_update_returns_floats_and_changes_weights(name):
    net = small_cnn()
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    algo = build_algorithm(name, net, opt, num_domains=3, num_classes=10)
    stats = algo.update(domains((1, 16, 16), 10, k=3, n=4))
    assert stats and all(type(v) is float and math.isfinite(v) for v in stats.values())
    assert any(key == "loss" or key.endswith("_loss") or key.startswith("loss_") for key in stats)
    if isinstance(algo, TwoPassAlgorithm):
        assert "perturbed_loss" in stats
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def _sage(net, **hparams):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    return build_algorithm("SAGE", net, opt, {"rho": 0.05, "gamma": 0.01, **hparams})


def test_sage_beta_vanishes_for_identical_domains():
    batch = domains((4,), 3, k=1, n=6)[0]
    stats = _sage(tiny_mlp(), polar="svd").update([batch, batch, batch])
    assert stats["S"] == pytest.approx(1.0, abs=1e-6)
    assert stats["beta"] == pytest.approx(0.0, abs=1e-8)


def test_sage_beta_is_twice_gamma_for_opposed_domains():
    # At W = 0 a bias-free linear model has CE gradient (softmax - onehot) x^T, so a domain
    # with inputs -x and the same labels has exactly the opposite gradient: S = -1.
    net = nn.Linear(4, 3, bias=False)
    nn.init.zeros_(net.weight)
    x, y = torch.randn(6, 4), torch.randint(3, (6,))
    stats = _sage(net, gamma=0.01).update([(x, y), (-x, y)])
    assert stats["S"] == pytest.approx(-1.0, abs=1e-6)
    assert stats["beta"] == pytest.approx(0.02, rel=1e-6)


def test_sage_one_domain_has_full_agreement_and_no_noise():
    stats = _sage(tiny_mlp()).update(domains((4,), 3, k=1, n=6))
    assert stats["S"] == 1.0 and stats["beta"] == 0.0


def test_sage_zero_gradient_is_finite():
    net = nn.Linear(4, 3, bias=False)
    stats = _sage(net, polar="svd").update([(torch.zeros(3, 4), torch.tensor([0, 1, 2]))] * 2)
    assert all(math.isfinite(v) for v in stats.values())
    assert torch.isfinite(net.weight).all()


def _one_step(**switches):
    net = tiny_mlp()
    torch.manual_seed(123)  # fixes the noise seed drawn at construction
    algo = _sage(net, polar="svd", **switches)
    stats = algo.update(domains((4,), 3, k=3, n=5))
    return stats, [p.detach().clone() for p in net.parameters()]


def test_each_ablation_switch_changes_exactly_its_component():
    full, w_full = _one_step()
    no_noise, w_no_noise = _one_step(noise=False)
    no_ortho, _ = _one_step(orthogonalize=False)
    no_scale, _ = _one_step(layer_scale=False)
    zero_gamma, w_zero_gamma = _one_step(gamma=0.0)
    assert full["beta"] > 0
    # noise off: same perturbation, no noise: identical to gamma = 0
    assert no_noise["perturbed_loss"] == full["perturbed_loss"] and no_noise["beta"] == 0.0
    assert no_noise["S"] == full["S"]
    assert all(torch.equal(a, b) for a, b in zip(w_no_noise, w_zero_gamma, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(w_no_noise, w_full, strict=True))
    # the perturbation switches change the perturbed point, not the agreement or the noise scale
    for variant in (no_ortho, no_scale):
        assert variant["S"] == full["S"] and variant["beta"] == full["beta"]
        assert variant["perturbed_loss"] != full["perturbed_loss"]
    assert zero_gamma["S"] == full["S"]


def test_sage_noise_is_seeded_and_survives_a_state_dict_round_trip():
    def make():
        torch.manual_seed(7)
        net = tiny_mlp()
        return _sage(net), net

    steps = _steps(4)
    a, net_a = make()
    for b in steps:
        a.update(b)
    b_algo, net_b = make()
    for batch in steps[:2]:
        b_algo.update(batch)
    state = copy.deepcopy(b_algo.state_dict())
    opt_state = copy.deepcopy(b_algo.optimizer.state_dict())
    c, net_c = make()
    c.load_state_dict(state)
    c.optimizer.load_state_dict(opt_state)
    for batch in steps[2:]:
        c.update(batch)
    for p, q in zip(net_a.parameters(), net_c.parameters(), strict=True):
        assert torch.equal(p, q)


def _circles(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    radius = torch.cat([torch.ones(n // 2), 2 * torch.ones(n // 2)]) + 0.1 * torch.randn(n, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return x, torch.cat([torch.zeros(n // 2), torch.ones(n // 2)]).long()


def test_sage_sharpness_is_nearly_scale_invariant_and_sams_is_not():
    # Appendix D: W1 -> a W1, b1 -> a b1, W2 -> W2 / a leaves a ReLU MLP's function unchanged.
    torch.manual_seed(0)
    x, y = _circles()
    net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())

    def loss(ps):
        return F.cross_entropy(torch.relu(x @ ps[0].T + ps[1]) @ ps[2].T + ps[3], y)

    def sharpness(ps, kind):
        ps = [p.clone().requires_grad_() for p in ps]
        clean = loss(ps)
        grads = torch.autograd.grad(clean, ps)
        if kind == "SAM":
            e = sam_perturbation(grads, 0.05)
        else:
            e = spectral_perturbation(ps, grads, 0.01, polar="quintic")
        with torch.no_grad():
            return (loss([p + d for p, d in zip(ps, e, strict=True)]) - clean).item()

    spread = {}
    for kind in ("SAM", "SAGE"):
        values = []
        for a in (0.1, 0.3, 1.0, 3.0, 10.0):
            rescaled = [a * w1, a * b1, w2 / a, b2]
            assert torch.allclose(loss(rescaled), loss([w1, b1, w2, b2]), rtol=1e-4)
            values.append(sharpness(rescaled, kind))
        assert min(values) > 0
        spread[kind] = max(values) / min(values)
    assert spread["SAGE"] < 1.5
    assert spread["SAM"] > 10
