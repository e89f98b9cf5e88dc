"""``sage-bench reproduce table1|table2|quick|quick-mtl``: the paper's Table 1 or Table 2, or the
whole pipeline on the embedded digits (quick) or digit scenes (quick-mtl) in CPU minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  sage-bench reproduce quick                       # a few minutes on 2 CPU cores -> results/quick/
  sage-bench reproduce quick --trials 3 --steps 600    # close to converged (docs: Getting started gives its time)
  sage-bench reproduce quick --algorithms all      # every algorithm (GGA's search makes it long)
  sage-bench reproduce table1 --algorithms ERM,IRM,DANN,SAGE --dry-run
  sage-bench reproduce table1 --dry-run            # jobs and estimated GPU-hours per data set
  sage-bench reproduce table1 --data-dir /data --output-dir /shared/sweeps/table1 \\
      --launcher slurm launcher.partition=gpu launcher.gres=gpu:3g.40gb:1 launcher.timeout_min=240
  sage-bench reproduce quick-mtl                   # every multi-task row on DigitScenes -> results/quick_mtl/
  sage-bench reproduce table2 --dry-run            # NYU-v2 and Cityscapes jobs and estimated GPU-hours
  sage-bench reproduce table2 --algorithms LS,SAGE-LS --data-dir /data --launcher slurm launcher.partition=gpu
"""


ALGORITHMS_HELP = (
    "algorithms to run, by name (space- or comma-separated), or 'all' (every registered one); "
    "default: the paper's six (ERM SAM GSAM SAGM DISAM SAGE)"
)


def algorithm_names(values: list[str] | None) -> list[str] | None:
    """``--algorithms`` values split at commas (``ERM,SAM`` and ``ERM SAM`` are the same)."""
    if not values:
        return None
    return [name for value in values for name in value.split(",") if name]


