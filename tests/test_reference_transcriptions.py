"""Checks of the reference transcriptions against facts derived by hand.

The central check is a linear softmax classifier (``nn.Linear``: weight ``W``, bias ``b``), whose
cross-entropy gradient has the closed form ``dL/dlogits = (softmax - onehot) / N``; every
algorithm's update is recomputed from that formula in float64 NumPy and compared with the
reference step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.reference import updates as ref

# --------------------------------------------------------------------------------------------
# The closed-form oracle
# --------------------------------------------------------------------------------------------


def np_grad(W, b, X, Y):
    """Mean cross-entropy of ``X W^T + b`` and its gradients, from the closed form."""
    logits = X @ W.T + b
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    n = len(Y)
    loss = -np.mean(np.log(p[np.arange(n), Y]))
    d = p.copy()
    d[np.arange(n), Y] -= 1.0
    d /= n
    return loss, d.T @ X, d.sum(axis=0)


def flat(gW, gb):
    return np.concatenate([gW.ravel(), gb.ravel()])


def polar_np(G):
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    return U @ Vt


class Adam:
    """torch.optim.Adam's update written out: bias-corrected moments, eps added to sqrt(v_hat).
    ``t`` counts model steps and is advanced by the caller."""

    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t, self.m, self.v = lr, b1, b2, eps, 0, {}, {}

    def step(self, name, w, g):
        m = self.b1 * self.m.get(name, 0.0) + (1 - self.b1) * g
        v = self.b2 * self.v.get(name, 0.0) + (1 - self.b2) * g * g
        self.m[name], self.v[name] = m, v
        m_hat = m / (1 - self.b1**self.t)
        v_hat = v / (1 - self.b2**self.t)
        return w - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class Oracle:
    """Weights of the linear classifier in float64 and the base optimizer's update."""

    def __init__(self, model: nn.Linear, optimizer: str, lr: float):
        self.W = model.weight.detach().double().numpy().copy()
        self.b = model.bias.detach().double().numpy().copy()
        self.lr, self.optimizer = lr, optimizer
        self.adam = Adam(lr) if optimizer == "adam" else None

    def apply(self, gW, gb):
        if self.adam is None:
            self.W = self.W - self.lr * gW
            self.b = self.b - self.lr * gb
        else:
            self.adam.t += 1
            self.W = self.adam.step("W", self.W, gW)
            self.b = self.adam.step("b", self.b, gb)

    def matches(self, model: nn.Linear, atol=1e-6):
        np.testing.assert_allclose(
            model.weight.detach().double().numpy(), self.W, rtol=0, atol=atol
        )
        np.testing.assert_allclose(model.bias.detach().double().numpy(), self.b, rtol=0, atol=atol)


def make_problem(sizes=(5, 3, 4), d=6, classes=4, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(d, classes)
    with torch.no_grad():
        model.weight.mul_(3.0)  # logits far enough from uniform for the perturbations to matter
    g = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(n, d, generator=g) + 0.7 * k, torch.randint(classes, (n,), generator=g))
        for k, n in enumerate(sizes)
    ]
    return model, batches


def np_batches(batches):
    return [(x.double().numpy(), y.numpy()) for x, y in batches]


def np_concat(batches):
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def torch_optimizer(model, name, lr):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr)


OPTIMIZERS = [("sgd", 0.5), ("adam", 0.05)]
STEPS = 3


# --------------------------------------------------------------------------------------------
# Baselines against the closed form
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt,lr", OPTIMIZERS)
def test_sam_matches_closed_form(opt, lr):
    rho = 0.3
    model, batches = make_problem()
    optimizer = torch_optimizer(model, opt, lr)
    oracle = Oracle(model, opt, lr)
    X, Y = np_concat(np_batches(batches))
    for _ in range(STEPS):
        out = ref.sam_step(model, optimizer, batches, rho)
        loss, gW, gb = np_grad(oracle.W, oracle.b, X, Y)
        scale = rho / np.linalg.norm(flat(gW, gb))
        ploss, aW, ab = np_grad(oracle.W + scale * gW, oracle.b + scale * gb, X, Y)
        assert out["loss"] == pytest.approx(loss, abs=1e-6)
        assert out["perturbed_loss"] == pytest.approx(ploss, abs=1e-6)
        assert ploss > loss  # the ascent step went uphill
        oracle.apply(aW, ab)
        oracle.matches(model)


