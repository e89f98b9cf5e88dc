"""The on-disk record format of a job's output folder: the only thing ``run`` and ``collect`` share.

A job writes, in its own folder (DomainBed's layout, so DomainBed's ``collect_results`` reads it):

- ``results.jsonl``: one JSON object per checkpoint with ``step``, ``epoch``, the floats the
  algorithm's ``update`` returned (averaged since the previous checkpoint), ``env{i}_in_acc`` and
  ``env{i}_out_acc`` for every environment, ``step_time``, ``eval_time`` (seconds the
  checkpoint's evaluation took), ``mem_gb``, ``hparams`` and ``args`` (``args`` holds DomainBed's
  argument names: ``dataset``, ``algorithm``, ``test_envs``, ``hparams_seed``, ``trial_seed``,
  ``seed``, ..., and ``computed_in``, the precision the job ran in; records written before
  ``precision.*`` existed hold ``autocast`` instead). With ``args.eval_splits == "selection"``
  the training environments' ``env{i}_in_acc`` are absent (not evaluated: no model selection
  method reads them). Algorithms that perturb weights add ``grad_change``,
  ``perturbation_fidelity`` (measured on the step of the record) and, for SAGE, ``noise_ratio``
  (``sage_bench.precision``). Algorithms that take gradients at perturbed weights (the SAM
  family, GAM, SAGE; SAMO-X and SAGE-X in multi-task records) add ``perturbation_method``
  (``difference`` or ``linearized``) and ``perturbation_dtype`` (``float32``, ``bfloat16``):
  what computed their perturbed gradients at the record (``args.perturbation`` holds the
  setting, ``{"method", "tolerance"}``); where ``perturbation=auto`` chose between candidates
  (``sage_bench.algorithms.perturbation``), the records of the steps it measured on (the first
  and every record's) add each candidate's relative error of the change of the gradient against
  a reference, ``difference_bf16_error``, ``linearized_bf16_error``, ``difference_fp32_error``
  (``..._fp32``/``..._bf16`` by the training precision), ``reference_change`` (that change
  relative to the gradient) and ``perturbation_error`` (the chosen candidate's error; the
  collector warns above 0.05); averaged, as every float, over the measured steps since the
  previous record;
- ``done``: written last, when the job finished;
- ``out.txt`` / ``err.txt``: the log and, for a failed job, the error.

A multi-task job (``args.task == "multi_task"``, ``sage_bench.run.mtl``) writes one record per
epoch instead, with

- ``epoch`` (0-based), ``step`` (the epoch's last step, counted over the whole run) and ``lr``
  (the learning rate the epoch trained with);
- the epoch's mean of every float the algorithm's ``update`` returned: ``loss`` (the sum of the
  task losses), ``loss_<task>``, and the row's own (``weight_<task>``, ``perturbed_loss``,
  ``S``, ``beta``, ...), and ``step_time``;
- ``test_<task>_<metric>`` for every metric of the val split in the lineage's units and order
  (``test_seg_miou``, ``test_seg_pixacc``: fractions; ``test_depth_abs_err``,
  ``test_depth_rel_err``; ``test_normal_angle_mean``, ``test_normal_angle_median`` in degrees,
  ``test_normal_within_11.25``, ``_22.5``, ``_30``: fractions) and ``test_<task>_loss``;
- ``delta_m`` (%, lower is better, ``sage_bench.mtl.delta_m``) on data sets with a published
  single-task base (NYUv2, Cityscapes);
- ``eval_time``, ``mem_gb``, ``hparams`` and ``args`` (``args.epochs``, ``lr_step_epochs``,
  ``lr_gamma``; no ``test_envs``, ``steps`` or ``holdout_fraction``).

Metrics are written as the lineage computes them, NaN included: the mIoU is the mean over all
classes, so a class neither labelled nor predicted anywhere in the val split makes it NaN (a
full NYU-v2 or Cityscapes val split has every class; a few DigitScenes scenes may not), and so
is a depth or normal error of a batch without a valid pixel; ``delta_m`` is then NaN too.
Python's ``json`` writes and reads them as ``NaN``. The collector prints such a cell as ``X``
and warns; ``append_record`` refuses non-finite accuracies (``*_acc``) only, and the runner stops a
job whose *training* loss is not finite (``TrainingDiverged``).
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

DOMAIN_GENERALIZATION = "domain_generalization"
MULTI_TASK = "multi_task"
TASKS = (DOMAIN_GENERALIZATION, MULTI_TASK)
"""The kinds of job, as ``args.task`` of a record names them (DomainBed's records have no
``args.task``: they are domain generalization)."""

RESULTS_FILE = "results.jsonl"
MEASUREMENT_KEYS = ("step_time", "eval_time", "mem_gb")
"""Record keys that measure the machine (time, memory), not the run: a resumed run writes the
same records as an uninterrupted one except for these."""
DONE_FILE = "done"
LOG_FILE = "out.txt"
ERROR_FILE = "err.txt"


def record_task(record: Mapping[str, Any]) -> str:
    """The kind of job a record comes from: ``args.task``, domain generalization if absent."""
    args = record.get("args")
    task = args.get("task") if isinstance(args, Mapping) else None
    return task if task in TASKS else DOMAIN_GENERALIZATION


def args_problem(record: Mapping[str, Any], required: tuple[str, ...]) -> str | None:
    """Why a record's ``args`` cannot place it in a table, or ``None``: they must be a mapping
    with every key of ``required``, and integer ``trial_seed`` and ``hparams_seed`` where
    required (the collectors of both kinds of job ask this first)."""
    args = record.get("args")
    if not isinstance(args, Mapping):
        return "no args"
    missing = [k for k in required if k not in args]
    if missing:
        return f"args without {', '.join(missing)}"
    for key in ("trial_seed", "hparams_seed"):
        if key in required and (not isinstance(args[key], int) or isinstance(args[key], bool)):
            return f"args.{key} is not an integer: {args[key]!r}"
    return None


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
