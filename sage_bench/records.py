"""The on-disk record format of a job's output folder: the only thing ``run`` and ``collect`` share.

A job writes, in its own folder (DomainBed's layout, so DomainBed's ``collect_results`` reads it):

- ``results.jsonl``: one JSON object per checkpoint with ``step``, ``epoch``, the floats the
  algorithm's ``update`` returned (averaged since the previous checkpoint), ``env{i}_in_acc`` and
  ``env{i}_out_acc`` for every environment, ``step_time``, ``mem_gb``, ``hparams`` and ``args``
  (``args`` holds DomainBed's argument names: ``dataset``, ``algorithm``, ``test_envs``,
  ``hparams_seed``, ``trial_seed``, ``seed``, ..., and ``computed_in``, the precision the job
  ran in; records written before ``precision.*`` existed hold ``autocast`` instead). Algorithms
  that perturb weights add ``grad_change``, ``perturbation_fidelity`` (measured on the step of
  the record) and, for SAGE, ``noise_ratio`` (``sage_bench.precision``);
- ``done``: written last, when the job finished;
- ``out.txt`` / ``err.txt``: the log and, for a failed job, the error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.jsonl"
DONE_FILE = "done"
LOG_FILE = "out.txt"
ERROR_FILE = "err.txt"


def job_hash(job_args: Mapping[str, Any]) -> str:
    """The folder name of a job: the MD5 of its arguments as sorted JSON (as DomainBed's sweep)."""
    text = json.dumps(job_args, sort_keys=True)
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to a record")


def append_record(job_dir: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one checkpoint record to ``results.jsonl`` as a single line, flushed to disk."""
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value) and key.endswith("_acc"):
            raise ValueError(f"refusing to record a non-finite accuracy {key}={value}")
    line = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
    path = Path(job_dir) / RESULTS_FILE
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class BadLine:
    """A line of a results file that could not be read."""

    path: Path
    line_number: int
    reason: str


def iter_records(path: str | os.PathLike, bad_lines: list[BadLine] | None = None) -> Iterator[dict]:
    """The records of one ``results.jsonl``; unreadable lines are skipped with a warning.

    A job killed while writing leaves a truncated last line; that line, and any other that is
    not a JSON object, is reported (file and line number) and skipped, never fatal.
    """
    for _, record in iter_numbered_records(path, bad_lines):
        yield record


def iter_numbered_records(path: str | os.PathLike, bad_lines: list[BadLine] | None = None) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for each readable line of a ``results.jsonl``, as ``iter_records``."""
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                reason = str(exc).splitlines()[0]
                warnings.warn(f"{path}:{number}: skipping unreadable record ({reason})", stacklevel=2)
                if bad_lines is not None:
                    bad_lines.append(BadLine(path, number, reason))
                continue
            yield number, record


def read_records(job_dir: str | os.PathLike) -> list[dict]:
    """All readable records of one job folder (empty if it has no results yet)."""
    path = Path(job_dir) / RESULTS_FILE
    if not path.exists():
        return []
    return list(iter_records(path))


def is_done(job_dir: str | os.PathLike) -> bool:
    """Whether the job in ``job_dir`` finished."""
    return (Path(job_dir) / DONE_FILE).exists()


def mark_done(job_dir: str | os.PathLike) -> None:
    """Write the ``done`` marker (DomainBed writes the word ``done``)."""
    (Path(job_dir) / DONE_FILE).write_text("done")


def truncate_records(job_dir: str | os.PathLike, before_step: int) -> int:
    """Keep only the records of steps before ``before_step``; return how many are kept.

    A job resumed from a checkpoint at step ``t`` writes the records of steps ``>= t`` again,
    so the ones an earlier attempt wrote after its checkpoint (and a line cut short by a kill)
    are dropped first; no step is ever recorded twice. The kept lines are unchanged, byte for
    byte, and the file is replaced atomically.
    """
    path = Path(job_dir) / RESULTS_FILE
    if not path.exists():
        return 0
    kept = []
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] < before_step:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)
