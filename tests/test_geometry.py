"""Polar factors, per-domain gradients, agreement, perturbations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sage_bench.geometry import (
    domain_gradients,
    global_norm,
    mean_pairwise_cosine,
    orthogonality_error,
    perturbed,
    polar_factor,
    sam_perturbation,
    spectral_perturbation,
)
from tests.helpers.nets import domains, small_cnn, small_vit, tiny_mlp


def _svd_polar(g: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    return (u @ vh).float()


@pytest.mark.parametrize("shape", [(6, 6), (12, 5), (5, 12), (32, 16)])
def test_polar_factors_against_svd(shape, capsys):
    torch.manual_seed(0)
    g = torch.randn(*shape)
    exact = _svd_polar(g)
    q_svd = polar_factor(g, "svd")
    assert torch.allclose(q_svd, exact, atol=1e-5)
    assert orthogonality_error(q_svd) < 1e-5
    # Muon's quintic iteration stops at singular values of roughly 0.7..1.2, by design
    q5 = polar_factor(g, "quintic", steps=5)
    s5 = torch.linalg.svdvals(q5)
    assert s5.min() > 0.6 and s5.max() < 1.25
    assert torch.linalg.matrix_norm(q5 - exact) / torch.linalg.matrix_norm(exact) < 0.35
    # the cubic iteration of Eq. 7 converges to U V^T given enough steps
    q3_long = polar_factor(g, "cubic", steps=60)
    assert torch.allclose(q3_long, exact, atol=1e-4)
    with capsys.disabled():
        errors = {m: orthogonality_error(polar_factor(g, m)).item() for m in ("svd", "quintic", "cubic")}
        print(f"\n  orthogonality error {shape}: " + ", ".join(f"{m}={e:.2e}" for m, e in errors.items()))


def test_polar_factor_batches_and_zero():
    torch.manual_seed(1)
    stack = torch.randn(4, 8, 3)
    for method in ("svd", "quintic", "cubic"):
        batched = polar_factor(stack, method)
        single = torch.stack([polar_factor(m, method) for m in stack])
        assert torch.allclose(batched, single, atol=1e-6)
        zero = polar_factor(torch.zeros(5, 7), method)
        assert torch.equal(zero, torch.zeros(5, 7))
    assert polar_factor(torch.randn(3, 3, dtype=torch.float64), "quintic").dtype == torch.float64


def _grads(loss, params, retain_graph=False):
    return torch.autograd.grad(loss, params, retain_graph=retain_graph)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("make_net, shape, classes", [(small_cnn, (1, 16, 16), 10), (small_vit, (3, 32, 32), 5)])
def test_domain_gradient_methods_agree(make_net, shape, classes):
    net = make_net()
    params = [p for p in net.parameters() if p.requires_grad]
    batches = domains(shape, classes, k=3, n=4)
    ref = domain_gradients(net, params, batches, method="concat")
    # independent check of the reference: K separate losses through one concatenated forward
    x = torch.cat([b[0] for b in batches])
    logits = net(x)
    for k, (_, y) in enumerate(batches):
        expected = _grads(F.cross_entropy(logits[4 * k : 4 * k + 4], y), params, retain_graph=True)
        for a, b in zip(ref.grads[k], expected, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    total = _grads(F.cross_entropy(net(x), torch.cat([b[1] for b in batches])), params)
    for a, b in zip(ref.total, total, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    for method in ("chunks", "vmap"):
        got = domain_gradients(net, params, batches, method=method)
        assert torch.allclose(got.losses, ref.losses, rtol=1e-5)
        for gk, rk in zip(got.grads, ref.grads, strict=True):
            for a, b in zip(gk, rk, strict=True):
                assert (a - b).norm() <= 1e-5 * b.norm() + 1e-8
        for a, b in zip(got.total, ref.total, strict=True):
            assert (a - b).norm() <= 1e-5 * b.norm() + 1e-8


def test_domain_gradients_weight_by_domain_size():
    net = tiny_mlp()
    params = list(net.parameters())
    batches = [(torch.randn(2, 4), torch.tensor([0, 1])), (torch.randn(6, 4), torch.randint(3, (6,)))]
    got = domain_gradients(net, params, batches)
    assert torch.allclose(got.weights, torch.tensor([0.25, 0.75]))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loss = F.cross_entropy(net(x), y)
    assert torch.allclose(got.loss, loss)
    for a, b in zip(got.total, _grads(loss, params), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_agreement_of_identical_and_opposed_gradients():
    g = [torch.randn(3, 4), torch.randn(5)]
    assert mean_pairwise_cosine([g, g, g]).item() == pytest.approx(1.0, abs=1e-6)
    assert mean_pairwise_cosine([g, [-t for t in g]]).item() == pytest.approx(-1.0, abs=1e-6)
    assert mean_pairwise_cosine([g]).item() == 1.0  # one domain: no pair, full agreement
    # against a direct computation on flattened vectors
    gs = [[torch.randn(3, 4), torch.randn(5)] for _ in range(4)]
    flat = [torch.cat([t.flatten() for t in gi]) for gi in gs]
    cos = [F.cosine_similarity(flat[i], flat[j], dim=0) for i in range(4) for j in range(i + 1, 4)]
    assert mean_pairwise_cosine(gs).item() == pytest.approx(torch.stack(cos).mean().item(), abs=1e-6)


def test_sam_perturbation_has_radius_rho():
    grads = [torch.randn(4, 3), torch.randn(3)]
    e = sam_perturbation(grads, rho=0.05)
    assert global_norm(e).item() == pytest.approx(0.05, rel=1e-6)
    zero = sam_perturbation([torch.zeros(2, 2)], rho=0.05)
    assert torch.equal(zero[0], torch.zeros(2, 2))


def test_spectral_perturbation_per_parameter():
    torch.manual_seed(0)
    conv_w, lin_w, bias = torch.randn(4, 2, 3, 3), torch.randn(5, 7), torch.randn(5)
    g_conv, g_lin, g_bias = torch.randn(4, 2, 3, 3), torch.randn(5, 7), torch.randn(5)
    rho = 0.01
    e = spectral_perturbation([conv_w, lin_w, bias], [g_conv, g_lin, g_bias], rho, polar="svd")
    expected_conv = rho * conv_w.norm() * _svd_polar(g_conv.reshape(4, 18)).reshape(4, 2, 3, 3)
    assert torch.allclose(e[0], expected_conv, atol=1e-6)
    assert torch.allclose(e[1], rho * lin_w.norm() * _svd_polar(g_lin), atol=1e-6)
    assert torch.allclose(e[2], rho * g_bias / g_bias.norm(), atol=1e-7)
    # every singular direction of a matrix's perturbation has size rho * ||W||_F
    assert torch.allclose(torch.linalg.svdvals(e[1]), rho * lin_w.norm() * torch.ones(5), rtol=1e-4)


def test_spectral_perturbation_switches_change_only_their_part():
    torch.manual_seed(0)
    w, b = torch.randn(6, 4), torch.randn(6)
    g, gb = torch.randn(6, 4), torch.randn(6)
    rho = 0.1
    full = spectral_perturbation([w, b], [g, gb], rho, polar="svd")
    no_ortho = spectral_perturbation([w, b], [g, gb], rho, polar="svd", orthogonalize=False)
    no_scale = spectral_perturbation([w, b], [g, gb], rho, polar="svd", layer_scale=False)
    assert torch.allclose(no_ortho[0], rho * w.norm() * g / g.norm(), atol=1e-6)
    assert torch.allclose(no_scale[0], rho * _svd_polar(g), atol=1e-6)
    for variant in (no_ortho, no_scale):  # vectors are untouched by the matrix switches
        assert torch.equal(variant[1], full[1])


def test_zero_gradient_gives_zero_spectral_perturbation():
    w, b = torch.randn(3, 3), torch.randn(3)
    for method in ("svd", "quintic", "cubic"):
        e = spectral_perturbation([w, b], [torch.zeros(3, 3), torch.zeros(3)], 0.1, polar=method)
        assert all(torch.equal(t, torch.zeros_like(t)) for t in e)


def test_perturbed_restores_weights_exactly():
    net = tiny_mlp()
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    e = [torch.full_like(p, 0.1) / 3 for p in params]
    with perturbed(params, e):
        assert torch.allclose(params[0], before[0] + e[0])
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
