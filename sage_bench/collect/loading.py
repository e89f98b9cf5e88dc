"""Finding runs under folders and reading their records (through ``sage_bench.records`` only).

Each run is read once: a folder reached twice (given twice, or inside another given folder) and
a copy of a run (another folder holding the same job, by ``args.job_id`` or, for DomainBed's
records, by ``args`` but ``output_dir``) are left out with a warning, since a run counted twice
would turn leave-one-domain-out cells into ``X`` or move cells. Of the copies, the finished one
with the most records is kept (the first found on a tie).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sage_bench.collect.dg import bf16_perturbation_runs, mixed_settings
from sage_bench.collect.kinds import collector, record_problem
from sage_bench.records import DONE_FILE, RESULTS_FILE, BadLine, iter_numbered_records, record_task


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

    def records_of(self, task: str) -> list[dict]:
        """The records of the runs of one kind (``args.task``, ``sage_bench.kinds``)."""
        return [r for r in self.records if record_task(r) == task]

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


__all__ = [
    "Collection", "Run", "bf16_perturbation_runs", "collector", "find_runs", "inexact_perturbation_runs",
    "mixed_settings", "record_problem",
]  # fmt: skip
