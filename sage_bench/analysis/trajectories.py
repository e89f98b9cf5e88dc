"""Figure 2: ERM, SAM, SGLD and SAGE's agreement-scaled noise on a two-domain toy with two minima.

The toy. Two domains with losses ``L_1 = L + C`` and ``L_2 = L - C`` on ``theta`` in R^2, so that
the aggregate ``(L_1 + L_2) / 2`` is exactly ``L``:

- ``L(theta) = bowl ||theta||^2 / 2 - depth_a exp(-||theta - a||^2 / (2 width_a^2))
  - depth_b exp(-||theta - b||^2 / (2 width_b^2))`` has two minima: A, a shallow wide basin
  near ``a``, and B, a deeper narrow one near ``b``;
- the conflict term ``C(theta) = conflict (theta - a) . n (1 - r^2 / R^2)^3`` for
  ``r = ||theta - a|| < R`` (0 beyond; ``n`` a unit vector) tilts the two domains' losses in
  opposite directions around A and vanishes around B.

ERM, SAM and constant-noise SGLD follow the aggregate gradient, which ``C`` does not touch, so
the conflict is invisible to them. The domains' gradients ``grad L +- grad C`` point apart
wherever ``||grad C|| > ||grad L||``, which is most of A's basin (``S(theta)`` near -1), and
coincide wherever ``C = 0``, which includes all of B's basin (``S = 1``). A is the "flat but
misaligned" minimum of Counterexample 1, B the aligned one.

The methods, each a full-batch gradient step ``theta <- theta - lr d`` from the same start:

- ERM: ``d = grad L``;
- SAM: ``d`` = ``grad L`` at ``theta + e``, ``e`` from ``sage_bench.geometry.sam_perturbation``;
- SGLD: ``d = grad L + sigma xi`` (``sage_bench.geometry.add_gaussian_noise_``, constant
  ``sigma``; by default ``sigma = gamma``, SAGE's noise where ``S = 0``, and, as a second row,
  ``sigma = 2 gamma``, SAGE's largest);
- SAGE's noise: ``d = grad L + beta xi``, ``beta = noise_scale(S, gamma) = gamma (1 - S)`` with
  ``S = mean_pairwise_cosine`` of the two domains' gradients -- the algorithm's own code.

Which basin a run ends in is decided by following the noise-free gradient flow from its last
point. The noisy methods run once per seed (each seed its own generator) and report the
fraction of seeds ending in each basin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sage_bench.analysis.report import Report, Row, figure, one_thread
from sage_bench.errors import UserError
from sage_bench.geometry import (
    add_gaussian_noise_,
    mean_pairwise_cosine,
    noise_scale,
    perturbed,
    sam_perturbation,
)

NAME = "trajectories"


@dataclass(frozen=True)
class TwoMinimaToy:
    """The toy's landscape; see the module docstring."""

    a: tuple[float, float] = (-1.0, 0.0)
    b: tuple[float, float] = (1.0, 0.4)
    depth_a: float = 0.5
    width_a: float = 0.6
    depth_b: float = 1.0
    width_b: float = 0.35
    bowl: float = 0.2
    conflict: float = 3.0
    conflict_radius: float = 1.9
    conflict_direction: tuple[float, float] = (0.0, 1.0)

    def aggregate(self, theta: torch.Tensor) -> torch.Tensor:
        """``L`` at each row of ``theta`` (shape ``(..., 2)``)."""
        a = theta.new_tensor(self.a)
        b = theta.new_tensor(self.b)
        well_a = self.depth_a * torch.exp(-(theta - a).square().sum(-1) / (2 * self.width_a**2))
        well_b = self.depth_b * torch.exp(-(theta - b).square().sum(-1) / (2 * self.width_b**2))
        return self.bowl * theta.square().sum(-1) / 2 - well_a - well_b

    def conflict_term(self, theta: torch.Tensor) -> torch.Tensor:
        """``C`` at each row of ``theta``: zero at distance ``conflict_radius`` from ``a`` and beyond."""
        a = theta.new_tensor(self.a)
        n = theta.new_tensor(self.conflict_direction)
        n = n / n.norm()
        r2 = (theta - a).square().sum(-1)
        bump = torch.clamp(1 - r2 / self.conflict_radius**2, min=0.0) ** 3
        return self.conflict * ((theta - a) @ n) * bump

    def aggregate_grad(self, theta: torch.Tensor) -> torch.Tensor:
        """``grad L`` at each row of ``theta``, in closed form (tested against autograd)."""
        a = theta.new_tensor(self.a)
        b = theta.new_tensor(self.b)
        well_a = self.depth_a * torch.exp(-(theta - a).square().sum(-1, keepdim=True) / (2 * self.width_a**2))
        well_b = self.depth_b * torch.exp(-(theta - b).square().sum(-1, keepdim=True) / (2 * self.width_b**2))
        return self.bowl * theta + well_a * (theta - a) / self.width_a**2 + well_b * (theta - b) / self.width_b**2

    def conflict_grad(self, theta: torch.Tensor) -> torch.Tensor:
        """``grad C`` at each row of ``theta``, in closed form (tested against autograd)."""
        a = theta.new_tensor(self.a)
        n = theta.new_tensor(self.conflict_direction)
        n = n / n.norm()
        offset = theta - a
        u = torch.clamp(1 - offset.square().sum(-1, keepdim=True) / self.conflict_radius**2, min=0.0)
        along = offset @ n
        return self.conflict * (n * u**3 - along[..., None] * 6 * u**2 * offset / self.conflict_radius**2)

    def domain_grads(self, theta: torch.Tensor) -> list[torch.Tensor]:
        """The two domains' gradients ``[grad L + grad C, grad L - grad C]`` at each row of ``theta``."""
        aggregate, conflict = self.aggregate_grad(theta), self.conflict_grad(theta)
        return [aggregate + conflict, aggregate - conflict]


