"""The paper's analyses: computed quantities against independent calculations written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sage_bench.analysis import appendix_c, counterexample, scale_invariance, trajectories
from sage_bench.analysis.report import Estimate, Row, fmt, rounding

# ------------------------------------------------------------------------------------------
# report helpers


def test_rows_compare_within_the_papers_rounding():
    assert Row("x", 0.808, 0.81, rounding(2)).agrees
    assert not Row("x", 0.8149, 0.80, rounding(2)).agrees
    assert Row("v", [0.000277, 0.4986], [0.0003, 0.499], [rounding(4), rounding(3)]).agrees
    assert not Row("v", [0.1, 0.0], [0.1, 0.0, 0.0], 1.0).agrees  # shapes differ
    assert Row("no claim", 3.0).agrees is None
    assert Estimate("e", 1.0, 1.1, 0.95, 1.2).agrees
    assert not Estimate("e", [1.0, 2.0], [1.0, 2.5], [0.9, 2.1], [1.1, 2.9]).agrees
    assert fmt([[10.0, 2.0], [2.0, 4.01]]) == "[10 2; 2 4.01]"
    assert fmt(-0.0) == "0"


# ------------------------------------------------------------------------------------------
# Appendix C


def _appendix_c_by_hand(mu_inv, var_inv, mu_spur, var_spur):
    """The example worked out from its moments: E[x x^T] and E[y x] per domain."""
    hessians, b = [], []
    for c in (mu_spur, -mu_spur):
        hessians.append(np.array([[var_inv + mu_inv**2, mu_inv * c], [mu_inv * c, var_spur + c**2]]))
        b.append(np.array([mu_inv, c]))
    h_bar = (hessians[0] + hessians[1]) / 2
    theta = np.linalg.inv(h_bar) @ ((b[0] + b[1]) / 2)
    g = [h @ theta - bk for h, bk in zip(hessians, b, strict=True)]
    sigma = (np.outer(g[0], g[0]) + np.outer(g[1], g[1])) / 2  # g_1 = -g_2 at the minimum
    return {
        "H_k": np.stack(hessians),
        "H_bar": h_bar,
        "theta_star": theta,
        "theta_k": np.stack([np.linalg.inv(h) @ bk for h, bk in zip(hessians, b, strict=True)]),
        "grad_k_at_0": -np.stack(b),
        "Sigma_g": sigma,
        "alignment_term": np.trace(np.linalg.inv(h_bar) @ sigma),
    }


@pytest.mark.parametrize("setting", [(1.0, 9.0, 2.0, 0.01), (0.5, 2.0, 1.0, 0.3)])
def test_appendix_c_closed_form(setting):
    exact = appendix_c.closed_form(appendix_c.LinearGaussian(*setting))
    for key, value in _appendix_c_by_hand(*setting).items():
        np.testing.assert_allclose(exact[key], value, rtol=1e-12, atol=1e-14, err_msg=key)


def test_appendix_c_paper_values():
    exact = appendix_c.closed_form(appendix_c.LinearGaussian())
    np.testing.assert_allclose(exact["H_bar"], [[10, 0], [0, 4.01]])
    np.testing.assert_allclose(exact["theta_star"], [0.1, 0.0], atol=1e-15)
    np.testing.assert_allclose(exact["theta_k"], [[0.01 / 36.1, 18 / 36.1], [0.01 / 36.1, -18 / 36.1]])
    np.testing.assert_allclose(exact["Sigma_g"], [[0, 0], [0, 1.8**2]], atol=1e-14)
    assert exact["alignment_term"] == pytest.approx(3.24 / 4.01)


def test_appendix_c_estimates_from_data_match_direct_formulas():
    setting = appendix_c.LinearGaussian()
    domains = appendix_c.sample_domains(setting, 500, torch.Generator().manual_seed(3))
    got = appendix_c.estimate(domains)
    xs = [x.numpy() for x, _ in domains]
    ys = [y.numpy() for _, y in domains]
    hessians = np.stack([x.T @ x / len(x) for x in xs])
    b = np.stack([x.T @ y / len(x) for x, y in zip(xs, ys, strict=True)])
    h_bar = hessians.mean(axis=0)
    theta = np.linalg.solve(h_bar, b.mean(axis=0))
    g = np.stack([h @ theta - bk for h, bk in zip(hessians, b, strict=True)])
    centred = g - g.mean(axis=0)
    sigma = centred.T @ centred / 2
    np.testing.assert_allclose(got["H_k"], hessians, rtol=1e-10)
    np.testing.assert_allclose(got["grad_k_at_0"], -b, rtol=1e-10)
    np.testing.assert_allclose(got["theta_star"], theta, rtol=1e-10)
    np.testing.assert_allclose(got["Sigma_g"], sigma, rtol=1e-8, atol=1e-14)
    assert got["alignment_term"] == pytest.approx(np.trace(np.linalg.solve(h_bar, sigma)), rel=1e-8)


def test_appendix_c_report_flags_only_the_sign_of_the_printed_formula(tmp_path):
    report = appendix_c.run(tmp_path, n=500, batches=20)
    problems = report.disagreements()
    assert len(problems) == 1 and "grad L_bar(0)" in problems[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["disagreements"] == problems
    assert (tmp_path / "appendix_c.png").stat().st_size > 0
    # the sampled intervals hold the closed form
    sampled = next(rows for title, rows in summary["sections"].items() if title.startswith("From sampled data"))
    assert all(row["closed_form_inside_ci"] for row in sampled)


# ------------------------------------------------------------------------------------------
# Counterexample 1


def test_counterexample_measures_a_general_quadratic_instance():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((3, 3))
    a = q @ q.T + 0.5 * np.eye(3)
    b = rng.standard_normal((4, 3))  # mean not zero: theta* moves off the origin
    measured = counterexample.measure(counterexample.QuadraticInstance(A=a, b=b))
    theta = -np.linalg.solve(a, b.mean(axis=0))
    sigma = np.cov(b.T, bias=True)  # gradients A theta* + b_e differ from their mean by b_e - mean(b)
    np.testing.assert_allclose(measured["H_bar"], a, rtol=1e-12)
    np.testing.assert_allclose(measured["theta_star"], theta, rtol=1e-10)
    np.testing.assert_allclose(measured["Sigma_g"], sigma, rtol=1e-10, atol=1e-14)
    assert measured["flatness"] == pytest.approx(np.trace(a))
    assert measured["alignment"] == pytest.approx(np.trace(np.linalg.solve(a, sigma)))


@pytest.mark.parametrize("m", [0.3, 10.0, 1000.0])
def test_counterexample_constructions_meet_their_bounds(m):
    flat = counterexample.measure(counterexample.flat_but_misaligned(m))
    assert flat["flatness"] == pytest.approx(1 / m) and flat["alignment"] == pytest.approx(2 * m)
    sharp = counterexample.measure(counterexample.aligned_but_sharp(m))
    assert sharp["flatness"] == pytest.approx(m) and sharp["alignment"] == pytest.approx(1 / m)


def test_theorem_1_holds_exactly_on_a_quadratic_instance():
    instance = counterexample.flat_but_misaligned(2.0)
    k, sigma = 3, 0.5
    # E||b_bar_K||^2 over K i.i.d. draws of b = (0, +-1): Var = 1/K on the second coordinate
    expected = 0.5 * (1 / k) / instance.A[1, 1] + sigma**2 / 2 * np.trace(instance.A)
    mean, se = counterexample.excess_risk_monte_carlo(instance, k, sigma, draws=100_000, seed=1)
    assert abs(mean - expected) < 4 * se


def test_counterexample_report(tmp_path):
    report = counterexample.run(tmp_path, m=5.0, draws=20_000)
    assert report.disagreements() == []
    assert (tmp_path / "counterexample.png").exists() and (tmp_path / "summary.json").exists()


# ------------------------------------------------------------------------------------------
# Scale invariance (Appendix D / Figure 4)


def test_rescaling_keeps_the_function():
    x, y = scale_invariance.circles(64, 0.1, seed=0)
    network, _, _ = scale_invariance.train_mlp(x, y, seed=0, steps=20)
    x64 = x.double()
    reference = scale_invariance.rescaled(network, 1.0)(x64)
    rescaled = scale_invariance.rescaled(network, 3.7)
    torch.testing.assert_close(rescaled(x64), reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rescaled[0].weight, 3.7 * network[0].weight.double())
    torch.testing.assert_close(rescaled[2].weight, network[2].weight.double() / 3.7)


def test_sam_sharpness_is_the_loss_rise_at_rho_g_over_norm_g():
    x, y = scale_invariance.circles(64, 0.1, seed=1)
    network = scale_invariance.rescaled(scale_invariance.train_mlp(x, y, seed=1, steps=30)[0], 1.0)
    x64 = x.double()
    params = list(network.parameters())
    loss = F.cross_entropy(network(x64), y)
    grads = torch.autograd.grad(loss, params)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        moved = [p + 0.05 * g / norm for p, g in zip(params, grads, strict=True)]
        w1, b1, w2, b2 = moved
        by_hand = F.cross_entropy(torch.relu(x64 @ w1.T + b1) @ w2.T + b2, y) - loss
    sam = scale_invariance.perturbations(0.05, 0.5, 0.01, 0.05)["SAM"]
    assert scale_invariance.sharpness(network, x64, y, sam) == pytest.approx(by_hand.item(), rel=1e-9)
    # the weights are back where they were
    torch.testing.assert_close(network(x64), F.linear(torch.relu(F.linear(x64, params[0], params[1])), params[2], params[3]))


def test_sage_sharpness_is_far_less_scale_dependent_than_sams(tmp_path):
    report = scale_invariance.run(tmp_path, seeds=2, n=128, steps=300, alphas=7)
    spreads = {name: [s["spread"][name] for s in report.data["seeds"]] for name in report.data["median_spread"]}
    for sam, sage, matrices in zip(spreads["SAM"], spreads["SAGE"], spreads["SAGE, weight matrices only"], strict=True):
        assert sage < sam / 3
        assert matrices == pytest.approx(1.0, abs=1e-6)  # the polar factor and ||W||_F rescale exactly
    assert max(spreads["ASAM, biases adaptive too"]) < 1.3
    function_row = next(r for r in report.sections[next(iter(report.sections))] if "logit" in r.quantity)
    assert function_row.agrees
    assert (tmp_path / "scale_invariance.png").exists()


# ------------------------------------------------------------------------------------------
# Trajectories (Figure 2)


def test_toy_gradients_match_autograd():
    toy = trajectories.TwoMinimaToy()
    points = torch.tensor([[-1.3, 1.4], [-0.5, 0.2], [0.4, -0.3], [1.0, 0.4], [-2.0, -1.0]], dtype=torch.float64)
    theta = points.clone().requires_grad_(True)
    aggregate, conflict = toy.aggregate(theta), toy.conflict_term(theta)
    by_autograd = [
        torch.autograd.grad((aggregate + sign * conflict).sum(), theta, retain_graph=True)[0] for sign in (1, -1)
    ]
    for got, want in zip(toy.domain_grads(points), by_autograd, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_noisy_runs_are_per_seed_and_deterministic():
    toy, dynamics = trajectories.TwoMinimaToy(), trajectories.Dynamics(steps=50)
    both = trajectories.run_method(toy, dynamics, "SAGE noise", [0, 1])
    alone = trajectories.run_method(toy, dynamics, "SAGE noise", [1])
    np.testing.assert_array_equal(both[1], alone[0])
    assert not np.allclose(both[0], both[1])
    erm = trajectories.run_method(toy, dynamics, "ERM", [0])
    np.testing.assert_array_equal(erm, trajectories.run_method(toy, dynamics, "ERM", [0]))


def test_figure_2_outcome(tmp_path):
    report = trajectories.run(tmp_path, seeds=4)
    outcomes = report.data["outcomes"]
    assert outcomes["ERM"]["basins"] == ["A"] and outcomes["SAM"]["basins"] == ["A"]
    assert outcomes["SAGE noise, gamma (1 - S)"]["fraction_B"] >= 0.75
    # the conflict term is invisible to the aggregate: the minima are the aggregate's own
    toy = trajectories.TwoMinimaToy()
    for name in "AB":
        point = torch.tensor(report.data["minima"][name])
        assert toy.aggregate_grad(point).norm() < 1e-8
    s_rows = {r.quantity: r.computed for r in report.sections["The toy"]}
    assert s_rows["S near A (1e-3 off the minimum)"] == pytest.approx(-1.0, abs=1e-3)
    assert s_rows["S near B (1e-3 off the minimum)"] == pytest.approx(1.0, abs=1e-9)
    assert (tmp_path / "trajectories.png").exists()


# ------------------------------------------------------------------------------------------
# The command


def test_analyze_command(tmp_path):
    from sage_bench.cli import main

    out = tmp_path / "ce"
    assert main(["analyze", "counterexample", "--M", "3", "--draws", "2000", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["analysis"] == "counterexample" and summary["data"]["M"] == 3.0
    assert main(["analyze", "counterexample", "--M", "-1", "--out", str(out)]) == 2
    assert main(["analyze", "alignment", str(tmp_path / "missing"), "--out", str(out)]) == 2
