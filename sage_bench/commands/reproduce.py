"""``sage-bench reproduce table1|quick``: the paper's Table 1, or the whole pipeline on the
embedded digits in a few CPU minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  sage-bench reproduce quick                       # a few minutes on 2 CPU cores -> results/quick/
  sage-bench reproduce quick --trials 3 --steps 600    # close to converged (see the README for its time)
  sage-bench reproduce table1 --dry-run            # jobs and estimated GPU-hours per data set
  sage-bench reproduce table1 --data-dir /data --output-dir /shared/sweeps/table1 \\
      --launcher slurm launcher.partition=gpu launcher.gres=gpu:3g.40gb:1 launcher.timeout_min=240
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's Table 1, or run everything on the embedded digits (quick)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True)

    table1 = targets.add_parser(
        "table1",
        help="plan, launch and collect Table 1 (ERM, SAM, GSAM, SAGM, DISAM, SAGE x 5 data sets x 3 trials)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    table1.add_argument("--launcher", default="local", choices=["local", "multi_gpu", "slurm"])
    table1.add_argument("--data-dir", type=Path, help="where the five data sets are (default: data_dir of the config)")
    table1.add_argument("--output-dir", type=Path, default=Path("sweeps/table1"), help="the sweep's folder")
    table1.add_argument("--results-dir", type=Path, default=Path("results/table1"), help="where the table goes")
    table1.add_argument("--trials", type=int, default=3)
    table1.add_argument("--dry-run", action="store_true", help="print the plan and the estimate, launch nothing")
    table1.add_argument("launcher_overrides", nargs="*", help="launcher.<key>=<value> (see configs/launcher/)")
    table1.set_defaults(func=run_table1)

    quick = targets.add_parser(
        "quick",
        help="all six algorithms on RotatedDigits, leave-one-domain-out, on the CPU",
        description="All six algorithms on an embedded data set, each environment held out in turn, "
        "one job per core at a time. The default (1 trial, 200 steps) is a smoke test of the pipeline; "
        "--trials 3 --steps 600 is close to converged.",
    )
    quick.add_argument("--results-dir", type=Path, default=Path("results/quick"))
    quick.add_argument("--dataset", default="RotatedDigits", choices=["RotatedDigits", "ColoredDigits"])
    quick.add_argument("--steps", type=int, default=200, help="training steps per job (default 200)")
    quick.add_argument("--trials", type=int, default=1, help="trials per job (trial_seed 0..N-1; default 1)")
    quick.add_argument("--workers", type=int, help="jobs at a time (default: one per available core)")
    quick.set_defaults(func=run_quick)


def run_table1(args: argparse.Namespace) -> int:
    from sage_bench.errors import UserError
    from sage_bench.reproduce import reproduce_table1

    bad = [o for o in args.launcher_overrides if not o.startswith("launcher.")]
    if bad:
        raise UserError(f"only launcher.<key>=<value> overrides are taken here, got {' '.join(bad)}")
    return reproduce_table1(
        args.output_dir,
        args.data_dir,
        [f"launcher={args.launcher}", *args.launcher_overrides],
        dry_run=args.dry_run,
        trials=args.trials,
        results_dir=args.results_dir,
    )


def run_quick(args: argparse.Namespace) -> int:
    from sage_bench.errors import UserError
    from sage_bench.reproduce import QUICK_OVERRIDES, reproduce_quick

    for name in ("steps", "trials", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    overrides = [o for o in QUICK_OVERRIDES if not o.startswith("steps=")] + [f"steps={args.steps}"]
    reproduce_quick(args.results_dir, args.dataset, overrides, trials=args.trials, workers=args.workers)
    return 0
