"""Appendix C: the two-domain linear-Gaussian example, in closed form and from sampled data.

The data-generating process: a label ``y`` uniform on {-1, +1}; an invariant feature
``x_inv | y ~ N(y mu_inv, var_inv)`` shared by both domains; a spurious feature
``x_spur | y ~ N(y c_k, var_spur)`` with ``c_1 = +mu_spur``, ``c_2 = -mu_spur``. The model is
``f(x) = theta . x`` (no bias) and the loss of domain ``k`` is ``L_k = E_k[(y - f(x))^2 / 2]``
(half the squared error: that is what the paper's expansion, Eq. 39, writes out).

Closed form. With ``v_k = E_k[y x] = (mu_inv, c_k)`` and ``E_k[x x^T] = diag(var) + v_k v_k^T``
(``y^2 = 1``, and the two features' noises are independent given ``y``),
``L_k(theta) = 1/2 - theta . v_k + theta^T H_k theta / 2`` with
``H_k = diag(var_inv, var_spur) + v_k v_k^T`` and ``grad L_k(theta) = H_k theta - v_k``. The ERM
minimizer solves ``H_bar theta = v_bar``; domain ``k``'s minimizer solves ``H_k theta = v_k``; the
cross-domain gradient covariance at the ERM minimizer is the covariance of the ``g_k`` over
the two equally likely domains (``Sigma_g = E_e[(g_e - g_bar)(g_e - g_bar)^T]``, Eq. 4).

From data. ``batches`` independent data sets of ``n`` examples per domain are drawn; on each,
and on all of them pooled, the per-domain gradients come from
``sage_bench.geometry.domain_gradients`` on a bias-free ``nn.Linear(2, 1)`` and the Hessians
from ``torch.autograd.functional.hessian``, with no use of the closed form. The pooled estimate's confidence
interval is normal (CLT) with the standard error ``sd(batch estimates) / sqrt(batches)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from torch import nn
from torch.autograd.functional import hessian
from torch.func import functional_call

from sage_bench.analysis.report import Estimate, Report, Row, figure, rounding
from sage_bench.errors import UserError
from sage_bench.geometry import domain_gradients, mean_pairwise_cosine

NAME = "appendix-c"


@dataclass(frozen=True)
class LinearGaussian:
    """The example's data-generating process (defaults: the paper's values)."""

    mu_inv: float = 1.0
    var_inv: float = 9.0
    mu_spur: float = 2.0
    var_spur: float = 0.01

    def spurious_means(self) -> tuple[float, float]:
        """``c_1, c_2``: the spurious feature's correlation with ``y`` reverses across domains."""
        return (self.mu_spur, -self.mu_spur)


# ------------------------------------------------------------------------------------------
# Closed form


def closed_form(setting: LinearGaussian) -> dict[str, np.ndarray]:
    """Every quantity of the example from the process's moments (float64)."""
    noise = np.diag([setting.var_inv, setting.var_spur])
    v = np.array([[setting.mu_inv, c] for c in setting.spurious_means()])  # v_k = E_k[y x]
    hessians = np.stack([noise + np.outer(vk, vk) for vk in v])
    h_bar = hessians.mean(axis=0)
    theta_star = np.linalg.solve(h_bar, v.mean(axis=0))
    minimizers = np.stack([np.linalg.solve(h, vk) for h, vk in zip(hessians, v, strict=True)])
    grads_at_zero = -v
    grads_at_min = np.stack([h @ theta_star - vk for h, vk in zip(hessians, v, strict=True)])
    sigma_g = _domain_covariance(grads_at_min)
    return {
        "H_k": hessians,
        "H_bar": h_bar,
        "theta_star": theta_star,
        "theta_k": minimizers,
        "grad_k_at_0": grads_at_zero,
        "grad_k_at_theta_star": grads_at_min,
        "Sigma_g": sigma_g,
        "alignment_term": np.trace(np.linalg.solve(h_bar, sigma_g)),
        "curvature_term": np.trace(h_bar),
    }


def _domain_covariance(grads: np.ndarray) -> np.ndarray:
    """``E_e[(g_e - g_bar)(g_e - g_bar)^T]`` over equally likely domains (rows of ``grads``)."""
    centred = grads - grads.mean(axis=0)
    return centred.T @ centred / len(grads)


# ------------------------------------------------------------------------------------------
# From sampled data