@pytest.mark.parametrize("opt,lr", OPTIMIZERS)
def test_gsam_matches_closed_form(opt, lr):
    rho, alpha = 0.3, 0.7
    model, batches = make_problem(seed=1)
    optimizer = torch_optimizer(model, opt, lr)
    oracle = Oracle(model, opt, lr)
    X, Y = np_concat(np_batches(batches))
    for _ in range(STEPS):
        ref.gsam_step(model, optimizer, batches, rho, alpha)
        _, gW, gb = np_grad(oracle.W, oracle.b, X, Y)
        g = flat(gW, gb)
        e = rho * g / np.linalg.norm(g)
        _, aW, ab = np_grad(
            oracle.W + e[: gW.size].reshape(gW.shape), oracle.b + e[gW.size :], X, Y
        )
        a = flat(aW, ab)
        orthogonal = g - (g @ a) / (a @ a) * a  # part of g orthogonal to g_adv
        final = a - alpha * orthogonal
        oracle.apply(final[: gW.size].reshape(gW.shape), final[gW.size :])
        oracle.matches(model)


@pytest.mark.parametrize("opt,lr", OPTIMIZERS)
def test_sagm_matches_closed_form(opt, lr):
    rho, alpha = 0.3, 0.2
    model, batches = make_problem(seed=2)
    optimizer = torch_optimizer(model, opt, lr)
    oracle = Oracle(model, opt, lr)
    X, Y = np_concat(np_batches(batches))
    for _ in range(STEPS):
        ref.sagm_step(model, optimizer, batches, rho, alpha)
        _, gW, gb = np_grad(oracle.W, oracle.b, X, Y)
        scale = rho / np.linalg.norm(flat(gW, gb)) - alpha
        _, aW, ab = np_grad(oracle.W + scale * gW, oracle.b + scale * gb, X, Y)
        oracle.apply(0.5 * (gW + aW), 0.5 * (gb + ab))
        oracle.matches(model)


@pytest.mark.parametrize("weighting", ["samples", "domains"])
@pytest.mark.parametrize("opt,lr", OPTIMIZERS)
def test_disam_matches_closed_form(opt, lr, weighting):
    """d Var/dw = sum_d 2 w_d (L_d - mean) dL_d/dw (the d mean/dw term cancels since
    sum_d w_d (L_d - mean) = 0), so the ascent direction is
    dCE/dw - lam * sum_d 2 w_d (L_d - mean) dL_d/dw."""
    rho, lam = 0.3, 2.0
    model, batches = make_problem(sizes=(6, 2, 4), seed=3)
    optimizer = torch_optimizer(model, opt, lr)
    oracle = Oracle(model, opt, lr)
    nb = np_batches(batches)
    X, Y = np_concat(nb)
    sizes = np.array([len(y) for _, y in nb])
    w = sizes / sizes.sum() if weighting == "samples" else np.full(len(sizes), 1 / len(sizes))
    for _ in range(STEPS):
        out = ref.disam_step(model, optimizer, batches, rho, lam, weighting=weighting)
        _, gW, gb = np_grad(oracle.W, oracle.b, X, Y)
        per = [np_grad(oracle.W, oracle.b, x, y) for x, y in nb]
        losses = np.array([p[0] for p in per])
        mean = w @ losses
        assert out["variance"] == pytest.approx(w @ (losses - mean) ** 2, abs=1e-6)
        dW = gW - lam * sum(2 * w[d] * (losses[d] - mean) * per[d][1] for d in range(len(nb)))
        db = gb - lam * sum(2 * w[d] * (losses[d] - mean) * per[d][2] for d in range(len(nb)))
        scale = rho / np.linalg.norm(flat(dW, db))
        _, aW, ab = np_grad(oracle.W + scale * dW, oracle.b + scale * db, X, Y)
        oracle.apply(aW, ab)
        oracle.matches(model)