def agreement(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """SAGE's ``S`` for one point: ``mean_pairwise_cosine`` of its two domain gradients."""
    return float(mean_pairwise_cosine([[g1], [g2]]))


@dataclass(frozen=True)
class Dynamics:
    """Step size, length and the methods' own hyperparameters."""

    start: tuple[float, float] = (-1.3, 1.4)
    lr: float = 0.05
    steps: int = 1500
    rho: float = 0.05  # SAM
    gamma: float = 1.4  # SAGE's noise scale; SGLD's sigma is given in units of it
    sgld_sigmas: tuple[float, ...] = (1.0, 2.0)  # multiples of gamma


def descend(toy: TwoMinimaToy, theta: np.ndarray, lr: float = 0.05, steps: int = 3000) -> np.ndarray:
    """Noise-free gradient descent on the aggregate from each row of ``theta``."""
    current = torch.as_tensor(theta, dtype=torch.float64).clone()
    for _ in range(steps):
        current -= lr * toy.aggregate_grad(current)
    return current.numpy()


def run_method(
    toy: TwoMinimaToy, dynamics: Dynamics, method: str, seeds: list[int], sigma: float = 0.0
) -> np.ndarray:
    """The paths of ``method`` from the start, one per seed: an array ``(seeds, steps + 1, 2)``.

    ``method`` is ``"ERM"``, ``"SAM"``, ``"SGLD"`` (noise ``sigma``) or ``"SAGE noise"``. The
    seeds run side by side; each has its own generator, so a seed's path does not depend on
    which other seeds run with it.
    """
    theta = torch.tensor([dynamics.start] * len(seeds), dtype=torch.float64)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    path = [theta.clone()]
    for _ in range(dynamics.steps):
        g1, g2 = toy.domain_grads(theta)
        direction = (g1 + g2) / 2
        if method == "SAM":
            for i in range(len(seeds)):
                e = sam_perturbation([direction[i]], dynamics.rho)[0]
                row = theta[i].clone()
                with perturbed([row], [e]):
                    direction[i] = toy.aggregate_grad(row)
        elif method == "SGLD":
            for i, generator in enumerate(generators):
                add_gaussian_noise_([direction[i]], sigma, generator)
        elif method == "SAGE noise":
            for i, generator in enumerate(generators):
                beta = noise_scale(agreement(g1[i], g2[i]), dynamics.gamma)
                add_gaussian_noise_([direction[i]], beta, generator)
        elif method != "ERM":
            raise ValueError(f"unknown method {method!r}")
        theta -= dynamics.lr * direction
        path.append(theta.clone())
    return torch.stack(path, dim=1).numpy()


@dataclass
class Outcome:
    """Where one method's runs end."""

    label: str
    paths: np.ndarray  # (seeds, steps + 1, 2)
    basins: list[str] = field(default_factory=list)  # "A" or "B" per seed (or "?" if neither)
    in_figure_2: bool = True  # drawn as a path (else only its end points)
    end_distance: float = 0.0  # median distance of the last points from the minima they settle into

    def fraction(self, basin: str) -> float:
        return self.basins.count(basin) / len(self.basins)


def run(
    out_dir: Path,
    seeds: int = 16,
    toy: TwoMinimaToy = TwoMinimaToy(),
    dynamics: Dynamics = Dynamics(),
) -> Report:
    """Run every method from the shared start, classify the endings, draw Figure 2."""
    if seeds < 1 or dynamics.steps < 1 or dynamics.lr <= 0 or dynamics.gamma < 0:
        raise UserError(
            f"need --seeds >= 1, --steps >= 1, --lr > 0 and --gamma >= 0, "
            f"got {seeds}, {dynamics.steps}, {dynamics.lr} and {dynamics.gamma}"
        )
    report = Report(NAME, Path(out_dir))
    with one_thread():
        minima = descend(toy, np.array([toy.a, toy.b]))
        seed_list = list(range(seeds))
        runs = [
            ("ERM", "ERM", [0], 0.0),
            ("SAM", "SAM", [0], 0.0),
            *[
                (f"SGLD, sigma = {m:g} gamma", "SGLD", seed_list, m * dynamics.gamma)
                for m in dynamics.sgld_sigmas
            ],
            ("SAGE noise, gamma (1 - S)", "SAGE noise", seed_list, 0.0),
        ]
        outcomes = []
        for index, (label, method, method_seeds, sigma) in enumerate(runs):
            paths = run_method(toy, dynamics, method, method_seeds, sigma)
            settled = descend(toy, paths[:, -1])
            distances = np.linalg.norm(settled[:, None, :] - minima[None], axis=-1)
            basins = ["AB"[int(np.argmin(d))] if d.min() < 1e-3 else "?" for d in distances]
            # Figure 2 draws one SGLD: the first noise level
            in_figure = method != "SGLD" or index == 2
            spread = float(np.median(np.linalg.norm(paths[:, -1] - settled, axis=-1)))
            outcomes.append(Outcome(label, paths, basins, in_figure, spread))
        s_start = agreement(*toy.domain_grads(torch.tensor(dynamics.start, dtype=torch.float64)))
        s_minima = [
            agreement(*toy.domain_grads(torch.tensor(m + 1e-3, dtype=torch.float64)))
            for m in minima
        ]
        loss_minima = toy.aggregate(torch.as_tensor(minima)).numpy()

    section = "The toy"
    report.add(section, Row("minimum A", minima[0], note=f"aggregate loss {loss_minima[0]:.4g}"))
    report.add(section, Row("minimum B", minima[1], note=f"aggregate loss {loss_minima[1]:.4g}"))
    report.add(section, Row("S near A (1e-3 off the minimum)", s_minima[0]))
    report.add(section, Row("S near B (1e-3 off the minimum)", s_minima[1]))
    report.add(section, Row("start", list(dynamics.start), note=f"S = {s_start:.3g}"))
    section = f"Where each method ends ({dynamics.steps} steps of lr {dynamics.lr:g}; noisy methods over {seeds} seeds)"
    figure_claim = {"ERM": "A", "SAM": "A", "SGLD, sigma = 1 gamma": "A", "SAGE noise, gamma (1 - S)": "B"}
    for outcome in outcomes:
        end = outcome.paths[0, -1]
        fractions = {basin: outcome.fraction(basin) for basin in ("A", "B", "?")}
        row_text = ", ".join(f"{basin}: {f:.0%}" for basin, f in fractions.items() if f > 0 or basin != "?")
        claim = figure_claim.get(outcome.label)
        report.add(section, Row(
            f"{outcome.label}: fraction ending in A / B",
            [fractions["A"], fractions["B"]],
            None if claim is None else ([1.0, 0.0] if claim == "A" else [0.0, 1.0]),
            0.25,  # "converges to" read as: at least 75% of the seeds
            f"{row_text}; seed 0 ends at ({end[0]:.3f}, {end[1]:.3f}); "
            f"median distance of the ends from their minimum {outcome.end_distance:.2g}"
            + (f"; Figure 2: {claim}" if claim else "; not in Figure 2"),
        ))
    report.notes.append(
        "Figure 2's paths are single runs; here each noisy method runs once per seed and the row "
        "agrees with the figure when at least 75% of the seeds end where the figure's path does. "
        "SGLD at SAGE's largest noise (2 gamma) leaves A as well, but its noise never switches off, so "
        "it keeps being kicked around; SAGE's noise is gamma (1 - S), which vanishes in B's basin "
        "(S = 1), so once there it stays."
    )
    report.data = {
        "toy": asdict(toy),
        "dynamics": asdict(dynamics),
        "minima": {"A": minima[0], "B": minima[1]},
        "outcomes": {
            o.label: {
                "basins": o.basins,
                "fraction_A": o.fraction("A"),
                "fraction_B": o.fraction("B"),
                "ends": o.paths[:, -1],
                "median_end_distance": o.end_distance,
            }
            for o in outcomes
        },
    }
    _draw(report, toy, dynamics, minima, outcomes)
    report.write()
    return report


STYLES = {
    "ERM": {"color": "k", "linestyle": "--", "linewidth": 1.6},
    "SAM": {"color": "tab:red"},
    "SGLD": {"color": "tab:orange"},
    "SAGE": {"color": "tab:blue", "linewidth": 1.4},
}


def _style(outcome: Outcome) -> dict:
    style = {"linewidth": 1.0, **STYLES[outcome.label.split(",")[0].split(" ")[0]]}
    if not outcome.in_figure_2:
        style["color"] = "tab:brown"
    return style


def _agreement_map(toy: TwoMinimaToy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    points = torch.tensor(np.stack([u.ravel(), v.ravel()], axis=1), dtype=torch.float64)
    g1, g2 = toy.domain_grads(points)
    return np.array([agreement(a, b) for a, b in zip(g1, g2, strict=True)]).reshape(u.shape)


def _draw(report: Report, toy: TwoMinimaToy, dynamics: Dynamics, minima: np.ndarray, outcomes: list[Outcome]) -> None:
    u, v = np.meshgrid(np.linspace(-2.4, 2.2, 93), np.linspace(-1.6, 2.0, 73))
    with torch.no_grad():
        loss = toy.aggregate(torch.tensor(np.stack([u, v], axis=-1))).numpy()
    s_map = _agreement_map(toy, u, v)
    fig, (left, right) = figure(12, 4.8, columns=2)
    left.contourf(u, v, loss, levels=30, cmap="Greys_r")
    image = right.contourf(u, v, s_map, levels=np.linspace(-1, 1, 21), cmap="RdBu")
    fig.colorbar(image, ax=right, label="S(theta)")
    for ax in (left, right):
        for outcome in outcomes:
            style = _style(outcome)
            ends = outcome.paths[:, -1]
            if outcome.in_figure_2:
                path = outcome.paths[0]
                ax.plot(path[:, 0], path[:, 1], label=outcome.label, **style)
                ax.plot(ends[:, 0], ends[:, 1], "o", color=style["color"], markersize=3)
            else:
                ax.plot(ends[:, 0], ends[:, 1], "x", color=style["color"], markersize=4, label=f"{outcome.label} (ends)")
        ax.plot(*dynamics.start, "*", color="gold", markeredgecolor="k", markersize=14)
        for name, point in zip("AB", minima, strict=True):
            ax.annotate(name, point, xytext=(6, 6), textcoords="offset points", fontsize=12, color="k", weight="bold")
        ax.set_xlabel("theta_1")
        ax.set_ylabel("theta_2")
        ax.set_xlim(u.min(), u.max())
        ax.set_ylim(v.min(), v.max())
    left.set_title("Aggregate loss, paths of seed 0, end points of all seeds")
    right.set_title("Gradient agreement S(theta) (blue: aligned, red: conflicting)")
    left.legend(fontsize=7, loc="lower left")
    report.save_figure(fig, "trajectories.png")
