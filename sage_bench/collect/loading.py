"""Finding runs under folders and reading their records (through ``sage_bench.records`` only)."""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

from sage_bench.records import DONE_FILE, RESULTS_FILE, BadLine, iter_numbered_records

REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed")
# ``args`` that DomainBed's grouping ignores but that make runs incomparable when they differ
SETTING_ARGS = ("backbone", "optimizer", "steps", "holdout_fraction")


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

    @property
    def records(self) -> list[dict]:
        return [r for run in self.runs for r in run.records]

    @property
    def n_done(self) -> int:
        return sum(run.done for run in self.runs)

    @property
    def n_incomplete(self) -> int:
        return sum(not run.done for run in self.runs)

    def completed(self) -> Collection:
        """Only the runs that finished."""
        return Collection([run for run in self.runs if run.done], self.bad_lines, self.skipped_records)

    def summary(self) -> str:
        """One line: runs found, finished and not, records read, lines and records skipped."""
        text = f"{len(self.runs)} runs: {self.n_done} done, {self.n_incomplete} incomplete; {len(self.records)} records"
        if self.bad_lines or self.skipped_records:
            text += f" ({len(self.bad_lines)} unreadable lines and {self.skipped_records} incomplete records skipped)"
        return text


def _is_accuracy(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record: dict) -> str | None:
    """Why a record cannot be used for model selection, or ``None`` when it can.

    A usable record has ``step``, DomainBed's ``args`` keys (``dataset``, ``algorithm``,
    ``test_envs``, ``trial_seed``, ``hparams_seed``), and finite ``env{i}_in_acc`` and
    ``env{i}_out_acc`` for environments ``0 .. n-1`` (``n`` counted as DomainBed counts it: up to
    the first missing ``env{i}_out_acc``), every test environment among them.
    """
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
    for i in range(n):
        for split in ("in", "out"):
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
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder: {folder}")
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            if RESULTS_FILE not in files:
                continue
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
    return collection


def mixed_settings(records: list[dict]) -> list[str]:
    """Warnings for each (data set, algorithm) whose records differ in an ``args`` setting that
    DomainBed's grouping ignores (backbone, optimizer, steps, holdout fraction): such runs are
    selected among as if they were one sweep, which is rarely what is meant."""
    values: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in records:
        args = r["args"]
        for key in SETTING_ARGS:
            values[(args["dataset"], args["algorithm"], key)].add(repr(args.get(key)))
    return [
        f"{dataset} / {algorithm}: runs with different {key} ({', '.join(sorted(seen))}) are selected "
        "among as one sweep; collect them from separate folders to compare them"
        for (dataset, algorithm, key), seen in values.items()
        if len(seen) > 1
    ]


def bf16_perturbation_runs(records: list[dict]) -> list[str]:
    """Warnings for runs of algorithms that perturb weights (the SAM family, SAGE) trained on
    CUDA under bf16 autocast, the default before ``precision.*`` existed (their records carry
    ``args.autocast == "bf16"``): the forward pass rounded most of their perturbation away, so
    they did not compute their published update (see ``sage_bench.precision``)."""
    from sage_bench.algorithms.registry import algorithms

    registered = algorithms()
    runs: dict[str, set[str]] = defaultdict(set)
    for r in records:
        args = r["args"]
        name = args["algorithm"]
        if (
            args.get("autocast") == "bf16"
            and str(args.get("device", "")).startswith("cuda")
            and name in registered
            and registered[name].cls.perturbs_weights
        ):
            runs[name].add(str(args.get("output_dir") or args.get("job_id")))
    return [
        f"{algorithm}: {len(folders)} run(s) trained on CUDA under bf16 autocast (records with "
        "autocast: bf16), where the forward pass loses most of the weight perturbation; they are not "
        f"{algorithm}'s published update. Train them again into a new output_dir (the default now "
        "computes them in float32), or delete their folders first"
        for algorithm, folders in sorted(runs.items())
    ]
