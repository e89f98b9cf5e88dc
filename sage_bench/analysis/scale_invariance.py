"""Appendix D / Figure 4: measured sharpness under a rescaling that leaves the function unchanged.

A ``Linear(2, 64) -> ReLU -> Linear(64, 2)`` network is trained on scikit-learn's concentric
circles (full batch, Adam, learning rate annealed to 0) until it settles. For ``alpha`` in
``[0.1, 10]`` the parameters are rescaled ``W1 -> alpha W1``, ``b1 -> alpha b1``,
``W2 -> W2 / alpha`` (``b2`` unchanged): ReLU is positively homogeneous, so the network computes
the same function (checked). At each ``alpha`` the sharpness ``L(w + e) - L(w)`` on the training
set is measured with the perturbation ``e`` of

- SAM: ``sage_bench.geometry.sam_perturbation`` (``rho g / ||g||``);
- ASAM: ``sage_bench.geometry.asam_perturbation`` (``rho T^2 g / ||T g||``, ``T = |w| + eta``),
  on the weights only as its authors' code does, and, as a variant, on the biases too;
- SAGE: ``sage_bench.geometry.spectral_perturbation`` (``rho ||W||_F polar(G)`` per weight
  matrix, ``rho g / ||g||`` per bias vector), with SAGE's default polar iteration; and, to
  separate the two rules, the same perturbation restricted to the weight matrices.

One network is trained per seed (data and initialisation); the spread of each method is
reported per seed and the paper's claims are checked on the median.

The weight-matrix rule is exactly invariant: ``G -> G / alpha`` leaves ``polar(G)`` unchanged
and ``||alpha W||_F = alpha ||W||_F``. The bias rule is not: ``b1`` grows with ``alpha`` while its
perturbation keeps the size ``rho``. The same holds for ASAM with unnormalised biases.

A method's spread is ``max / min`` of its sharpness over ``alpha``: 1 for a scale-invariant
measure. Everything after training runs in float64 so that small loss differences are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sage_bench.algorithms.registry import algorithm_space
from sage_bench.analysis.report import Report, Row, figure, one_thread
from sage_bench.errors import UserError
from sage_bench.geometry import (
    asam_perturbation,
    perturbed,
    sam_perturbation,
    spectral_perturbation,
)

NAME = "scale-invariance"


def circles(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's two concentric circles (inner radius half the outer), points jittered by
    Gaussian noise of standard deviation ``noise``."""
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=n, noise=noise, factor=0.5, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def train_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    steps: int = 2000,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    hidden: int = 64,
) -> tuple[nn.Sequential, list[float], float]:
    """The two-layer ReLU network trained full-batch with Adam on the cross-entropy plus
    ``weight_decay / 2 ||w||^2``, the learning rate annealed to 0 on a cosine so that training
    settles. (The circles are separable, so without weight decay the cross-entropy has no
    finite minimum and keeps creeping down; with it, there is one.) Returns the network, the
    objective per step and the objective's final gradient norm.
    """
    torch.manual_seed(seed)
    network = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    objective = []
    for _ in range(steps):
        loss = F.cross_entropy(network(x), y)
        optimizer.zero_grad()
        loss.backward()
        penalty = 0.0
        if weight_decay:
            with torch.no_grad():
                penalty = float(sum(p.square().sum() for p in network.parameters())) * weight_decay / 2
        objective.append(loss.item() + penalty)
        optimizer.step()
        schedule.step()
    loss = F.cross_entropy(network(x), y)
    grads = torch.autograd.grad(loss, list(network.parameters()))
    with torch.no_grad():
        grad_norm = torch.linalg.vector_norm(
            torch.cat([(g + weight_decay * p).flatten() for g, p in zip(grads, network.parameters(), strict=True)])
        )
    return network, objective, float(grad_norm)


def rescaled(network: nn.Sequential, alpha: float) -> nn.Sequential:
    """A float64 copy computing the same function: ``W1, b1`` times ``alpha``, ``W2`` divided."""
    first, _, second = network
    copy = nn.Sequential(nn.Linear(2, first.out_features), nn.ReLU(), nn.Linear(first.out_features, 2)).double()
    with torch.no_grad():
        copy[0].weight.copy_(first.weight.double() * alpha)
        copy[0].bias.copy_(first.bias.double() * alpha)
        copy[2].weight.copy_(second.weight.double() / alpha)
        copy[2].bias.copy_(second.bias.double())
    return copy


Perturbation = Callable[[list[nn.Parameter], list[torch.Tensor]], list[torch.Tensor]]


