"""Finding runs under folders and reading their records (through ``sage_bench.records`` only)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from sage_bench.records import DONE_FILE, RESULTS_FILE, BadLine, iter_records


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
        return Collection([run for run in self.runs if run.done], self.bad_lines)


def _has_required_keys(record: dict) -> bool:
    args = record.get("args")
    return (
        isinstance(args, dict)
        and {"dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed"} <= set(args)
        and "step" in record
    )


def find_runs(*folders: str | os.PathLike) -> Collection:
    """Every folder holding a ``results.jsonl`` under ``folders`` (searched recursively), as
    written by sage-bench or by DomainBed.

    Unreadable lines are skipped with a warning naming the file and line; a record without
    DomainBed's ``args`` keys is skipped the same way.
    """
    collection = Collection()
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise FileNotFoundError(f"no such folder: {folder}")
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            if RESULTS_FILE not in files:
                continue
            path = Path(root) / RESULTS_FILE
            read = list(iter_records(path, collection.bad_lines))
            records = [r for r in read if _has_required_keys(r)]
            if len(records) < len(read):
                warnings.warn(
                    f"{path}: skipping {len(read) - len(records)} record(s) without "
                    "step and DomainBed's args keys (dataset, algorithm, test_envs, trial_seed, hparams_seed)",
                    stacklevel=2,
                )
            collection.runs.append(Run(Path(root), records, (Path(root) / DONE_FILE).exists()))
    return collection
