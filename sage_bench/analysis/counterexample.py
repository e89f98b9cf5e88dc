"""Counterexample 1 (Sec. 2.3, Appendix B.3): flatness and gradient alignment are decoupled.

The family: per-distribution losses ``L_e(theta) = theta^T A theta / 2 + b_e^T theta`` with
``E_e[b_e] = 0``, the distributions equally likely. For a given ``M`` the two constructions of
Appendix B.3 are built as instances (``A`` and the ``b_e``):

- (i) flat but misaligned: ``A = I / (2M)``, ``b = (0, +1), (0, -1)``;
- (ii) aligned but sharp: ``A = (M / 2) I``, ``b = (+1/sqrt 2, 0), (-1/sqrt 2, 0)``;

and ``tr(H_bar)`` and ``tr(H_bar^-1 Sigma_g)`` are computed from each instance as the theorem
defines them, not from the proof's formulas: the Hessians by automatic differentiation, the
population minimizer ``theta*`` by solving ``grad R = 0``, ``Sigma_g`` as the covariance of the
distributions' gradients at ``theta*``.

The quadratic family also makes Theorem 1 exact (no remainder terms), so a Monte Carlo over
``K`` training distributions drawn i.i.d. and isotropic noise ``xi ~ N(0, sigma^2 I)`` checks
Eq. 5 on each instance: ``E[R(theta_hat + xi)] - R(theta*) =
tr(H_bar^-1 Sigma_g) / (2K) + sigma^2 tr(H_bar) / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from torch.autograd.functional import hessian

from sage_bench.analysis.report import Estimate, Report, Row, figure
from sage_bench.errors import UserError

NAME = "counterexample"


@dataclass(frozen=True)
class QuadraticInstance:
    """``L_e(theta) = theta^T A theta / 2 + b_e^T theta`` for each row ``b_e`` of ``b``."""

    A: np.ndarray  # (d, d) symmetric positive definite
    b: np.ndarray  # (E, d), one row per distribution

    def loss(self, theta: torch.Tensor, e: int) -> torch.Tensor:
        a = torch.as_tensor(self.A, dtype=theta.dtype)
        b = torch.as_tensor(self.b[e], dtype=theta.dtype)
        return 0.5 * theta @ a @ theta + b @ theta

    def risk(self, thetas: np.ndarray) -> np.ndarray:
        """The population risk ``R = E_e[L_e]`` of each row of ``thetas``."""
        quadratic = 0.5 * np.einsum("...i,ij,...j->...", thetas, self.A, thetas)
        return quadratic + thetas @ self.b.mean(axis=0)


def flat_but_misaligned(m: float) -> QuadraticInstance:
    """Construction (i): ``A = lambda I`` with ``lambda = 1/(2M)``; ``b_e`` on ``e_2``, variance 1."""
    return QuadraticInstance(A=np.eye(2) / (2 * m), b=np.array([[0.0, 1.0], [0.0, -1.0]]))


def aligned_but_sharp(m: float) -> QuadraticInstance:
    """Construction (ii): ``A = lambda I`` with ``lambda = M/2``; ``b_e`` on ``e_1``, variance 1/2."""
    half = 0.5**0.5
    return QuadraticInstance(A=np.eye(2) * m / 2, b=np.array([[half, 0.0], [-half, 0.0]]))


def measure(instance: QuadraticInstance) -> dict[str, np.ndarray | float]:
    """``H_bar``, ``theta*``, ``Sigma_g`` and the two traces, computed from the instance."""
    n_envs, d = instance.b.shape
    origin = torch.zeros(d, dtype=torch.float64)
    hessians = [hessian(lambda t, e=e: instance.loss(t, e), origin) for e in range(n_envs)]
    h_bar = torch.stack(hessians).mean(dim=0)

    def env_grads(theta: torch.Tensor) -> torch.Tensor:
        theta = theta.detach().requires_grad_(True)
        return torch.stack([torch.autograd.grad(instance.loss(theta, e), theta)[0] for e in range(n_envs)])

    theta_star = -torch.linalg.solve(h_bar, env_grads(origin).mean(dim=0))  # exact: R is quadratic
    grads = env_grads(theta_star)
    centred = grads - grads.mean(dim=0)
    sigma_g = centred.T @ centred / n_envs
    return {
        "H_bar": h_bar.numpy(),
        "theta_star": theta_star.numpy(),
        "grad_R_at_theta_star": grads.mean(dim=0).numpy(),
        "Sigma_g": sigma_g.numpy(),
        "flatness": float(torch.trace(h_bar)),
        "alignment": float(torch.trace(torch.linalg.solve(h_bar, sigma_g))),
    }


def excess_risk_monte_carlo(
    instance: QuadraticInstance, k: int, sigma: float, draws: int, seed: int
) -> tuple[float, float]:
    """Mean and standard error of ``R(theta_hat + xi) - R(theta*)`` over ``draws`` repetitions.

    Each repetition draws ``k`` training distributions i.i.d. (uniformly, with replacement),
    takes the minimizer ``theta_hat`` of their mean loss and adds ``xi ~ N(0, sigma^2 I)``.
    """
    rng = np.random.default_rng(seed)
    n_envs, d = instance.b.shape
    chosen = rng.integers(0, n_envs, size=(draws, k))
    b_hat = instance.b[chosen].mean(axis=1)  # the empirical risk's linear term, per draw
    theta_hat = -np.linalg.solve(instance.A, b_hat.T).T  # its minimizer (Hessian A)
    theta = theta_hat + sigma * rng.standard_normal((draws, d))
    theta_star = -np.linalg.solve(instance.A, instance.b.mean(axis=0))
    excess = instance.risk(theta) - instance.risk(theta_star)
    return float(excess.mean()), float(excess.std(ddof=1) / np.sqrt(draws))


def _exact(value: float) -> float:
    """Tolerance for comparing a computed value with a formula evaluated exactly."""
    return 1e-9 * max(1.0, abs(value))


def run(
    out_dir: Path,
    m: float = 10.0,
    k: int = 4,
    sigma: float = 0.1,
    draws: int = 200_000,
    seed: int = 0,
    level: float = 0.99,
) -> Report:
    """Build both constructions for ``M = m``, measure them, check Theorem 1; return the report."""
    if m <= 0:
        raise UserError(f"--M must be positive, got {m}")
    if k < 1 or draws < 2 or sigma < 0:
        raise UserError(f"need --K >= 1, --draws >= 2 and --sigma >= 0, got {k}, {draws} and {sigma}")
    report = Report(NAME, Path(out_dir))
    z = NormalDist().inv_cdf(1 - (1 - level) / 4)  # two intervals together (Bonferroni)
    results = {}
    theorem_rows = []
    for label, build, stated in [
        ("(i) flat but misaligned", flat_but_misaligned, {"flatness": 1 / m, "alignment": 2 * m, "Sigma_g": [[0, 0], [0, 1]]}),
        ("(ii) aligned but sharp", aligned_but_sharp, {"flatness": m, "alignment": 1 / m, "Sigma_g": [[0.5, 0], [0, 0]]}),
    ]:
        instance = build(m)
        measured = measure(instance)
        section = f"Construction {label}, M = {m:g} (Appendix B.3)"
        report.add(section, Row("H_bar", measured["H_bar"]))
        report.add(section, Row("theta*", measured["theta_star"], [0, 0], 1e-12))
        report.add(section, Row("Sigma_g at theta*", measured["Sigma_g"], stated["Sigma_g"], 1e-12))
        eq = "Eq. 34" if label.startswith("(i)") else "Eq. 36"
        report.add(section, Row("tr(H_bar)", measured["flatness"], stated["flatness"], _exact(stated["flatness"]), eq))
        report.add(
            section,
            Row(
                "tr(H_bar^-1 Sigma_g)",
                measured["alignment"],
                stated["alignment"],
                _exact(stated["alignment"]),
                "Eq. 35" if label.startswith("(i)") else "Eq. 36",
            ),
        )
        if label.startswith("(i)"):
            holds = measured["flatness"] <= 1 / m * (1 + 1e-12) and measured["alignment"] >= m * (1 - 1e-12)
            claim = "tr(H_bar) <= 1/M and tr(H_bar^-1 Sigma_g) >= M"
        else:
            holds = measured["alignment"] <= 1 / m * (1 + 1e-12) and measured["flatness"] >= m * (1 - 1e-12)
            claim = "tr(H_bar^-1 Sigma_g) <= 1/M and tr(H_bar) >= M"
        report.add(section, Row(claim, holds, True, 0.0, "equality where the bound is tight"))
        predicted = measured["alignment"] / (2 * k) + sigma**2 / 2 * measured["flatness"]
        mean, se = excess_risk_monte_carlo(instance, k, sigma, draws, seed)
        theorem_rows.append(
            Estimate(f"{label}: expected excess risk", predicted, mean, mean - z * se, mean + z * se)
        )
        results[label] = {
            "instance": {"A": instance.A, "b": instance.b},
            "measured": measured,
            "paper": stated,
            "theorem_1": {
                "alignment_part": measured["alignment"] / (2 * k),
                "curvature_part": sigma**2 / 2 * measured["flatness"],
                "predicted": predicted,
                "monte_carlo_mean": mean,
                "monte_carlo_se": se,
            },
        }
    theorem = f"Theorem 1 (Eq. 5) on these instances: K = {k}, sigma = {sigma:g}, {draws} draws, {level:.0%} intervals"
    for row in theorem_rows:
        report.add(theorem, row)
    report.notes.append(
        "The 'closed form' of Theorem 1 is tr(H_bar^-1 Sigma_g)/(2K) + sigma^2 tr(H_bar)/2 with the traces "
        "measured above; for quadratic losses the O(K^-3/2) and O(sigma^3) terms vanish."
    )
    report.data = {"M": m, "K": k, "sigma": sigma, "draws": draws, "seed": seed, "constructions": results}
    _draw(report, m)
    report.write()
    return report


def _draw(report: Report, m: float) -> None:
    ms = np.logspace(-1, 2, 31)
    fig, axes = figure(10, 4.2, columns=2)
    for ax, (title, build) in zip(
        axes, [("(i) flat but misaligned", flat_but_misaligned), ("(ii) aligned but sharp", aligned_but_sharp)], strict=True
    ):
        measured = [measure(build(value)) for value in ms]
        ax.loglog(ms, [r["flatness"] for r in measured], "o-", ms=3, color="tab:blue", label="tr(H_bar) (flatness)")
        ax.loglog(ms, [r["alignment"] for r in measured], "s-", ms=3, color="tab:red", label="tr(H_bar^-1 Sigma_g) (alignment)")
        ax.loglog(ms, ms, ":", color="k", linewidth=1.2, zorder=3, label="M")
        ax.loglog(ms, 1 / ms, "--", color="k", linewidth=1.2, zorder=3, label="1/M")
        ax.axvline(m, color="k", linewidth=0.6)
        ax.set_xlabel("M")
        ax.set_title(f"Construction {title}")
        ax.legend(fontsize=7)
    report.save_figure(fig, "counterexample.png")
