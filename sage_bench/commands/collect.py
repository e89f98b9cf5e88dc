"""``sage-bench collect``: result tables (and figures) from output folders."""

from __future__ import annotations

import argparse
import sys
import warnings


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="tables from output folders (sage-bench's or DomainBed's), as DomainBed selects models",
        description=(
            "Read every results.jsonl under the folders (recursively), select models as DomainBed does "
            "and print its tables: one per data set and the averages across data sets (Table 1's layout). "
            "Multi-task runs (NYUv2, Cityscapes, DigitScenes) get Table 2's layout instead: every metric and "
            "Delta_m, each run averaged over its last 10 epochs, then over seeds (mean and standard deviation); "
            "multi-task runs that have not reached their planned epochs are left out unless --include-unfinished. "
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
        "--compare-paper",
        action="store_true",
        help="add the SAGE paper's Table 1 (Table 2 for multi-task runs) and the differences",
    )
    parser.add_argument(
        "--plots",
        metavar="DIR",
        help="also write PNG figures into DIR (under the chosen selection; training-domain with --selection all)",
    )
    parser.add_argument("--output", metavar="FILE", help="write the tables to FILE instead of standard output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sage_bench.collect import find_runs, render
    from sage_bench.collect.loading import bf16_perturbation_runs, mixed_settings
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
    dg_records, multitask_records = collection.dg_records, collection.multitask_records
    if dg_records and multitask_records and args.format in ("csv", "json"):
        raise UserError(
            f"the folders hold domain-generalization and multi-task runs, whose {args.format} rows differ; "
            "collect each kind's folders separately"
        )
    for message in [*mixed_settings(dg_records), *bf16_perturbation_runs(dg_records)]:
        print(f"warning: {message}", file=sys.stderr)
    parts = []
    if dg_records:
        parts.append(render(dg_records, args.selection, args.format, args.compare_paper))
    if multitask_records:
        from sage_bench.collect import mtl

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parts.append(
                mtl.render(multitask_records, args.format, args.compare_paper, include_unfinished=args.include_unfinished)
            )
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    text = "\n".join(parts)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise UserError(f"cannot write --output {args.output}: {exc.strerror}") from exc
    else:
        sys.stdout.write(text)
    if args.plots and dg_records:
        from sage_bench.collect.plots import write_figures

        for path in write_figures(dg_records, args.plots, args.selection if args.selection != "all" else "training-domain"):
            print(f"wrote {path}", file=sys.stderr)
    if args.plots and multitask_records:
        print("--plots: no figures for multi-task runs (their tables only)", file=sys.stderr)
    return 0