def test_disam_variance_weightings_agree_for_equal_domain_sizes():
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)]
    plain = np.var([1.0, 2.0, 4.0])
    assert float(ref.domain_loss_variance(losses, [5, 5, 5], "samples")) == pytest.approx(plain)
    assert float(ref.domain_loss_variance(losses, [5, 5, 5], "domains")) == pytest.approx(plain)
    # unequal sizes: weights 1/2, 1/4, 1/4 -> mean 2, variance (1/2)(1) + (1/4)(0) + (1/4)(4) = 1.5
    assert float(ref.domain_loss_variance(losses, [2, 1, 1], "samples")) == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------
# SAGE against the closed form, including its ablation switches
# --------------------------------------------------------------------------------------------


def sage_oracle_step(
    oracle, nb, rho, gamma, noise, orthogonalize=True, layer_scale=True, noise_on=True
):
    X, Y = np_concat(nb)
    sizes = np.array([len(y) for _, y in nb])
    w = sizes / sizes.sum()
    per = [np_grad(oracle.W, oracle.b, x, y) for x, y in nb]
    flats = [flat(p[1], p[2]) for p in per]
    K = len(nb)
    cosines = [
        flats[i] @ flats[j] / (np.linalg.norm(flats[i]) * np.linalg.norm(flats[j]))
        for i in range(K)
        for j in range(i + 1, K)
    ]
    S = float(np.mean(cosines)) if K > 1 else 1.0
    beta = gamma * (1 - S) if noise_on else 0.0
    gW = sum(w[k] * per[k][1] for k in range(K))
    gb = sum(w[k] * per[k][2] for k in range(K))
    Q = polar_np(gW) if orthogonalize else gW / np.linalg.norm(gW)
    eW = rho * (np.linalg.norm(oracle.W) if layer_scale else 1.0) * Q
    eb = rho * gb / np.linalg.norm(gb)
    ploss, aW, ab = np_grad(oracle.W + eW, oracle.b + eb, X, Y)
    oracle.apply(aW + beta * noise[0], ab + beta * noise[1])
    return S, beta, ploss


SWITCHES = [
    dict(),
    dict(orthogonalize=False),
    dict(layer_scale=False),
    dict(noise_on=False),
    dict(orthogonalize=False, layer_scale=False, noise_on=False),
]


@pytest.mark.parametrize(
    "switches", SWITCHES, ids=lambda s: "-".join(f"no_{k}" for k in s) or "all_on"
)
@pytest.mark.parametrize("opt,lr", OPTIMIZERS)
def test_sage_matches_closed_form(opt, lr, switches):
    rho, gamma = 0.05, 0.5
    model, batches = make_problem(seed=4)
    optimizer = torch_optimizer(model, opt, lr)
    oracle = Oracle(model, opt, lr)
    nb = np_batches(batches)
    gen = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        noise = ref.gaussian_noise(model, gen)
        out = ref.sage_step(model, optimizer, batches, rho, gamma, noise, polar="svd", **switches)
        S, beta, ploss = sage_oracle_step(
            oracle, nb, rho, gamma, [n.double().numpy() for n in noise], **switches
        )
        assert out["S"] == pytest.approx(S, abs=1e-6)
        assert out["beta"] == pytest.approx(beta, abs=1e-7)
        assert out["perturbed_loss"] == pytest.approx(ploss, abs=1e-6)
        oracle.matches(model)
    if switches.get("noise_on", True):
        assert out["beta"] > 0  # the domains disagree, so the noise is on


