"""``sage-bench data check``: report whether data set folders are complete and readable."""

from __future__ import annotations

import argparse

from sage_bench.commands.download import default_data_dir


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="inspect data sets on disk")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="per-domain (per-split) counts against the published ones; unreadable files",
        description=(
            "Count every environment's classes and images, compare them with the published "
            "counts, decode every image, and list what is missing or unreadable. Exits 1 when a "
            "data set cannot be used for training."
        ),
    )
    check.add_argument("names", nargs="+", metavar="NAME", help="PACS VLCS OfficeHome TerraIncognita DomainNet NYUv2 Cityscapes, or domainbed, mtl, all")
    check.add_argument(
        "--data-dir", default=default_data_dir(), help="where the data sets are (default: $SAGE_BENCH_DATA or ./data)"
    )
    check.add_argument("--no-decode", action="store_true", help="count files only; do not decode the images")
    check.add_argument("--workers", type=int, default=1, help="processes decoding images (default 1)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from sage_bench.data.check import check_dataset, format_report
    from sage_bench.data.download import expand_names

    names = expand_names(args.names)
    usable = True
    for name in names:
        report = check_dataset(name, args.data_dir, decode=not args.no_decode, workers=max(1, args.workers))
        print(format_report(report))
        usable &= report.usable
    return 0 if usable else 1