def sample_domains(
    setting: LinearGaussian, n: int, generator: torch.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` examples ``(x, y)`` of each domain (float64)."""
    domains = []
    for c in setting.spurious_means():
        y = torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        x_inv = y * setting.mu_inv + noise[:, 0] * setting.var_inv**0.5
        x_spur = y * c + noise[:, 1] * setting.var_spur**0.5
        domains.append((torch.stack([x_inv, x_spur], dim=1), y))
    return domains


def half_squared_error(prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((prediction.squeeze(-1) - y) ** 2).mean()


def _hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of the half squared error on ``(x, y)`` w.r.t. the model's weight, by autograd."""

    def loss(weight):
        return half_squared_error(functional_call(model, {"weight": weight}, (x,)), y)

    return hessian(loss, model.weight.detach()).reshape(2, 2)


def estimate(domains: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, np.ndarray]:
    """The example's quantities computed from data by automatic differentiation.

    The loss is quadratic in ``theta``, so one Newton step from 0 lands on the empirical
    minimizer; the gradient there is recorded to show it vanishes.
    """
    model = nn.Linear(2, 1, bias=False, dtype=torch.float64)
    params = [model.weight]
    with torch.no_grad():
        model.weight.zero_()

    hessians = torch.stack([_hessian(model, x, y) for x, y in domains])
    at_zero = domain_gradients(model, params, domains, loss_fn=half_squared_error)
    grads_at_zero = torch.stack([g[0].reshape(2) for g in at_zero.grads])
    h_bar = hessians.mean(dim=0)
    theta_hat = -torch.linalg.solve(h_bar, grads_at_zero.mean(dim=0))
    minimizers = torch.stack([-torch.linalg.solve(h, g) for h, g in zip(hessians, grads_at_zero, strict=True)])
    with torch.no_grad():
        model.weight.copy_(theta_hat.reshape(1, 2))
    at_min = domain_gradients(model, params, domains, loss_fn=half_squared_error)
    grads_at_min = torch.stack([g[0].reshape(2) for g in at_min.grads]).numpy()
    sigma_g = _domain_covariance(grads_at_min)
    h_bar = h_bar.numpy()
    return {
        "H_k": hessians.numpy(),
        "H_bar": h_bar,
        "theta_star": theta_hat.numpy(),
        "theta_k": minimizers.numpy(),
        "grad_k_at_0": grads_at_zero.numpy(),
        "grad_k_at_theta_star": grads_at_min,
        "Sigma_g": sigma_g,
        "alignment_term": np.trace(np.linalg.solve(h_bar, sigma_g)),
        "curvature_term": np.trace(h_bar),
        "mean_grad_at_theta_star": grads_at_min.mean(axis=0),
    }


def sampled_estimates(
    setting: LinearGaussian, n: int, batches: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Estimates from all the data pooled, their standard errors, and the per-batch estimates.

    The standard error of a pooled estimate is ``sd(batch estimates) / sqrt(batches)`` (the
    central limit theorem over the independent data sets). Each return value is a dictionary
    of arrays keyed like ``estimate``'s.
    """
    if n < 2 or batches < 2:
        raise UserError(f"need --n >= 2 examples per domain and --batches >= 2, got {n} and {batches}")
    generator = torch.Generator().manual_seed(seed)
    data = [sample_domains(setting, n, generator) for _ in range(batches)]
    per_batch_list = [estimate(d) for d in data]
    pooled = estimate(
        [(torch.cat([d[k][0] for d in data]), torch.cat([d[k][1] for d in data])) for k in range(2)]
    )
    per_batch = {key: np.stack([e[key] for e in per_batch_list]) for key in pooled}
    standard_error = {key: v.std(axis=0, ddof=1) / np.sqrt(batches) for key, v in per_batch.items()}
    return pooled, standard_error, per_batch


def simultaneous_z(level: float, count: int) -> float:
    """The normal quantile that makes ``count`` two-sided intervals hold together with
    probability at least ``level`` (Bonferroni)."""
    return NormalDist().inv_cdf(1 - (1 - level) / (2 * count))


# ------------------------------------------------------------------------------------------
# The report


def _agreement(grads: np.ndarray) -> float:
    """The mean pairwise cosine ``S`` of the domains' gradients (the code SAGE uses)."""
    return float(mean_pairwise_cosine([[torch.as_tensor(g)] for g in grads]))


def run(
    out_dir: Path,
    setting: LinearGaussian = LinearGaussian(),
    n: int = 2000,
    batches: int = 100,
    seed: int = 0,
    level: float = 0.99,
) -> Report:
    """Compute the example, compare it with the paper, draw it; return the report (written)."""
    if setting.var_inv <= 0 or setting.var_spur <= 0:
        raise UserError(f"the feature variances must be positive, got {setting.var_inv} and {setting.var_spur}")
    if not 0.0 < level < 1.0:
        raise UserError(f"--level must be in (0, 1), got {level}")
    report = Report(NAME, Path(out_dir))
    exact = closed_form(setting)
    paper = setting == LinearGaussian()  # the paper's numbers apply only to its own setting

    def stated(value):
        return value if paper else None

    h1, h2 = exact["H_k"]
    h_bar = exact["H_bar"]
    section = "Closed form (Appendix C)"
    report.add(section, Row("H_1", h1, stated([[10, 2], [2, 4.01]]), rounding(2), "Eq. 40"))
    report.add(section, Row("H_2", h2, stated([[10, -2], [-2, 4.01]]), rounding(2), "Eq. 40"))
    report.add(section, Row("H_bar = (H_1 + H_2)/2", h_bar, stated([[10, 0], [0, 4.01]]), rounding(2), "Eq. 41"))
    report.add(
        section,
        Row("curvature ratio H_bar[inv]/H_bar[spur]", h_bar[0, 0] / h_bar[1, 1], stated(2.5), rounding(1), "'2.5x larger'"),
    )
    grad_bar_at_zero = exact["grad_k_at_0"].mean(axis=0)
    report.add(section, Row("theta* (ERM minimizer)", exact["theta_star"], stated([0.1, 0.0]), rounding(1)))
    report.add(
        section,
        Row(
            "H_bar^-1 grad L_bar(0), as printed for theta*",
            np.linalg.solve(h_bar, grad_bar_at_zero),
            stated([0.1, 0.0]),
            rounding(1),
            "sign slip: theta* = -H_bar^-1 grad L_bar(0) = H_bar^-1 E[y x]",
        ),
    )
    theta_1, theta_2 = exact["theta_k"]
    minimizer_tol = [rounding(4), rounding(3)]
    report.add(section, Row("theta_1* (domain 1 minimizer)", theta_1, stated([0.0003, 0.499]), minimizer_tol))
    report.add(section, Row("theta_2* (domain 2 minimizer)", theta_2, stated([0.0003, -0.499]), minimizer_tol))
    report.add(
        section,
        Row("SNR of x_spur, mu_spur^2/var_spur", setting.mu_spur**2 / setting.var_spur, stated(400), rounding(0)),
    )
    report.add(
        section, Row("SNR of x_inv, mu_inv^2/var_inv", setting.mu_inv**2 / setting.var_inv, stated(0.11), rounding(2))
    )
    g1_0, g2_0 = exact["grad_k_at_0"]
    report.add(section, Row("grad L_1(0)", g1_0, stated([-1, -2]), rounding(0)))
    report.add(section, Row("grad L_2(0)", g2_0, stated([-1, 2]), rounding(0)))
    report.add(section, Row("S(0): gradient agreement at 0", _agreement(exact["grad_k_at_0"])))
    g1_min, g2_min = exact["grad_k_at_theta_star"]
    report.add(section, Row("grad L_1(theta*)", g1_min))
    report.add(section, Row("grad L_2(theta*)", g2_min))
    report.add(section, Row("S(theta*)", _agreement(exact["grad_k_at_theta_star"])))
    sigma_g = exact["Sigma_g"]
    report.add(
        section,
        Row("Sigma_g at theta*", sigma_g, stated([[0, 0], [0, 3.24]]), rounding(2), "covariance over the 2 domains, divided by 2"),
    )
    report.add(
        section,
        Row(
            "tr(H_bar^-1 Sigma_g)",
            exact["alignment_term"],
            stated(0.81),
            rounding(2),
            f"= {sigma_g[1, 1]:.4g}/{h_bar[1, 1]:.4g}" if paper else "",
        ),
    )
    report.add(section, Row("tr(H_bar)", exact["curvature_term"]))
    eigenvalues, eigenvectors = np.linalg.eigh(h_bar)
    flat = eigenvectors[:, 0]
    report.add(section, Row("eigenvalues of H_bar", eigenvalues, stated([4.01, 10]), rounding(2)))
    report.add(
        section,
        Row(
            "share of tr(Sigma_g) on the flat eigenvector",
            flat @ sigma_g @ flat / np.trace(sigma_g),
            stated(1.0),
            1e-9,
            "'supported entirely on the flat eigendirection'",
        ),
    )
    report.add(
        section,
        Row("loss rise per delta^2 along theta_inv, H_bar[inv]/2", h_bar[0, 0] / 2, stated(5), rounding(0), "'5 delta^2'"),
    )
    largest_m = min(1 / exact["curvature_term"], exact["alignment_term"])
    report.add(
        section,
        Row(
            "largest M with tr(H_bar) <= 1/M and tr(H_bar^-1 Sigma_g) >= M",
            largest_m,
            note="construction (i) of Counterexample 1 holds here only for M up to this",
        ),
    )

    pooled, standard_error, per_batch = sampled_estimates(setting, n, batches, seed)
    labels = {
        "H_k": ("H_1", "H_2"),
        "theta_k": ("theta_1*", "theta_2*"),
        "grad_k_at_0": ("grad L_1(0)", "grad L_2(0)"),
    }
    compared = [
        ("H_k", None),
        ("H_bar", "H_bar"),
        ("theta_star", "theta* (ERM minimizer)"),
        ("theta_k", None),
        ("grad_k_at_0", None),
        ("Sigma_g", "Sigma_g at theta*"),
        ("alignment_term", "tr(H_bar^-1 Sigma_g)"),
        ("curvature_term", "tr(H_bar)"),
    ]
    count = sum(np.size(exact[key]) for key, _ in compared)
    z = simultaneous_z(level, count)
    low = {key: pooled[key] - z * standard_error[key] for key in pooled}
    high = {key: pooled[key] + z * standard_error[key] for key in pooled}
    sampled = (
        f"From sampled data: {batches} data sets of {n} examples per domain, pooled; "
        f"CLT intervals holding together with {level:.0%} probability ({count} entries, Bonferroni: "
        f"+-{z:.2f} standard errors)"
    )
    for key, label in compared:
        if label is None:
            for i, name in enumerate(labels[key]):
                report.add(sampled, Estimate(name, exact[key][i], pooled[key][i], low[key][i], high[key][i]))
        else:
            report.add(sampled, Estimate(label, exact[key], pooled[key], low[key], high[key]))
    residual = float(np.abs(pooled["mean_grad_at_theta_star"]).max())
    report.notes.append(
        f"The sampled minimizer is exact for the sampled data: the mean gradient there is {residual:.1e}.\n"
        "Conventions: Sigma_g divides by the number of domains (the meta-distribution weights the two "
        "domains equally, Eq. 4); dividing by K - 1 = 1 instead would double it. Appendix C's b_k is "
        "E_k[y x], the opposite sign of Eq. 6's b_e (there the gradient is A theta + b_e), so its "
        "theta_k* = H_k^-1 b_k is right in its own notation."
    )
    report.data = {
        "setting": asdict(setting),
        "closed_form": exact,
        "sampled": {"n_per_domain": n, "batches": batches, "seed": seed, "level": level,
                    "pooled": pooled, "standard_error": standard_error, "ci_low": low, "ci_high": high},
    }
    _draw(report, setting, exact, per_batch, paper)
    report.write()
    return report


def _draw(report: Report, setting: LinearGaussian, exact: dict, per_batch: dict, paper: bool) -> None:
    fig, (left, right) = figure(11, 4.4, columns=2)
    u, v = np.meshgrid(np.linspace(-0.3, 0.5, 241), np.linspace(-0.75, 0.75, 241))
    grid = np.stack([u, v], axis=-1)
    mean_y = np.array([[setting.mu_inv, c] for c in setting.spurious_means()])

    def loss(h, vk):
        return 0.5 - grid @ vk + 0.5 * np.einsum("...i,ij,...j->...", grid, h, grid)

    aggregate = np.mean([loss(h, vk) for h, vk in zip(exact["H_k"], mean_y, strict=True)], axis=0)
    contours = left.contour(u, v, aggregate, levels=np.quantile(aggregate, np.linspace(0.01, 0.6, 12)), cmap="Greys")
    left.clabel(contours, fontsize=6, fmt="%.2f")
    for k, (h, vk, color) in enumerate(zip(exact["H_k"], mean_y, ("tab:red", "tab:blue"), strict=True)):
        domain = loss(h, vk)
        left.contour(u, v, domain, levels=np.quantile(domain, [0.02, 0.08, 0.2]), colors=color, linestyles="dashed", linewidths=0.8)
        left.plot(*exact["theta_k"][k], "o", color=color, label=f"domain {k + 1} minimizer")
        g = exact["grad_k_at_0"][k]
        left.annotate("", xy=-0.1 * g, xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": color})
    left.plot(*exact["theta_star"], "k*", markersize=12, label="ERM minimizer theta*")
    left.plot(0, 0, "k+", label="0 (arrows: -0.1 grad L_k(0))")
    left.set_xlabel("theta_inv")
    left.set_ylabel("theta_spur")
    left.set_title("Aggregate loss (grey) and domain losses (dashed)")
    left.legend(fontsize=7, loc="lower right")

    values = per_batch["alignment_term"]
    right.hist(values, bins=25, color="tab:gray", alpha=0.7, label=f"one data set each ({len(values)})")
    right.axvline(exact["alignment_term"], color="k", label="closed form")
    if paper:
        right.axvline(0.81, color="tab:orange", linestyle="dashed", label="paper: 0.81")
    right.set_xlabel("tr(H_bar^-1 Sigma_g) estimated from data")
    right.set_title("Alignment term at the ERM minimizer")
    right.legend(fontsize=7)
    report.save_figure(fig, "appendix_c.png")