def test_sage_cubic_with_many_steps_reaches_the_svd_update():
    rho, gamma, lr = 0.05, 0.5, 0.5
    model, batches = make_problem(seed=5)
    optimizer = torch_optimizer(model, "sgd", lr)
    oracle = Oracle(model, "sgd", lr)
    noise = ref.gaussian_noise(model, torch.Generator().manual_seed(0))
    ref.sage_step(model, optimizer, batches, rho, gamma, noise, polar="cubic", ns_steps=60)
    sage_oracle_step(oracle, np_batches(batches), rho, gamma, [n.double().numpy() for n in noise])
    oracle.matches(model, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Relations between the algorithms
# --------------------------------------------------------------------------------------------


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def mlp_batches(seed=0, sizes=(4, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 5, generator=g) + k, torch.randint(3, (n,), generator=g))
        for k, n in enumerate(sizes)
    ]


def run(step, steps=4, opt="adam", lr=0.01, **kwargs):
    model = small_mlp()
    optimizer = torch_optimizer(model, opt, lr)
    for s in range(steps):
        step(model, optimizer, mlp_batches(seed=s), **kwargs)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_gsam_with_alpha_zero_is_sam():
    sam = run(ref.sam_step, rho=0.1)
    gsam = run(ref.gsam_step, rho=0.1, alpha=0.0)
    torch.testing.assert_close(gsam, sam, rtol=0, atol=1e-6)
    assert not torch.allclose(run(ref.gsam_step, rho=0.1, alpha=0.5), sam, atol=1e-4)


def test_disam_with_lambda_zero_is_sam():
    sam = run(ref.sam_step, rho=0.1)
    disam = run(ref.disam_step, rho=0.1, lam=0.0)
    torch.testing.assert_close(disam, sam, rtol=0, atol=1e-6)
    assert not torch.allclose(run(ref.disam_step, rho=0.1, lam=5.0), sam, atol=1e-5)


def test_sagm_with_alpha_zero_averages_the_clean_and_sam_gradients():
    """With SGD at lr 1 the update is minus the gradient: SAGM(alpha=0) moves by
    -(g + g_adv)/2, ERM (rho=0 SAM) by -g, SAM by -g_adv."""
    start = run(ref.sam_step, steps=0)
    erm = run(ref.sam_step, steps=1, opt="sgd", lr=1.0, rho=0.0)
    sam = run(ref.sam_step, steps=1, opt="sgd", lr=1.0, rho=0.2)
    sagm = run(ref.sagm_step, steps=1, opt="sgd", lr=1.0, rho=0.2, alpha=0.0)
    torch.testing.assert_close(
        sagm - start, 0.5 * ((erm - start) + (sam - start)), rtol=0, atol=1e-6
    )


def test_sam_with_rho_zero_is_a_plain_gradient_step():
    model = small_mlp()
    batches = mlp_batches()
    x, y = ref.concat(batches)
    expected = [
        p.detach() - 0.1 * g
        for p, g in zip(
            model.parameters(),
            torch.autograd.grad(ref.ce(model, x, y), list(model.parameters())),
            strict=True,
        )
    ]
    ref.sam_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, rho=0.0)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-7)


def test_frozen_parameters_are_left_alone_and_unperturbed():
    model = small_mlp()
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    for step, kw in [
        (ref.sam_step, dict(rho=0.1)),
        (ref.gsam_step, dict(rho=0.1, alpha=0.3)),
        (ref.sagm_step, dict(rho=0.1, alpha=0.01)),
        (ref.disam_step, dict(rho=0.1, lam=0.1)),
    ]:
        step(model, torch.optim.Adam(model.parameters(), lr=0.01), mlp_batches(), **kw)
    noise = ref.gaussian_noise(model, torch.Generator().manual_seed(0))
    assert len(noise) == len(list(model.parameters())) - 1
    ref.sage_step(
        model, torch.optim.Adam(model.parameters(), lr=0.01), mlp_batches(), 0.1, 0.1, noise
    )
    assert torch.equal(model[0].weight, before)


