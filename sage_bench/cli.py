"""The ``sage-bench`` command: subcommands live in ``sage_bench.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand modules, in the order ``--help`` lists them
COMMANDS = [
    "sage_bench.commands.train",
    "sage_bench.commands.download",
    "sage_bench.commands.data",
    "sage_bench.commands.collect",
    "sage_bench.commands.sweep",
    "sage_bench.commands.analyze",
    "sage_bench.commands.reproduce",
]


def build_parser() -> argparse.ArgumentParser:
    from sage_bench import __version__

    parser = argparse.ArgumentParser(
        prog="sage-bench",
        description="Domain-generalization experiments: train one job, sweep, collect tables.",
    )
    parser.add_argument("--version", action="version", version=f"sage-bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sage-bench`` console script; returns the exit code."""
    from sage_bench.errors import UserError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Subcommands that set ``overrides_anywhere`` take key=value words between their options.
        if not getattr(args, "overrides_anywhere", False) or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"sage-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sage-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
