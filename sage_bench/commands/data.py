"""``sage-bench data check``: report whether data set folders are complete and readable.
``sage-bench data cache``: decode every image once for evaluation (``sage_bench.data.eval_cache``)."""

from __future__ import annotations

import argparse
import os
import time

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

    cache = commands.add_parser(
        "cache",
        help="decode every image once at a backbone's input size, for fast evaluation",
        description=(
            "Decode every image of the data sets through the evaluation resize at the backbone's input size "
            "and store the pixels (uint8, one memory-mapped array per environment) in "
            "$SAGE_BENCH_CACHE_DIR or DATA_DIR/.sage-bench-cache. Jobs then evaluate from it (dataset.eval_cache=auto). "
            "States the disk it needs first and stops when there is not enough. Run again: an up-to-date "
            "cache is kept, a stale or damaged one rebuilt."
        ),
    )
    cache.add_argument("names", nargs="+", metavar="NAME", help="PACS VLCS OfficeHome TerraIncognita DomainNet, or all")
    cache.add_argument(
        "--data-dir", default=default_data_dir(), help="where the data sets are (default: $SAGE_BENCH_DATA or ./data)"
    )
    cache.add_argument("--backbone", help="whose input size to cache, as jobs with backbone=NAME compose it from its "
                       "configuration (default: the data set's default backbone)")  # fmt: skip
    cache.add_argument("--image-size", type=int, help="input size in pixels (overrides --backbone)")
    cache.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                       help="processes decoding images (default: every core this process may use)")  # fmt: skip
    cache.add_argument("--force", action="store_true", help="rebuild even when the cache is up to date")
    cache.add_argument("--verify", action="store_true",
                       help="check the digest of every byte and every image's checksum of an existing cache")  # fmt: skip
    cache.set_defaults(func=run_cache)


def _real_datasets(names: list[str]) -> list[str]:
    from sage_bench.data.domainbed import REAL_DATASETS
    from sage_bench.errors import UserError

    names = list(REAL_DATASETS) if "all" in names else names
    unknown = [n for n in names if n not in REAL_DATASETS]
    if unknown:
        raise UserError(
            f"unknown dataset(s) {', '.join(map(repr, unknown))}; valid choices: {', '.join(REAL_DATASETS)}, all"
        )
    return names


def run_check(args: argparse.Namespace) -> int:
    from sage_bench.data.check import check_dataset, format_report
    from sage_bench.data.download import expand_names

    usable = True
    for name in expand_names(args.names):
        report = check_dataset(name, args.data_dir, decode=not args.no_decode, workers=max(1, args.workers))
        print(format_report(report))
        usable &= report.usable
    return 0 if usable else 1


def _job_image_size(dataset: str, backbone: str | None, data_dir: str) -> tuple[int, dict]:
    """The input size and data set options of a ``train dataset=DATASET backbone=BACKBONE`` job,
    composed as the job composes them (the backbone's YAML, the data set's default backbone), so
    the cache built is the one such jobs look up."""
    from sage_bench.config import load_job
    from sage_bench.errors import UserError
    from sage_bench.models import backbone_preprocess

    overrides = [f"dataset={dataset}", f"data_dir={data_dir}", *([f"backbone={backbone}"] if backbone else [])]
    spec = load_job(overrides)
    preprocess = backbone_preprocess(spec.backbone, spec.backbone_options)
    if preprocess is None:
        raise UserError(f"backbone {spec.backbone!r} takes no images; choose an image backbone or --image-size")
    options = dict(spec.dataset_options)  # as the job builds its data set (load_truncated is in the key)
    return preprocess.image_size, options


def run_cache(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sage_bench.data import get_dataset_class
    from sage_bench.data.eval_cache import (
        build_cache,
        cache_path,
        free_bytes,
        open_cache,
        required_bytes,
    )
    from sage_bench.data.transforms import Preprocess
    from sage_bench.errors import UserError
    from sage_bench.units import format_bytes

    for name in _real_datasets(args.names):
        cls = get_dataset_class(name)
        size, options = args.image_size, {}
        if size is None:
            size, options = _job_image_size(name, args.backbone, args.data_dir)
        if size < 1:
            raise UserError(f"bad value for --image-size: must be >= 1, got {size}")
        dataset = cls(args.data_dir, test_envs=(), hparams={"data_augmentation": False}, preprocess=Preprocess(size),
                      **options)  # fmt: skip
        images = sum(len(env) for env in dataset.datasets)
        cache, why_not = open_cache(dataset, size, full_check=args.verify)
        if cache is not None and not args.force:
            checked = "every byte and every image's checksum checked" if args.verify else "sizes and sampled digests checked; every image is checked as a job reads it"
            print(f"{name}: the cache at {cache.path} is up to date ({images:,} images at {size} px; {checked})")
            continue
        if cache is None and not why_not.startswith("none at"):
            print(f"{name}: rebuilding: {why_not}")
        path = cache_path(args.data_dir, name, size)
        need, free = required_bytes(dataset, size), free_bytes(path.parent)
        print(f"{name}: {images:,} images at {size}x{size} px need {format_bytes(need)} in {path} "
              f"({format_bytes(free)} free there); decoding with {max(1, args.workers)} processes")  # fmt: skip

        def waiting(who: str, name: str = name) -> None:
            print(f"{name}: {who} is building this cache; waiting for it to finish", flush=True)

        start = time.time()
        with tqdm(total=images, unit="img", desc=name, dynamic_ncols=True, leave=False) as bar:
            cache = build_cache(dataset, size, max(1, args.workers), progress=bar.update, waiting=waiting,
                                force=args.force)  # fmt: skip
        unreadable = sum(len(cache.unreadable(i)) for i in range(len(dataset.datasets)))
        seconds = time.time() - start
        print(f"{name}: done in {seconds:.0f} s ({images / max(seconds, 1e-9):.0f} images/s), {cache.path}"
              + (f"; {unreadable} unreadable images (jobs treat them as dataset.on_unreadable says)" if unreadable else ""))  # fmt: skip
    return 0
