"""``sage-bench data check``: is a data set folder complete, readable and the published version?

For each environment: its class folders and images (counted as training counts them) against
the published numbers, then every image decoded. For the multi-task sets (NYUv2, Cityscapes):
for each split, its modality folders and ``<i>.npy`` samples against the published counts, every
modality holding the same indices ``0 .. N-1``, then every file loaded and its shape checked. Problems that stop training (a missing folder,
an empty environment, an image that cannot be decoded) make the data set unusable; differences
from the published counts are reported as warnings, naming the published version a folder
matches where sources disagree (TerraIncognita: 24,788 or 24,330 images).
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sage_bench.data.domainbed import REAL_DATASETS
from sage_bench.data.download import DOWNLOADABLE
from sage_bench.data.images import (
    MultiEnvironmentImageFolder,
    decode_image,
    list_folders,
    scan_images,
)
from sage_bench.data.nyuv2 import NPY_DATASETS, SPLITS, NpyMultiTaskDataset
from sage_bench.errors import UserError


@dataclass
class EnvironmentReport:
    folder: str
    label: str
    classes: int
    images: int
    expected: int | None
    missing_classes: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """What ``check_dataset`` found; ``usable`` is False when training would fail."""

    dataset: str
    root: Path
    environments: list[EnvironmentReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the data set cannot be used
    warnings: list[str] = field(default_factory=list)  # usable, but not the published version
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    skipped_links: list[tuple[str, str]] = field(default_factory=list)  # (path, why), not followed
    decoded: bool = False
    columns: tuple[str, str, str, str] = ("env", "folder", "classes", "images")

    @property
    def usable(self) -> bool:
        return not self.problems

    @property
    def total(self) -> int:
        return sum(e.images for e in self.environments)


def probe_image(path: str) -> tuple[str, str, str]:
    """``(path, status, detail)``: status ``ok``, ``truncated`` (decodes only with DomainBed's
    ``LOAD_TRUNCATED_IMAGES``) or ``unreadable``."""
    try:
        decode_image(path, load_truncated=False)
        return path, "ok", ""
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        try:
            decode_image(path, load_truncated=True)
            return path, "truncated", str(exc)
        except (OSError, ValueError, Image.DecompressionBombError) as exc2:
            return path, "unreadable", f"{type(exc2).__name__}: {exc2}"


def check_dataset(name: str, data_dir: str | os.PathLike, decode: bool = True, workers: int = 1) -> CheckReport:
    """Check data set ``name`` under ``data_dir``; ``decode`` reads every image (``workers``
    processes)."""
    if name in NPY_DATASETS:
        return check_npy_dataset(NPY_DATASETS[name], data_dir, decode)
    if name not in REAL_DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid choices: {', '.join(DOWNLOADABLE)}")
    cls: type[MultiEnvironmentImageFolder] = REAL_DATASETS[name]
    root = Path(data_dir) / cls.FOLDER
    report = CheckReport(name, root)
    if not root.is_dir():
        report.problems.append(f"no folder {root}; get it with `{cls.download_command(data_dir)}`")
        return report
    found = list_folders(root)
    missing = [env for env in cls.ENV_FOLDERS if env not in found]
    if missing:
        report.problems.append(f"missing environment folder(s): {', '.join(str(root / m) for m in missing)}")
    extra = [f for f in found if f not in cls.ENV_FOLDERS]
    if extra:
        report.problems.append(f"unexpected folder(s) in {root}: {', '.join(extra)} (training refuses them)")

    present = [env for env in cls.ENV_FOLDERS if env in found]
    per_env_classes = {env: list_folders(root / env) for env in present}
    all_classes = sorted(set().union(*per_env_classes.values())) if present else []
    class_to_idx = {c: i for i, c in enumerate(all_classes)}
    paths: list[str] = []
    for env in present:
        label = cls.ENVIRONMENTS[cls.ENV_FOLDERS.index(env)]
        scan = scan_images(root / env, class_to_idx, root)
        samples = scan.samples
        report.skipped_links += scan.skipped_links
        paths.extend(p for p, _ in samples)
        lacking = sorted(set(all_classes) - set(per_env_classes[env]))
        report.environments.append(
            EnvironmentReport(env, label, len(per_env_classes[env]), len(samples), cls.EXPECTED_IMAGES.get(env), lacking)
        )
        if not samples:
            report.problems.append(f"environment folder {root / env} holds no images")
        if lacking:
            report.warnings.append(f"{env} lacks class folder(s): {', '.join(lacking)}")
    if report.skipped_links:
        report.warnings.append(
            f"{len(report.skipped_links)} symbolic link(s) not followed (training skips them too): "
            "they leave the data set's folder, loop back into a folder they lie in, lead to a "
            "folder already read, or are broken; replace them with the files they point to to use them"
        )
    if present and len(all_classes) != cls.NUM_CLASSES:
        report.warnings.append(f"{len(all_classes)} classes, expected {cls.NUM_CLASSES}")

    if not missing:
        counts = {e.folder: e.images for e in report.environments}
        expected_total = sum(cls.EXPECTED_IMAGES.values())
        if counts != cls.EXPECTED_IMAGES:
            alternative = next(
                (v for v, c in cls.ALTERNATIVE_IMAGES.items() if c == counts or sum(c.values()) == report.total), None
            )
            if alternative is not None:
                report.warnings.append(
                    f"{report.total} images: this is the {alternative} version of {name}, not the "
                    f"{expected_total} of the DomainBed paper; published sources report both, and "
                    "results on the two are not exactly comparable"
                )
            else:
                differing = ", ".join(
                    f"{env} {counts[env]} (expected {cls.EXPECTED_IMAGES[env]})"
                    for env in cls.ENV_FOLDERS if counts[env] != cls.EXPECTED_IMAGES[env]
                )  # fmt: skip
                known = [expected_total, *(sum(c.values()) for c in cls.ALTERNATIVE_IMAGES.values())]
                report.warnings.append(
                    f"{report.total} images, published: {' or '.join(f'{k:,}' for k in known)}; differs in {differing}"
                )

    if decode and paths:
        report.decoded = True
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = list(pool.map(probe_image, paths, chunksize=256))
        else:
            results = [probe_image(p) for p in paths]
        for path, status, detail in results:
            if status == "unreadable":
                report.unreadable.append((path, detail))
            elif status == "truncated":
                report.truncated.append(path)
        if report.unreadable:
            report.problems.append(
                f"{len(report.unreadable)} unreadable image(s) (training stops at the first; "
                "replace or delete them, or train with dataset.on_unreadable=skip)"
            )
        if report.truncated:
            report.warnings.append(
                f"{len(report.truncated)} truncated image(s): loaded with the missing part grey, "
                "as DomainBed does (dataset.load_truncated=false makes them unreadable)"
            )
    return report


def probe_npy(path: str, shape: tuple[int, ...]) -> tuple[str, str, str]:
    """``(path, status, detail)``: ``ok`` or ``unreadable`` (cannot load, or the wrong shape)."""
    try:
        array = np.load(path)
    except (OSError, ValueError) as exc:
        return path, "unreadable", f"{type(exc).__name__}: {exc}"
    if array.shape != shape:
        return path, "unreadable", f"shape {array.shape}, expected {shape}"
    return path, "ok", ""


def check_npy_dataset(cls: type[NpyMultiTaskDataset], data_dir: str | os.PathLike, decode: bool = True) -> CheckReport:
    """Check a multi-task data set in MTAN's ``.npy`` layout under ``data_dir``."""
    root = Path(data_dir) / cls.FOLDER
    report = CheckReport(cls.name(), root, columns=("split", "folder", "modalities", "samples"))
    if not root.is_dir():
        report.problems.append(f"no folder {root}; get it with `{cls.download_command(data_dir)}`")
        return report
    folders = list(cls.FOLDERS.values())
    paths: list[tuple[str, tuple[int, ...]]] = []
    for split in SPLITS:
        split_dir = root / split
        present = [f for f in folders if (split_dir / f).is_dir()]
        lacking = [f for f in folders if f not in present]
        indices = {f: {p.stem for p in (split_dir / f).glob("*.npy")} for f in present}
        count = len(indices.get("image", ()))
        report.environments.append(
            EnvironmentReport(split, split, len(present), count, cls.EXPECTED_IMAGES[split], lacking)
        )
        if lacking:
            report.problems.append(f"missing folder(s): {', '.join(str(split_dir / f) for f in lacking)}")
            continue
        expected = {str(i) for i in range(count)}
        if count == 0:
            report.problems.append(f"{split_dir / 'image'} holds no .npy files")
        for folder, found in indices.items():
            if found != expected:
                missing = sorted(expected - found, key=lambda v: (len(v), v))
                extra = sorted(found - expected, key=lambda v: (len(v), v))
                detail = []
                if missing:
                    detail.append(f"missing {', '.join(m + '.npy' for m in missing[:5])}{' ...' if len(missing) > 5 else ''}")
                if extra:
                    detail.append(f"unexpected {', '.join(e + '.npy' for e in extra[:5])}{' ...' if len(extra) > 5 else ''}")
                report.problems.append(
                    f"{split_dir / folder} does not hold 0.npy .. {count - 1}.npy like image/: {'; '.join(detail)}"
                )
        shapes = cls.npy_shapes()
        paths.extend((str(split_dir / f / f"{i}.npy"), shapes[f]) for f in folders for i in sorted(indices[f] & expected, key=int))
    counts = {e.folder: e.images for e in report.environments}
    if len(counts) == len(SPLITS) and counts != cls.EXPECTED_IMAGES:
        report.warnings.append(
            f"{sum(counts.values())} samples ({', '.join(f'{k} {v}' for k, v in counts.items())}), "
            f"published: {', '.join(f'{k} {v}' for k, v in cls.EXPECTED_IMAGES.items())}"
        )
    if decode and paths:
        report.decoded = True
        for path, status, detail in (probe_npy(p, shape) for p, shape in paths):
            if status != "ok":
                report.unreadable.append((path, detail))
        if report.unreadable:
            report.problems.append(f"{len(report.unreadable)} unreadable or misshapen file(s); replace them or re-download")
    return report