# --------------------------------------------------------------------------------------------
# SAGE's gradient agreement and per-domain gradients
# --------------------------------------------------------------------------------------------


def test_per_domain_gradients_add_up_to_the_concatenated_gradient():
    model = small_mlp()
    batches = mlp_batches(sizes=(5, 2, 3))
    losses, grads, weights = ref.per_domain_gradients(model, batches)
    x, y = ref.concat(batches)
    full_loss = ref.ce(model, x, y)
    full = torch.autograd.grad(full_loss, list(model.parameters()))
    assert weights == pytest.approx([0.5, 0.2, 0.3])
    assert sum(w * float(l_k) for w, l_k in zip(weights, losses, strict=True)) == pytest.approx(
        full_loss.item(), abs=1e-6
    )
    for i, g in enumerate(full):
        torch.testing.assert_close(
            sum(w * gk[i] for w, gk in zip(weights, grads, strict=True)), g, rtol=0, atol=1e-6
        )


def test_one_domain_has_agreement_one_and_no_noise():
    model = small_mlp()
    noise = [100.0 * torch.ones_like(p) for p in model.parameters()]
    twin = small_mlp()
    out = ref.sage_step(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        mlp_batches(sizes=(6,)),
        0.05,
        1.0,
        noise,
    )
    ref.sage_step(
        twin,
        torch.optim.SGD(twin.parameters(), lr=0.1),
        mlp_batches(sizes=(6,)),
        0.05,
        1.0,
        None,
        noise_on=False,
    )
    assert out["S"] == 1.0 and out["beta"] == 0.0
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)  # the (huge) noise was not added


def test_identical_domains_agree_and_opposed_domains_give_twice_gamma():
    model = small_mlp()
    x, y = mlp_batches(sizes=(4,))[0]
    _, grads, _ = ref.per_domain_gradients(model, [(x, y), (x, y), (x, y)])
    assert ref.gradient_agreement(grads) == pytest.approx(1.0, abs=1e-6)
    # W = 0, no bias: softmax is uniform u for x and -x alike, so the gradients
    # (u - e_y) x^T and (u - e_y)(-x)^T are exact negatives: S = -1, beta = 2 gamma.
    linear = nn.Linear(5, 3, bias=False)
    nn.init.zeros_(linear.weight)
    out = ref.sage_step(
        linear,
        torch.optim.SGD(linear.parameters(), lr=0.0),
        [(x, y), (-x, y)],
        0.01,
        0.3,
        [torch.zeros(3, 5)],
    )
    assert out["S"] == pytest.approx(-1.0, abs=1e-6)
    assert out["beta"] == pytest.approx(0.6, abs=1e-6)


def test_zero_gradient_gives_zero_perturbation():
    for polar in ["svd", "quintic", "cubic"]:
        for shape in [(4, 6), (3, 2, 3, 3), (7,)]:
            e = ref.sage_perturbation(torch.randn(shape), torch.zeros(shape), 0.1, polar=polar)
            assert torch.equal(e, torch.zeros(shape))
        e = ref.sage_perturbation(torch.randn(4, 6), torch.zeros(4, 6), 0.1, orthogonalize=False)
        assert torch.equal(e, torch.zeros(4, 6))


