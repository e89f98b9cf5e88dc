"""The ``sage-bench`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EPILOG_TRAIN = """\
overrides are Hydra's key=value, for example:
  sage-bench train dataset=RotatedDigits algorithm=ERM test_envs=[0] trial_seed=0 \\
      hparams_seed=0 output_dir=runs steps=500 hparams.lr=3e-4
"""


def _cmd_train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from sage_bench.config import compose_job_config, job_from_config

    cfg = compose_job_config(args.overrides)
    if args.show_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    spec = job_from_config(cfg)
    if args.dry_run:
        print(f"job folder: {spec.job_dir}")
        for key, value in sorted(spec.hparams.items()):
            print(f"  hparams.{key}: {value}")
        return 0

    from sage_bench.run import run_job

    job_dir = run_job(spec)
    print(job_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sage_bench import __version__

    parser = argparse.ArgumentParser(
        prog="sage-bench",
        description="Domain-generalization experiments: train one job, sweep, collect tables.",
    )
    parser.add_argument("--version", action="version", version=f"sage-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train",
        help="train one job into its output folder",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    train.add_argument("--show-config", action="store_true", help="print the composed configuration and exit")
    train.add_argument("--dry-run", action="store_true", help="validate, print the job folder and hyperparameters, exit")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sage-bench`` console script."""
    from sage_bench.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"sage-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sage-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
