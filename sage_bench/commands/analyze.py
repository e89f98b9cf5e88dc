"""``sage-bench analyze``: the paper's analyses, computed and drawn (``sage_bench.analysis``)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_ROOT = Path("results") / "analysis"

EPILOG = """\
each analysis prints its numbers beside the paper's, flags disagreements, and writes PNG
figures and summary.json to --out (default: results/analysis/<analysis>)
examples:
  sage-bench analyze appendix-c
  sage-bench analyze counterexample --M 100
  sage-bench analyze scale-invariance --out figures/
  sage-bench analyze trajectories --seeds 32
  sage-bench analyze alignment runs/        # jobs trained with test_grad_cosine_freq=N
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="the paper's analyses: appendix C, Counterexample 1, Figures 2, 4 and 5",
        description="Compute one of the paper's analyses, print it beside the paper's values, draw it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    analyses = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sub = analyses.add_parser(name, help=help, description=help)
        sub.add_argument("--out", type=Path, default=DEFAULT_ROOT / name, help=f"output folder (default {DEFAULT_ROOT / name})")
        sub.set_defaults(func=run)
        return sub

    sub = add("appendix-c", "Appendix C: the two-domain linear-Gaussian example, closed form and from sampled data")
    sub.add_argument("--n", type=int, default=2000, help="examples per domain in each sampled data set (default 2000)")
    sub.add_argument("--batches", type=int, default=100, help="independent sampled data sets (default 100)")
    sub.add_argument("--level", type=float, default=0.99, help="joint confidence level of the intervals (default 0.99)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--mu-inv", type=float, default=1.0, help="invariant feature mean (paper: 1)")
    sub.add_argument("--var-inv", type=float, default=9.0, help="invariant feature variance (paper: 9)")
    sub.add_argument("--mu-spur", type=float, default=2.0, help="spurious feature mean, +- per domain (paper: 2)")
    sub.add_argument("--var-spur", type=float, default=0.01, help="spurious feature variance (paper: 0.01)")

    sub = add("counterexample", "Counterexample 1: both constructions for a given M, and Theorem 1 on them")
    sub.add_argument("--M", type=float, default=10.0, dest="m", help="the counterexample's M (default 10)")
    sub.add_argument("--K", type=int, default=4, dest="k", help="training distributions for the Theorem 1 check (default 4)")
    sub.add_argument("--sigma", type=float, default=0.1, help="isotropic noise of the Theorem 1 check (default 0.1)")
    sub.add_argument("--draws", type=int, default=200_000, help="Monte Carlo repetitions (default 200000)")
    sub.add_argument("--seed", type=int, default=0)

    sub = add("scale-invariance", "Appendix D / Figure 4: SAM, ASAM and SAGE sharpness under W1 -> a W1, W2 -> W2 / a")
    sub.add_argument("--seeds", type=int, default=5, help="networks trained, seeds 0..N-1 (default 5)")
    sub.add_argument("--n", type=int, default=512, help="training points (default 512)")
    sub.add_argument("--noise", type=float, default=0.1, help="jitter of the circles (default 0.1)")
    sub.add_argument("--steps", type=int, default=2000, help="full-batch Adam steps (default 2000)")
    sub.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay in training (default 0)")
    sub.add_argument("--alphas", type=int, default=25, help="rescaling factors, log-spaced in [0.1, 10] (default 25)")
    sub.add_argument("--rho-sam", type=float, default=0.05, help="SAM's radius (default 0.05)")
    sub.add_argument("--rho-asam", type=float, default=0.5, help="ASAM's radius (default 0.5, its authors' default)")
    sub.add_argument("--eta", type=float, default=0.01, help="ASAM's eta (default 0.01)")
    sub.add_argument("--rho-sage", type=float, default=0.05, help="SAGE's radius, relative to ||W||_F (default 0.05)")

    sub = add("trajectories", "Figure 2: ERM, SAM, SGLD and SAGE's agreement-scaled noise on a two-minima toy")
    sub.add_argument("--seeds", type=int, default=16, help="runs of each noisy method (default 16)")
    sub.add_argument("--steps", type=int, default=1500, help="steps per run (default 1500)")
    sub.add_argument("--lr", type=float, default=0.05, help="step size (default 0.05)")
    sub.add_argument("--gamma", type=float, default=1.4, help="SAGE's noise scale (default 1.4)")
    sub.add_argument("--rho", type=float, default=0.05, help="SAM's radius (default 0.05)")

    sub = add("alignment", "Figure 5: held-out gradient cosine over training, from output folders")
    sub.add_argument("folders", nargs="+", metavar="FOLDER", help="job folders, or folders that hold them")
    sub.add_argument("--smoothing", type=float, default=0.9, help="moving-average weight in [0, 1) (default 0.9)")


def run(args: argparse.Namespace) -> int:
    report = _compute(args)
    print(report.render())
    return 0


def _compute(args: argparse.Namespace):
    if args.analysis == "appendix-c":
        from sage_bench.analysis import appendix_c

        setting = appendix_c.LinearGaussian(args.mu_inv, args.var_inv, args.mu_spur, args.var_spur)
        return appendix_c.run(args.out, setting, n=args.n, batches=args.batches, seed=args.seed, level=args.level)
    if args.analysis == "counterexample":
        from sage_bench.analysis import counterexample

        return counterexample.run(args.out, m=args.m, k=args.k, sigma=args.sigma, draws=args.draws, seed=args.seed)
    if args.analysis == "scale-invariance":
        from sage_bench.analysis import scale_invariance

        return scale_invariance.run(
            args.out, seeds=args.seeds, n=args.n, noise=args.noise, steps=args.steps, alphas=args.alphas,
            rho_sam=args.rho_sam, rho_asam=args.rho_asam, eta=args.eta, rho_sage=args.rho_sage,
            weight_decay=args.weight_decay,
        )
    if args.analysis == "trajectories":
        from sage_bench.analysis import trajectories

        dynamics = trajectories.Dynamics(lr=args.lr, steps=args.steps, rho=args.rho, gamma=args.gamma)
        return trajectories.run(args.out, seeds=args.seeds, dynamics=dynamics)
    if args.analysis == "alignment":
        from sage_bench.analysis import alignment

        return alignment.run(args.out, args.folders, smoothing=args.smoothing)
    raise AssertionError(args.analysis)
