"""Finding runs under folders and reading their records (through ``sage_bench.records`` only).

Each run is read once: a folder reached twice (given twice, or inside another given folder) and
a copy of a run (another folder holding the same job, by ``args.job_id`` or, for DomainBed's
records, by ``args`` but ``output_dir``) are left out with a warning, since a run counted twice
would turn leave-one-domain-out cells into ``X`` or move cells. Of the copies, the finished one
with the most records is kept (the first found on a tie).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

from sage_bench.collect import mtl
from sage_bench.collect.selection import varying_settings
from sage_bench.records import DONE_FILE, RESULTS_FILE, BadLine, iter_numbered_records

REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed")


@dataclass
class Run:
    """One output folder: its records and whether it finished."""

    path: Path
    records: list[dict]
    done: bool


@dataclass
class Collection:
    """Every run found under some folders, and what could not be read."""

    runs: list[Run] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    skipped_records: int = 0
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (left out, the run kept)

    @property
    def records(self) -> list[dict]:
        return [r for run in self.runs for r in run.records]

    @property
    def n_done(self) -> int:
        return sum(run.done for run in self.runs)

    @property
    def n_incomplete(self) -> int:
        return sum(not run.done for run in self.runs)

    @property
    def dg_records(self) -> list[dict]:
        """The records of domain-generalization runs (model selection's)."""
        return [r for r in self.records if not mtl.is_multitask(r)]

    @property
    def multitask_records(self) -> list[dict]:
        """The records of multi-task runs (``args.task == "multi_task"``: Table 2's)."""
        return [r for r in self.records if mtl.is_multitask(r)]

    def completed(self) -> Collection:
        """Only the runs that finished."""
        return Collection([run for run in self.runs if run.done], self.bad_lines, self.skipped_records, self.duplicates)

    def summary(self) -> str:
        """One line: runs found, finished and not, records read, lines and records skipped."""
        text = f"{len(self.runs)} runs: {self.n_done} done, {self.n_incomplete} incomplete; {len(self.records)} records"
        if self.bad_lines or self.skipped_records:
            text += f" ({len(self.bad_lines)} unreadable lines and {self.skipped_records} incomplete records skipped)"
        if self.duplicates:
            text += f"; {len(self.duplicates)} copies of runs left out"
        return text


def _is_accuracy(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record: dict) -> str | None:
    """Why a record cannot be used for model selection, or ``None`` when it can.

    A usable record has ``step``, DomainBed's ``args`` keys (``dataset``, ``algorithm``,
    ``test_envs``, ``trial_seed``, ``hparams_seed``), and finite ``env{i}_in_acc`` and
    ``env{i}_out_acc`` for environments ``0 .. n-1`` (``n`` counted as DomainBed counts it: up to
    the first missing ``env{i}_out_acc``), every test environment among them. Records of
    ``eval_splits=selection`` runs have no in-split accuracy of their training environments,
    which no selection method reads. A multi-task record is checked by
    ``sage_bench.collect.mtl.record_problem`` instead.
    """
    if mtl.is_multitask(record):
        return mtl.record_problem(record)
    args = record.get("args")
    if not isinstance(args, dict):
        return "no args"
    missing = [k for k in REQUIRED_ARGS if k not in args]
    if missing:
        return f"args without {', '.join(missing)}"
    for key in ("trial_seed", "hparams_seed"):
        if not isinstance(args[key], int) or isinstance(args[key], bool):
            return f"args.{key} is not an integer: {args[key]!r}"
    if not isinstance(record.get("step"), Real) or isinstance(record.get("step"), bool):
        return "no step number"
    test_envs = args["test_envs"]
    if not isinstance(test_envs, list) or not test_envs or not all(isinstance(e, int) for e in test_envs):
        return f"test_envs is not a list of environment indices: {test_envs!r}"
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    if n == 0:
        return "no env0_out_acc"
    selection_only = args.get("eval_splits") == "selection"  # training in-splits not evaluated
    for i in range(n):
        for split in ("in", "out"):
            if split == "in" and selection_only and i not in test_envs and f"env{i}_in_acc" not in record:
                continue
            if not _is_accuracy(record.get(f"env{i}_{split}_acc")):
                return f"env{i}_{split}_acc is missing or not a finite number"
    if max(test_envs) >= n or min(test_envs) < 0:
        return f"test_envs {test_envs} outside the {n} environments of the record"
    return None


def find_runs(*folders: str | os.PathLike) -> Collection:
    """Every folder holding a ``results.jsonl`` under ``folders`` (searched recursively), as
    written by sage-bench or by DomainBed (whose own collector reads only one level down).

    Unreadable lines are skipped with a warning naming the file and line; a readable record
    that cannot be used (see ``record_problem``) is skipped with a warning naming the file, the
    line and the reason. Raises ``FileNotFoundError`` for a folder that does not exist.
    """
    collection = Collection()
    read: set[Path] = set()  # the real paths of the run folders read
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        again = 0
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            if RESULTS_FILE not in files:
                continue
            if Path(root).resolve() in read:
                again += 1
                continue
            read.add(Path(root).resolve())
            path = Path(root) / RESULTS_FILE
            records = []
            for number, record in iter_numbered_records(path, collection.bad_lines):
                problem = record_problem(record)
                if problem is None:
                    records.append(record)
                    continue
                collection.skipped_records += 1
                warnings.warn(f"{path}:{number}: skipping record ({problem})", stacklevel=2)
            collection.runs.append(Run(Path(root), records, (Path(root) / DONE_FILE).exists()))
        if again:
            warnings.warn(f"{folder}: {again} run folder(s) already read (a folder given twice, or inside another): read once", stacklevel=2)
    _leave_out_copies(collection)
    return collection


def run_identity(run: Run) -> str | None:
    """What makes a run one job: ``args.job_id`` (sage-bench), else ``args`` but ``output_dir``
    (DomainBed names a job's folder from the same); ``None`` for a run without records."""
    if not run.records:
        return None
    args = run.records[0]["args"]
    if "job_id" in args:
        return str(args["job_id"])
    return json.dumps({k: v for k, v in args.items() if k != "output_dir"}, sort_keys=True, default=str)


def _leave_out_copies(collection: Collection) -> None:
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in collection.runs:
        identity = run_identity(run)
        if identity is not None:
            by_job[identity].append(run)
    left_out: set[int] = set()
    for runs in by_job.values():
        if len(runs) < 2:
            continue
        kept = max(runs, key=lambda run: (run.done, len(run.records), -runs.index(run)))
        for run in runs:
            if run is not kept:
                left_out.add(id(run))
                collection.duplicates.append((run.path, kept.path))
    if not left_out:
        return
    collection.runs = [run for run in collection.runs if id(run) not in left_out]
    listed = "; ".join(f"{copy} (kept {kept})" for copy, kept in collection.duplicates[:5])
    more = f"; and {len(collection.duplicates) - 5} more" if len(collection.duplicates) > 5 else ""
    warnings.warn(
        f"{len(collection.duplicates)} run folder(s) hold the same job as another and are left out: {listed}{more}",
        stacklevel=3,
    )


def mixed_settings(records: list[dict]) -> list[str]:
    """A note for each (data set, algorithm) whose runs differ in a setting that DomainBed's
    grouping ignores (``selection.SETTING_ARGS``): each setting becomes a row of its own, named
    after the differing values (``selection.row_names``), instead of being selected among as if
    the runs were one sweep."""
    return [
        f"{dataset} / {algorithm}: runs differ in "
        + "; ".join(f"{key} ({', '.join(values)})" for key, values in varying.items())
        + ": each is a row of its own, named after these values"
        for (dataset, algorithm), varying in varying_settings(records).items()
    ]


def bf16_perturbation_runs(records: list[dict]) -> list[str]:
    """Warnings for runs of algorithms that perturb weights (the SAM family, SAGE) trained on
    CUDA under bf16 autocast, the default before ``precision.*`` existed (their records carry
    ``args.autocast == "bf16"``): the forward pass rounded most of their perturbation away, so
    they did not compute their published update (see ``sage_bench.precision``)."""
    old_cuda_bf16 = [
        r for r in records
        if r["args"].get("autocast") == "bf16" and str(r["args"].get("device", "")).startswith("cuda")
    ]  # fmt: skip
    if not old_cuda_bf16:  # the registry imports torch: only for records that need it
        return []
    from sage_bench.algorithms.registry import algorithms

    registered = algorithms()
    runs: dict[str, set[str]] = defaultdict(set)
    for r in old_cuda_bf16:
        args = r["args"]
        name = args["algorithm"]
        if name in registered and registered[name].cls.perturbs_weights:
            runs[name].add(str(args.get("output_dir") or args.get("job_id")))
    return [
        f"{algorithm}: {len(folders)} run(s) trained on CUDA under bf16 autocast (records with "
        "autocast: bf16), where the forward pass loses most of the weight perturbation; they are not "
        f"{algorithm}'s published update. Train them again into a new output_dir (the default now "
        "computes them in float32), or delete their folders first"
        for algorithm, folders in sorted(runs.items())
    ]


PERTURBATION_ERROR_WARNING = 0.05  # as sage_bench.algorithms.perturbation.ERROR_WARNING (no torch here)


def inexact_perturbation_runs(records: list[dict]) -> list[str]:
    """Warnings for runs whose recorded ``perturbation_error`` (the relative error of the change
    of the gradient that their perturbed-gradient method computed, measured against a reference
    by ``perturbation=auto``) exceeds 5% at some record: their perturbed gradients were not
    resolved to the tolerance asked for (no candidate was, on that batch)."""
    runs: dict[str, set[str]] = defaultdict(set)
    worst: dict[str, float] = defaultdict(float)
    for r in records:
        error = r.get("perturbation_error")
        if isinstance(error, int | float) and error > PERTURBATION_ERROR_WARNING:
            name = r["args"]["algorithm"]
            runs[name].add(str(r["args"].get("output_dir") or r["args"].get("job_id")))
            worst[name] = max(worst[name], float(error))
    return [
        f"{algorithm}: {len(folders)} run(s) recorded a perturbation_error above "
        f"{PERTURBATION_ERROR_WARNING:.0%} (worst {worst[algorithm]:.3g}): their perturbed gradients were not "
        "computed to within that of a reference; run them with perturbation=difference precision.train=fp32"
        for algorithm, folders in sorted(runs.items())
    ]