def format_report(report: CheckReport, max_listed: int = 20) -> str:
    """The report as the text ``sage-bench data check`` prints."""
    lines = [f"{report.dataset}: {report.root}"]
    if report.environments:
        env, folder, classes, images = report.columns
        lines.append(f"  {env:<6}{folder:<16}{classes:>8}{images:>10}{'expected':>10}")
        for e in report.environments:
            expected = f"{e.expected:,}" if e.expected is not None else "?"
            mark = "" if e.expected == e.images else "  <-"
            lines.append(f"  {e.label:<6}{e.folder:<16}{e.classes:>8}{e.images:>10,}{expected:>10}{mark}")
        cls = DOWNLOADABLE[report.dataset]
        lines.append(f"  {'total':<22}{'':>8}{report.total:>10,}{sum(cls.EXPECTED_IMAGES.values()):>10,}")
    for path, detail in report.unreadable[:max_listed]:
        lines.append(f"  unreadable: {path} ({detail})")
    if len(report.unreadable) > max_listed:
        lines.append(f"  ... and {len(report.unreadable) - max_listed} more unreadable images")
    for path in report.truncated[:max_listed]:
        lines.append(f"  truncated: {path}")
    for path, why in report.skipped_links[:max_listed]:
        lines.append(f"  link not followed: {path} ({why})")
    if len(report.skipped_links) > max_listed:
        lines.append(f"  ... and {len(report.skipped_links) - max_listed} more links not followed")
    for text in report.warnings:
        lines.append(f"  warning: {text}")
    for text in report.problems:
        lines.append(f"  PROBLEM: {text}")
    if not report.decoded and report.environments:
        lines.append(f"  ({report.columns[3]} not {'decoded' if report.columns[3] == 'images' else 'loaded'}: --no-decode)")
    lines.append(f"  {'usable' if report.usable else 'NOT USABLE'}")
    return "\n".join(lines)
