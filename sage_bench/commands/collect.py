"""``sage-bench collect``: result tables (and figures) from output folders."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="tables from output folders (sage-bench's or DomainBed's), as DomainBed selects models",
        description=(
            "Read every results.jsonl under the folders (recursively), select models as DomainBed does "
            "and print its tables: one per data set and the averages across data sets (Table 1's layout). "
            "Multi-task runs (NYUv2, Cityscapes, DigitScenes) get Table 2's layout instead: every metric and "
            "Delta_m, each run averaged over its last 10 epochs (--last-epochs), then over seeds (mean and standard "
            "deviation); multi-task runs that have not reached their planned epochs are left out unless "
            "--include-unfinished. "
            "Warnings and the count of finished and unfinished runs go to standard error."
        ),
    )
    parser.add_argument("folders", nargs="+", help="sweep or job folders")
    parser.add_argument(
        "--selection",
        default="training-domain",
        choices=["training-domain", "leave-one-out", "oracle", "all"],
        help="model selection method (default: training-domain validation); multi-task runs select none",
    )
    parser.add_argument(
        "--format",
        default="text",
        choices=["text", "markdown", "latex", "csv", "json"],
        help="text/markdown/latex tables, or tidy rows selection,dataset,algorithm,env,mean,sem,trials (csv, json)",
    )
    parser.add_argument("--completed-only", action="store_true", help="leave out runs without a done marker")
    parser.add_argument(
        "--include-unfinished",
        action="store_true",
        help="multi-task runs: also tabulate runs that have not reached their planned epochs (left out by default, "
        "with a warning naming each; their epoch window is their own group's shortest run)",
    )
    parser.add_argument(
        "--last-epochs",
        type=_positive_int,
        default=10,
        metavar="N",
        help="multi-task runs: average each run over its last N epochs (default 10, as Table 2's sources; the "
        "window ends at the shortest run of its data set and planned epochs)",
    )
    parser.add_argument(
        "--compare-paper",
        action="store_true",
        help="add the SAGE paper's Table 1 (Table 2 for multi-task runs) and the differences",
    )
    parser.add_argument(
        "--plots",
        metavar="DIR",
        help="also write PNG figures into DIR (under the chosen selection; training-domain with --selection all)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write the tables to FILE instead of standard output; csv/json of folders holding both kinds of "
        "run: one file per kind, FILE's name with .domain_generalization or .multi_task before its suffix",
    )
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of epochs, at least 1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from sage_bench.collect import find_runs
    from sage_bench.collect.kinds import COLLECTORS, CollectOptions
    from sage_bench.collect.loading import inexact_perturbation_runs
    from sage_bench.errors import UserError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            collection = find_runs(*args.folders)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from exc
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(collection.summary(), file=sys.stderr)
    found_any = bool(collection.runs)
    if args.completed_only:
        collection = collection.completed()
        print(f"--completed-only: tabulating the {len(collection.runs)} finished runs", file=sys.stderr)
    records = collection.records
    if not records:
        where = ", ".join(args.folders)
        if not found_any:
            raise UserError(f"no results.jsonl under {where}; point collect at sweep or job folders")
        if args.completed_only:
            raise UserError(f"no finished run with records under {where}; drop --completed-only to include unfinished runs")
        raise UserError(f"no usable records under {where}: the results files are empty or unreadable (see the warnings)")
    # each kind of run present, in the table's order, with its records
    present = [(c, part) for c in COLLECTORS.values() if (part := collection.records_of(c.kind.task))]
    per_kind = len(present) > 1 and args.format in ("csv", "json")
    if per_kind and not args.output:
        kinds = " and ".join(c.kind.adjective for c, _ in present)
        files = " and ".join(f"FILE.{c.kind.task}.{args.format}" for c, _ in present)
        raise UserError(
            f"the folders hold {kinds} runs, whose {args.format} rows have different "
            f"columns: give --output FILE.{args.format}, which writes one file per kind ({files})"
        )
    inexact = inexact_perturbation_runs(records)
    for message in [*(m for c, part in present for m in c.warnings(part)), *inexact]:
        print(f"warning: {message}", file=sys.stderr)
    options = CollectOptions(args.selection, args.format, args.compare_paper, args.include_unfinished, args.last_epochs)
    parts = []
    for c, part in present:
        text, messages = c.render(part, options)
        parts.append(text)
        for message in messages:
            print(f"warning: {message}", file=sys.stderr)
    if per_kind:  # csv, json: one file per kind, each with the columns of that kind alone
        output = Path(args.output)
        for (c, _), text in zip(present, parts, strict=True):
            path = output.with_name(f"{output.stem}.{c.kind.task}{output.suffix}")
            _write(path, text)
            print(f"wrote {path}", file=sys.stderr)
    elif args.output:
        _write(Path(args.output), "\n".join(parts))
    else:
        sys.stdout.write("\n".join(parts))
    if args.plots:
        for c, part in present:
            if c.figures is None:
                print(f"--plots: no figures for {c.kind.label} runs (their tables only)", file=sys.stderr)
                continue
            for path in c.figures(part, args.plots, args.selection):
                print(f"wrote {path}", file=sys.stderr)
    return 0


def _write(path: Path, text: str) -> None:
    from sage_bench.errors import UserError

    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UserError(f"cannot write --output {path}: {exc.strerror}") from exc
