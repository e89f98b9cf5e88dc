"""``sage-bench download``: fetch, verify, extract and arrange the real data sets."""

from __future__ import annotations

import argparse
import os

EPILOG = """\
data sets: PACS VLCS OfficeHome TerraIncognita DomainNet (or domainbed for these five),
  NYUv2 Cityscapes (or mtl for these two), or all
examples:
  sage-bench download PACS VLCS --data-dir /datasets/domainbed
  sage-bench download all --data-dir /datasets --archives /scratch/archives   # no internet needed
  sage-bench download DomainNet --data-dir /datasets --mirror https://files.example.org/domainbed
archive file names (for --archives and --mirror): PACS.zip, VLCS.tar.gz, office_home.zip,
  eccv_18_all_images_sm.tar.gz, eccv_18_annotations.tar.gz, clipart.zip, infograph.zip,
  painting.zip, quickdraw.zip, real.zip, sketch.zip, domain_net_duplicates.txt, nyuv2.zip,
  cityscapes.zip (the MTAN Dropbox folders as zips; a zip of the split folders works too)
"""


def default_data_dir() -> str:
    return os.environ.get("SAGE_BENCH_DATA", "data")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "download",
        help="download and install real data sets (DomainBed's, NYUv2, Cityscapes)",
        description=(
            "Download (resumably), verify, extract and arrange data sets from DomainBed's and MTAN's sources. "
            "A data set already installed is left alone."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="data set names, or domainbed, mtl, all")
    parser.add_argument(
        "--data-dir", default=default_data_dir(), help="where the data sets go (default: $SAGE_BENCH_DATA or ./data)"
    )
    parser.add_argument("--archives", metavar="DIR", help="a folder that already holds the archives (used first)")
    parser.add_argument("--mirror", metavar="URL", help="fetch URL/<archive file name> instead of the original sources")
    parser.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after installing")
    parser.add_argument("--force", action="store_true", help="reinstall, replacing an existing folder")
    parser.add_argument(
        "--no-count-check", action="store_true", help="install even if the image counts match no published version"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sage_bench.data.download import expand_names, install

    expand_names(args.names)  # unknown names fail here, before anything is downloaded
    for path in install(
        args.names,
        args.data_dir,
        archives=args.archives,
        mirror=args.mirror,
        keep_archives=args.keep_archives,
        force=args.force,
        check_counts=not args.no_count_check,
        progress=not args.no_progress,
    ):
        print(path)
    return 0