def perturbations(rho_sam: float, rho_asam: float, eta: float, rho_sage: float) -> dict[str, Perturbation]:
    """Each method's perturbation ``e(params, grads)``, from the algorithms' own code."""
    sage = algorithm_space("SAGE")
    sage_options = {
        "orthogonalize": sage["orthogonalize"].default,
        "layer_scale": sage["layer_scale"].default,
        "polar": sage["polar"].default,
        "ns_steps": sage["ns_steps"].default,
    }
    return {
        "SAM": lambda params, grads: sam_perturbation(grads, rho_sam),
        "ASAM": lambda params, grads: asam_perturbation(
            params, grads, rho_asam, eta, adaptive=[p.ndim >= 2 for p in params]
        ),
        "ASAM, biases adaptive too": lambda params, grads: asam_perturbation(params, grads, rho_asam, eta),
        "SAGE": lambda params, grads: spectral_perturbation(params, grads, rho_sage, **sage_options),
        "SAGE, weight matrices only": lambda params, grads: [
            e if p.ndim >= 2 else torch.zeros_like(e)
            for p, e in zip(params, spectral_perturbation(params, grads, rho_sage, **sage_options), strict=True)
        ],
    }


def sharpness(network: nn.Module, x: torch.Tensor, y: torch.Tensor, perturbation: Perturbation) -> float:
    """``L(w + e) - L(w)`` with ``e`` from the gradient at ``w``; the weights are restored."""
    params = list(network.parameters())
    loss = F.cross_entropy(network(x), y)
    grads = list(torch.autograd.grad(loss, params))
    e = perturbation(params, [g.detach() for g in grads])
    with torch.no_grad(), perturbed(params, e):
        loss_perturbed = F.cross_entropy(network(x), y)
    return float(loss_perturbed - loss.detach())


def spread(values: list[float]) -> float:
    """``max / min`` of positive values; NaN if any is not positive (no ratio is meaningful)."""
    values = np.asarray(values)
    if np.any(values <= 0):
        return float("nan")
    return float(values.max() / values.min())


@dataclass
class Trial:
    """One trained network and its sharpness curves."""

    seed: int
    loss: float  # training cross-entropy
    accuracy: float
    objective_change: float  # relative change of the training objective over the last 10% of steps
    grad_norm: float  # of the training objective at the end
    function_change: float  # largest |logit change| over the rescalings
    curves: dict[str, list[float]]  # method -> sharpness at each alpha

    @property
    def spreads(self) -> dict[str, float]:
        return {name: spread(values) for name, values in self.curves.items()}


def measure_trial(
    seed: int, n: int, noise: float, steps: int, weight_decay: float, grid: np.ndarray, methods: dict[str, Perturbation]
) -> Trial:
    """Train one network (data and initialisation from ``seed``) and measure every method at every alpha."""
    x, y = circles(n, noise, seed)
    network, objective, grad_norm = train_mlp(x, y, seed, steps=steps, weight_decay=weight_decay)
    x64 = x.double()
    with torch.no_grad():
        logits = rescaled(network, 1.0)(x64)
    curves: dict[str, list[float]] = {name: [] for name in methods}
    function_change = 0.0
    for alpha in grid:
        model = rescaled(network, float(alpha))
        with torch.no_grad():
            function_change = max(function_change, float((model(x64) - logits).abs().max() / logits.abs().max()))
        for name, perturbation in methods.items():
            curves[name].append(sharpness(model, x64, y, perturbation))
    return Trial(
        seed=seed,
        loss=float(F.cross_entropy(logits, y)),
        accuracy=float((logits.argmax(dim=1) == y).double().mean()),
        objective_change=abs(objective[-1] - objective[int(0.9 * steps)]) / objective[-1],
        grad_norm=grad_norm,
        function_change=function_change,
        curves=curves,
    )


