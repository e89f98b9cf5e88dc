"""``sage-bench train``: one job into its output folder."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
overrides are Hydra's key=value, for example:
  sage-bench train dataset=RotatedDigits algorithm=ERM test_envs=[0] trial_seed=0 \\
      hparams_seed=0 output_dir=runs steps=500 hparams.lr=3e-4
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one job into its output folder",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    parser.add_argument("--show-config", action="store_true", help="print the composed configuration and exit")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate, print the job folder and hyperparameters, exit"
    )
    parser.add_argument(
        "--start-over",
        action="store_true",
        help="an unfinished job starts again from step 0 instead of resuming (its checkpoint is kept aside)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from sage_bench.config import compose_job_config, job_from_config

    cfg = compose_job_config(args.overrides)
    if args.show_config:
        print(OmegaConf.to_yaml(cfg), end="")
        from sage_bench.errors import UserError

        try:  # what the job resolves hparams to: the algorithm's and the data set's defaults
            resolved = job_from_config(cfg).hparams
        except UserError as exc:
            print(f"# hparams not resolved: {exc}")
        else:
            print("# hparams as the job resolves them (defaults of its algorithm and data set, then overrides):")
            for key, value in sorted(resolved.items()):
                print(f"#   {key}: {value}")
        return 0
    spec = job_from_config(cfg)
    if args.dry_run:
        print(f"job folder: {spec.job_dir}")
        for key, value in sorted(spec.hparams.items()):
            print(f"  hparams.{key}: {value}")
        return 0

    from sage_bench.run import run_job
    from sage_bench.run.checkpoint import JobInterrupted
    from sage_bench.run.train import TrainingDiverged

    try:
        print(run_job(spec, start_over=args.start_over))
    except JobInterrupted as exc:
        print(f"sage-bench: {spec.job_dir}: {exc}; the same command resumes it", file=sys.stderr)
        return 128 + exc.signum  # as a shell reports a process ended by that signal
    except TrainingDiverged as exc:
        print(f"sage-bench: {spec.job_dir}: {exc}", file=sys.stderr)
        return 1
    return 0