def test_conv_kernel_perturbation_is_the_flattened_polar_factor_scaled_by_the_kernel_norm():
    torch.manual_seed(0)
    W, G = torch.randn(8, 3, 3, 3), torch.randn(8, 3, 3, 3)
    rho = 0.01
    e = ref.sage_perturbation(W, G, rho, polar="svd")
    Q = e.reshape(8, -1) / (rho * W.norm())
    torch.testing.assert_close(Q @ Q.T, torch.eye(8), rtol=0, atol=1e-5)  # orthonormal rows
    assert (
        float((Q * G.reshape(8, -1)).sum()) > 0
    )  # ascent direction: <Q, G> = sum of singular values
    bias_e = ref.sage_perturbation(torch.randn(8), torch.randn(8), rho)
    assert float(bias_e.norm()) == pytest.approx(rho, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Polar factors
# --------------------------------------------------------------------------------------------

SHAPES = [(16, 8), (8, 16), (12, 12), (6, 54)]


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_polar_factor_is_orthogonal_and_keeps_the_singular_vectors(shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    Q = ref.polar_svd(G)
    r = min(shape)
    gram = Q.T @ Q if shape[0] >= shape[1] else Q @ Q.T
    torch.testing.assert_close(gram, torch.eye(r), rtol=0, atol=1e-5)
    # G = Q P with P = Q^T G symmetric positive definite (the polar decomposition)
    if shape[0] >= shape[1]:
        P = Q.T @ G
        torch.testing.assert_close(P, P.T, rtol=0, atol=1e-5)
        assert torch.linalg.eigvalsh(P.double()).min() > 0


def test_svd_polar_factor_of_a_rank_one_matrix_is_the_normalised_matrix():
    u, v = torch.randn(5, 1), torch.randn(1, 7)
    G = u @ v
    torch.testing.assert_close(ref.polar_svd(G), G / G.norm(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_cubic_iteration_converges_to_the_svd_polar_factor(shape):
    torch.manual_seed(1)
    G = torch.randn(shape)
    torch.testing.assert_close(ref.polar_cubic(G, steps=60), ref.polar_svd(G), rtol=0, atol=1e-5)


def test_cubic_iteration_with_five_steps_only_raises_singular_values_towards_one():
    torch.manual_seed(2)
    G = torch.randn(16, 8)
    s0 = torch.linalg.svdvals(G / G.norm())
    s5 = torch.linalg.svdvals(ref.polar_cubic(G, steps=5))
    assert torch.all(s5 >= s0 - 1e-6) and torch.all(s5 <= 1 + 1e-6)
    x = s0
    for _ in range(5):
        x = 0.5 * x * (3 - x * x)  # the scalar map on each singular value
    torch.testing.assert_close(s5, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:])
def test_quintic_keeps_singular_vectors_and_ends_near_one(shape):
    """Muon's quintic is not a convergent iteration: after 5 steps the singular values of a
    well-conditioned matrix lie in about [0.68, 1.13] (Muon: 'roughly (0.5, 1.5)'), so the result is
    about 20% away from U V^T in Frobenius norm -- it is *not* within 1e-2 of the SVD factor.
    What it does keep exactly is the singular vectors."""
    torch.manual_seed(3)
    G = torch.randn(shape)
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    X = ref.polar_quintic(G, steps=5).double()
    D = U.T @ X @ Vh.T
    off_diagonal = D - torch.diag(torch.diagonal(D))
    assert off_diagonal.abs().max() < 1e-4
    s = torch.diagonal(D)
    assert torch.all(s > 0.5) and torch.all(s < 1.5)
    svd = ref.polar_svd(G).double()
    relative = float((X - svd).norm() / svd.norm())
    assert 0.01 < relative < 0.35


def test_quintic_transposes_tall_matrices():
    torch.manual_seed(4)
    G = torch.randn(20, 6)
    torch.testing.assert_close(ref.polar_quintic(G), ref.polar_quintic(G.T).T, rtol=0, atol=1e-6)


def test_quintic_matches_the_scalar_polynomial_on_each_singular_value():
    a, b, c = ref.QUINTIC_COEFFICIENTS
    torch.manual_seed(5)
    G = torch.randn(10, 4)
    x = torch.linalg.svdvals(G.double()) / (G.double().norm() + 1e-7)
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    torch.testing.assert_close(
        torch.linalg.svdvals(ref.polar_quintic(G).double()).sort().values,
        x.sort().values,
        rtol=0,
        atol=1e-5,
    )