def run(
    out_dir: Path,
    seeds: int = 5,
    n: int = 512,
    noise: float = 0.1,
    steps: int = 2000,
    alphas: int = 25,
    rho_sam: float = 0.05,
    rho_asam: float = 0.5,
    eta: float = 0.01,
    rho_sage: float = 0.05,
    weight_decay: float = 0.0,
) -> Report:
    """Train one network per seed, rescale, measure, plot; return the report (written)."""
    if seeds < 1 or n < 4 or steps < 10 or alphas < 2:
        raise UserError(
            f"need --seeds >= 1, --n >= 4, --steps >= 10 and --alphas >= 2, got {seeds}, {n}, {steps} and {alphas}"
        )
    report = Report(NAME, Path(out_dir))
    grid = np.logspace(-1, 1, alphas)
    if not np.any(np.isclose(grid, 1.0)):
        grid = np.sort(np.append(grid, 1.0))
    at_one = int(np.argmin(np.abs(grid - 1.0)))
    methods = perturbations(rho_sam, rho_asam, eta, rho_sage)
    with one_thread():
        trials = [measure_trial(seed, n, noise, steps, weight_decay, grid, methods) for seed in range(seeds)]

    section = f"Training ({seeds} networks, seeds 0..{seeds - 1})"
    report.add(section, Row("training loss L(w) (cross-entropy), per seed", [t.loss for t in trials]))
    report.add(section, Row("training accuracy, per seed", [t.accuracy for t in trials]))
    report.add(section, Row(
        "training objective: relative change over the last 10% of steps, largest",
        max(t.objective_change for t in trials),
    ))
    report.add(section, Row("training objective: final gradient norm, largest", max(t.grad_norm for t in trials)))
    report.add(section, Row(
        "largest relative |logit change| over alpha", max(t.function_change for t in trials), 0.0, 1e-9,
        "the function is unchanged",
    ))
    spreads = {name: [t.spreads[name] for t in trials] for name in methods}
    medians = {name: float(np.median(values)) for name, values in spreads.items()}
    section = f"Sharpness L(w+e) - L(w) over alpha in [0.1, 10] ({len(grid)} values)"
    for name in methods:
        seed0 = trials[0].curves[name]
        report.add(section, Row(f"{name}: sharpness at alpha = 0.1, 1, 10 (seed 0)", [seed0[0], seed0[at_one], seed0[-1]]))
        report.add(section, Row(f"{name}: spread max/min, per seed", spreads[name], note=f"median {medians[name]:.4g}"))
    section = "The paper's claims (Appendix D, Figure 4), on the median spread over seeds"
    report.add(section, Row("SAM's sharpness depends on alpha (spread > 2)", medians["SAM"] > 2, True))
    report.add(section, Row("ASAM's sharpness depends on alpha (spread > 2)", medians["ASAM"] > 2, True))
    report.add(section, Row("SAGE is approximately invariant (spread < 1.5)", medians["SAGE"] < 1.5, True))
    report.add(section, Row(
        "SAGE's weight-matrix perturbation is invariant (spread < 1.001, every seed)",
        max(spreads["SAGE, weight matrices only"]) < 1.001, True, note="Sec. 3.1: invariant to W -> alpha W",
    ))
    report.add(section, Row(
        "SAGE's spread is below SAM's and ASAM's (every seed)",
        all(s < min(a, b) for s, a, b in zip(spreads["SAGE"], spreads["SAM"], spreads["ASAM"], strict=True)), True,
    ))
    report.add(section, Row(
        "SAM's sharpness grows for large alpha (alpha = 10 above alpha = 1, every seed)",
        all(t.curves["SAM"][-1] > t.curves["SAM"][at_one] for t in trials), True, note="footnote 5",
    ))
    report.notes.append(
        "Where SAGE's spread exceeds 1 it comes from the bias b1: SAGE perturbs vectors by rho g/||g|| "
        "(a fixed size, as SAM), while b1 scales with alpha; its weight matrices alone give spread "
        f"{max(spreads['SAGE, weight matrices only']):.6f} at most. ASAM is invariant when every "
        "parameter, biases included, is normalised (median spread "
        f"{medians['ASAM, biases adaptive too']:.3g}; eta breaks it slightly); its authors' code leaves "
        "biases unnormalised, and that is what diverges. How much the bias terms matter depends on the "
        "trained network (seed, training length, weight decay)."
    )
    report.data = {
        "alphas": grid,
        "seeds": [
            {"seed": t.seed, "sharpness": t.curves, "spread": t.spreads, "training_loss": t.loss,
             "training_accuracy": t.accuracy, "objective_grad_norm": t.grad_norm,
             "max_relative_logit_change": t.function_change}
            for t in trials
        ],
        "median_spread": medians,
        "settings": {"seeds": seeds, "n": n, "noise": noise, "steps": steps, "rho_sam": rho_sam,
                     "rho_asam": rho_asam, "eta": eta, "rho_sage": rho_sage, "weight_decay": weight_decay},
    }
    _draw(report, grid, trials, medians)
    report.write()
    return report


STYLES = {
    "SAM": {"color": "tab:red"},
    "ASAM": {"color": "tab:orange", "linestyle": "--"},
    "ASAM, biases adaptive too": {"color": "tab:orange", "linestyle": ":"},
    "SAGE": {"color": "tab:blue"},
    "SAGE, weight matrices only": {"color": "tab:blue", "linestyle": ":"},
}


def _draw(report: Report, grid: np.ndarray, trials: list[Trial], medians: dict[str, float]) -> None:
    fig, ax = figure(6.8, 4.6)
    for name in trials[0].curves:
        style = STYLES.get(name, {})
        for t in trials:
            values = np.asarray(t.curves[name])
            first = t is trials[0]
            label = f"{name} (median spread {medians[name]:.3g})" if first else None
            ax.plot(grid, values, label=label, alpha=1.0 if first else 0.3, linewidth=1.6 if first else 0.8, **style)
    ax.set_xscale("log")
    if all(v > 0 for t in trials for values in t.curves.values() for v in values):
        ax.set_yscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.6)
    ax.set_xlabel("rescaling alpha (W1, b1 -> alpha W1, alpha b1; W2 -> W2 / alpha)")
    ax.set_ylabel("sharpness L(w + e) - L(w)")
    ax.set_title(f"Same function, different parameters (bold: seed 0; faint: seeds 1..{len(trials) - 1})")
    ax.legend(fontsize=7)
    report.save_figure(fig, "scale_invariance.png")