MTL_ALGORITHMS_HELP = (
    "multi-task rows to run, by name (space- or comma-separated); default: every registered one, in Table 2's order"
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's Table 1 or Table 2, or run everything on embedded data (quick, quick-mtl)",
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
    _add_sweep_options(
        table1, "table1", data="the five data sets", trials_help="trials per job (trial_seed 0..N-1; default 3)",
        algorithms_help=ALGORITHMS_HELP, dry_run_help="print the plan and the estimate, launch nothing",
    )  # fmt: skip
    table1.set_defaults(func=run_table1)

    table2 = targets.add_parser(
        "table2",
        help="plan, launch and collect Table 2 (every multi-task row x NYU-v2, Cityscapes x 3 seeds)",
        description="Every registered multi-task row (or --algorithms) on NYU-v2 and Cityscapes with 3 seeds in "
        "the paper's protocol (experiment=paper_mtl), STL once per task; launched through the sweep machinery, "
        "then Table 2 beside the paper's.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_sweep_options(
        table2, "table2", data="nyuv2/ and cityscapes/", trials_help="seeds per row (trial_seed 0..N-1; default 3)",
        algorithms_help=MTL_ALGORITHMS_HELP, dry_run_help="print the estimate and list the jobs, launch nothing",
    )  # fmt: skip
    table2.set_defaults(func=run_table2)

    quick_mtl = targets.add_parser(
        "quick-mtl",
        help="every multi-task row on DigitScenes on the CPU, in Table 2's layout",
        description="Every registered multi-task row (or --algorithms) on the embedded DigitScenes (STL once per "
        "task, and the Constant floor), one job per core at a time, then Table 2's layout with Delta_m against the "
        "STL row and each metric's standard deviation across seeds. Default: 3 seeds, 6 epochs of 512 scenes "
        "(384 steps of 8), each run averaged over its last 2 epochs.",
    )
    quick_mtl.add_argument("--algorithms", nargs="+", metavar="NAME", help=MTL_ALGORITHMS_HELP)
    quick_mtl.add_argument("--results-dir", type=Path, default=Path("results/quick_mtl"))
    quick_mtl.add_argument("--dataset", default="DigitScenes", choices=["DigitScenes", "DigitScenes2"])
    quick_mtl.add_argument("--epochs", type=int, default=6, help="epochs of 512 scenes (64 steps of 8) per job (default 6)")
    quick_mtl.add_argument("--trials", type=int, default=3, help="seeds per row (trial_seed 0..N-1; default 3)")
    quick_mtl.add_argument("--workers", type=int, help="jobs at a time (default: one per available core)")
    quick_mtl.set_defaults(func=run_quick_mtl)

    quick = targets.add_parser(
        "quick",
        help="the paper's six algorithms (or --algorithms) on RotatedDigits, leave-one-domain-out, on the CPU",
        description="The paper's six algorithms (or --algorithms) on an embedded data set, each environment "
        "held out in turn, one job per core at a time. The default (1 trial, 200 steps) is a smoke test of "
        "the pipeline; --trials 3 --steps 600 is close to converged.",
    )
    quick.add_argument("--algorithms", nargs="+", metavar="NAME", help=ALGORITHMS_HELP)
    quick.add_argument("--results-dir", type=Path, default=Path("results/quick"))
    quick.add_argument("--dataset", default="RotatedDigits", choices=["RotatedDigits", "ColoredDigits"])
    quick.add_argument("--steps", type=int, default=200, help="training steps per job (default 200)")
    quick.add_argument("--trials", type=int, default=1, help="trials per job (trial_seed 0..N-1; default 1)")
    quick.add_argument("--workers", type=int, help="jobs at a time (default: one per available core)")
    quick.set_defaults(func=run_quick)


def _add_sweep_options(
    parser: argparse.ArgumentParser, table: str, data: str, trials_help: str, algorithms_help: str, dry_run_help: str
) -> None:
    """The options of a full table (table1, table2): launcher, folders, trials, algorithms."""
    parser.add_argument("--launcher", default="local", choices=["local", "multi_gpu", "slurm"])
    parser.add_argument("--data-dir", type=Path, help=f"where {data} are (default: data_dir of the config)")
    parser.add_argument("--output-dir", type=Path, default=Path(f"sweeps/{table}"), help="the sweep's folder")
    parser.add_argument("--results-dir", type=Path, default=Path(f"results/{table}"), help="where the table goes")
    parser.add_argument("--trials", type=int, default=3, help=trials_help)
    parser.add_argument("--dry-run", action="store_true", help=dry_run_help)
    parser.add_argument("--algorithms", nargs="+", metavar="NAME", help=algorithms_help)
    parser.add_argument("launcher_overrides", nargs="*", help="launcher.<key>=<value> (see configs/launcher/)")


def _names_and_launcher_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``--algorithms`` names and the launcher overrides (words after ``--algorithms`` that are
    key=value are the launcher overrides that followed it)."""
    from sage_bench.errors import UserError

    names = [n for n in args.algorithms or [] if "=" not in n]
    overrides = [*args.launcher_overrides, *(n for n in args.algorithms or [] if "=" in n)]
    bad = [o for o in overrides if not o.startswith("launcher.")]
    if bad:
        raise UserError(f"only launcher.<key>=<value> overrides are taken here, got {' '.join(bad)}")
    return names, overrides


def run_table1(args: argparse.Namespace) -> int:
    from sage_bench.reproduce import reproduce_table1, resolve_algorithms

    names, overrides = _names_and_launcher_overrides(args)
    return reproduce_table1(
        args.output_dir,
        args.data_dir,
        [f"launcher={args.launcher}", *overrides],
        dry_run=args.dry_run,
        trials=args.trials,
        results_dir=args.results_dir,
        algorithms=resolve_algorithms(algorithm_names(names)),
    )


def run_quick(args: argparse.Namespace) -> int:
    from sage_bench.errors import UserError
    from sage_bench.reproduce import QUICK_OVERRIDES, reproduce_quick, resolve_algorithms

    for name in ("steps", "trials", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    overrides = [o for o in QUICK_OVERRIDES if not o.startswith("steps=")] + [f"steps={args.steps}"]
    algorithms = resolve_algorithms(algorithm_names(args.algorithms))
    reproduce_quick(args.results_dir, args.dataset, overrides, algorithms, trials=args.trials, workers=args.workers)
    return 0


def run_table2(args: argparse.Namespace) -> int:
    from sage_bench.errors import UserError
    from sage_bench.reproduce import reproduce_table2

    if args.trials < 1:
        raise UserError(f"--trials must be at least 1, got {args.trials}")
    names, overrides = _names_and_launcher_overrides(args)
    return reproduce_table2(
        args.output_dir,
        args.data_dir,
        [f"launcher={args.launcher}", *overrides],
        dry_run=args.dry_run,
        trials=args.trials,
        results_dir=args.results_dir,
        algorithms=algorithm_names(names),
    )


def run_quick_mtl(args: argparse.Namespace) -> int:
    from sage_bench.errors import UserError
    from sage_bench.reproduce import reproduce_quick_mtl

    for name in ("epochs", "trials", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    reproduce_quick_mtl(
        args.results_dir, args.dataset, args.epochs, algorithm_names(args.algorithms), args.trials, args.workers
    )
    return 0
