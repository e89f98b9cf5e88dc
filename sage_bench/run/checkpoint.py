"""Resumable checkpoints of a running job, and stopping cleanly when a signal asks to.

A checkpoint holds everything an uninterrupted run would still have in memory at a step
boundary: the algorithm's ``state_dict`` (the network and any state of the algorithm's own),
the optimizer's ``state_dict``, the Python, NumPy, torch and CUDA random-number generators, the
number of the next step (which is also the loaders' state: batch ``t`` of a training loader
depends only on its seed and ``t``; a multi-task job's epoch and position in it follow from the
step), the values the algorithm's ``update`` returned since the last record (the next record
averages them) and, for a multi-task job, its learning-rate scheduler's state. A run resumed from it writes the same
``results.jsonl`` values as one that was never stopped (on the CPU; ``step_time`` and ``mem_gb``
measure the machine, not the run).

It also holds what defines the computation besides the job's identity: the resolved
hyperparameters, the records' ``args`` and the sage-bench version. A job resumes only when they
are unchanged but for settings that change no number (``check_computation``, by the rule of
``sage_bench.computation``: where the job runs, the evaluation cache, a precision spelled as its
resolved default may differ): after an upgrade that changed a default, the optimizer state of the old
values must not continue under records that claim the new ones.

The file is written to a temporary name and renamed over the previous one, so a job killed
while saving leaves the previous checkpoint intact; a save that fails (a full disk) removes the
temporary file. It is read with ``torch.load(weights_only=True)``, which unpickles nothing but
tensors and plain containers. A file that cannot be read from the disk (``OSError``: EIO, ESTALE
on a network file system) fails the job and stays where it is, so running the job again resumes
from it; a file whose content cannot be used (corrupt, not sage-bench's, another job's) is an
``UnusableCheckpoint``, which the runner moves aside (``set_aside``) before starting over.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from sage_bench import __version__
from sage_bench.computation import PLACE_ARGS, args_that_count
from sage_bench.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "sage-bench checkpoint"
VERSION = 2  # 2: with the computation (hyperparameters, args, version) and the probe's state


# Signals that stop a job after the current step: SLURM and most schedulers send SIGTERM before
# killing a job (preemption, scancel, requeue); submitit asks for SLURM's pre-timeout signal as
# SIGUSR2 (``--signal=USR2@90``); SIGINT is Ctrl-C.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class UnusableCheckpoint(Exception):
    """A checkpoint file that cannot be resumed from: corrupt, foreign, or another job's."""


class CheckpointMismatch(UserError):
    """A checkpoint written by a different computation (code version, hyperparameters, args)."""


class JobInterrupted(Exception):
    """The job stopped because a signal asked it to; its checkpoint is saved.

    ``next_step`` is the step the saved checkpoint resumes at; ``None`` when the job stopped
    without saving one (it then resumes from its last periodic checkpoint).
    """

    def __init__(self, signum: int, next_step: int | None):
        self.signum = signum
        self.next_step = next_step
        name = signal.Signals(signum).name
        if next_step is None:
            super().__init__(f"stopped by {name}; it resumes from its last checkpoint")
        else:
            super().__init__(f"stopped by {name} before step {next_step}; the checkpoint is saved")


@dataclass
class Checkpoint:
    """The state of a job at the start of step ``step``."""

    step: int
    interval: dict[str, list[float]]
    algorithm: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    computation: dict[str, Any] = field(default_factory=dict)  # see ``job_computation``
    probe: dict[str, Any] | None = None  # the held-out gradient probe's state, if it ran
    torch: str | None = None  # the PyTorch version that wrote it
    scheduler: dict[str, Any] | None = None  # the learning-rate scheduler's state (multi-task jobs)


def checkpoint_path(job_dir: str | os.PathLike) -> Path:
    return Path(job_dir) / CHECKPOINT_FILE


# -- random-number generators ----------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator, in types ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put every global generator back into a state from ``capture_rng_state``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- what the computation is ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as JSON's plain types (tuples become lists, NumPy scalars numbers), so that it
    survives ``torch.load(weights_only=True)`` and compares equal after a round trip."""
    return json.loads(json.dumps(value, sort_keys=True, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def job_computation(hparams: Mapping[str, Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """What defines a job's computation besides its identity: the sage-bench version, the
    resolved hyperparameters and the records' ``args`` but where it runs (``PLACE_ARGS``)."""
    return {
        "sage_bench": __version__,
        "hparams": _plain(dict(hparams)),
        "args": _plain({k: v for k, v in args.items() if k not in PLACE_ARGS}),
    }


def check_computation(checkpoint: Checkpoint, expected: Mapping[str, Any], path: Path) -> None:
    """Raise ``CheckpointMismatch``, naming every difference, unless ``checkpoint`` was written by
    the computation ``expected`` (from ``job_computation``)."""
    stored = checkpoint.computation
    differences = []
    if stored.get("sage_bench") != expected["sage_bench"]:
        differences.append(f"sage-bench {stored.get('sage_bench')} wrote it, this is {expected['sage_bench']}")
    for section in ("hparams", "args"):
        old, new = stored.get(section, {}), expected[section]
        counted_old, counted_new = old, new
        if section == "args":  # settings that change no number never refuse a resume
            counted_old, counted_new = args_that_count(old), args_that_count(new)
        for key in sorted(set(counted_old) | set(counted_new)):
            if counted_old.get(key, "<unset>") != counted_new.get(key, "<unset>"):  # said as written
                differences.append(f"{section}.{key} was {old.get(key, '<unset>')!r}, now {new.get(key, '<unset>')!r}")
    if differences:
        raise CheckpointMismatch(
            f"will not resume from {path}: it was written by a different computation ("
            + "; ".join(differences)
            + "). Resuming would continue the old run under records that claim the new one. To "
            "start the job over from step 0 (the checkpoint is kept aside), run the same "
            "`sage-bench train` command with --start-over, or delete the job's folder "
            "(`sage-bench sweep delete_incomplete ...`); to resume it, go back to what wrote it"
        )


# -- saving and loading ----------------------------------------------------------------------


def save_checkpoint(
    job_dir: str | os.PathLike,
    job_id: str,
    step: int,
    algorithm: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    interval: Mapping[str, list[float]],
    *,
    computation: Mapping[str, Any] | None = None,
    probe: Mapping[str, Any] | None = None,
    scheduler: Mapping[str, Any] | None = None,
) -> Path:
    """Save the state at the start of ``step`` atomically (write, then rename); return the path.

    ``computation`` comes from ``job_computation``, ``probe`` from the held-out gradient probe's
    ``state_dict``, ``scheduler`` from a learning-rate scheduler's. A failed write removes the
    temporary file; on a full disk the ``OSError`` says which file it was writing.
    """
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "job_id": job_id,
        "step": step,
        "interval": {key: list(values) for key, values in interval.items()},
        "algorithm": algorithm.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng_state(),
        "computation": dict(computation or {}),
        "probe": _plain(probe) if probe is not None else None,
        "torch": str(torch.__version__),
    }
    if scheduler is not None:  # absent from domain-generalization checkpoints, as before
        payload["scheduler"] = _plain(scheduler)
    path = checkpoint_path(job_dir)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # half a checkpoint: on a full disk, the space it took
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device while writing {tmp}") from exc
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check(condition: bool, path: Path, reason: str) -> None:
    if not condition:
        raise UnusableCheckpoint(f"checkpoint {path} is unusable: {reason}")


def load_checkpoint(job_dir: str | os.PathLike, job_id: str, steps: int) -> Checkpoint | None:
    """The checkpoint of job ``job_id`` in ``job_dir``, or ``None`` when there is none.

    Raises ``OSError`` when the file cannot be read from the disk (it stays: try again later),
    ``UnusableCheckpoint`` for content that cannot be read safely, was not written by
    sage-bench, belongs to another job or to a step outside ``[1, steps]``, and
    ``CheckpointMismatch`` for a checkpoint of an older format, which does not say what
    computation wrote it.
    """
    path = checkpoint_path(job_dir)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # an interrupted save
    if not path.exists():
        return None
    try:
        # read through a Python file, so that an I/O error surfaces as the OSError it is
        with open(path, "rb") as f:
            payload = torch.load(f, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot read the checkpoint {path} ({exc.strerror or exc}); it is kept: running the "
            "job again resumes from it",
        ) from exc
    except Exception as exc:  # corrupt archive, truncated file, or objects weights_only refuses
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnusableCheckpoint(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {reason})"
        ) from exc
    _check(
        isinstance(payload, dict) and payload.get("format") == FORMAT,
        path,
        "not a sage-bench checkpoint",
    )
    if payload.get("version") == 1:
        raise CheckpointMismatch(
            f"will not resume from {path}: an older sage-bench wrote it without the "
            "hyperparameters and version it ran with, so resuming could mix two computations. "
            "To start the job over from step 0 (the checkpoint is kept aside), run the same "
            "`sage-bench train` command with --start-over, or delete the job's folder "
            "(`sage-bench sweep delete_incomplete ...`)"
        )
    _check(
        payload.get("version") == VERSION,
        path,
        f"format version {payload.get('version')!r}, expected {VERSION}",
    )
    _check(
        payload.get("job_id") == job_id,
        path,
        f"it belongs to job {payload.get('job_id')!r}, not {job_id!r}",
    )
    step = payload.get("step")
    _check(
        isinstance(step, int) and 0 < step <= steps, path, f"step {step!r} is outside 1..{steps}"
    )
    interval = payload.get("interval")
    _check(
        isinstance(interval, dict) and all(isinstance(v, list) for v in interval.values()),
        path,
        "no partial averages",
    )
    for key in ("algorithm", "optimizer", "rng", "computation"):
        _check(isinstance(payload.get(key), dict), path, f"no {key} state")
    probe = payload.get("probe")
    _check(probe is None or isinstance(probe, dict), path, "a bad probe state")
    scheduler = payload.get("scheduler")
    _check(scheduler is None or isinstance(scheduler, dict), path, "a bad scheduler state")
    return Checkpoint(
        step=step,
        interval={key: [float(v) for v in values] for key, values in interval.items()},
        algorithm=payload["algorithm"],
        optimizer=payload["optimizer"],
        rng=payload["rng"],
        computation=payload["computation"],
        probe=probe,
        torch=payload.get("torch"),
        scheduler=scheduler,
    )


def restore_checkpoint(
    checkpoint: Checkpoint,
    algorithm: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """Load the algorithm, optimizer, scheduler and generator states; the generators last, so
    call this right before the first step. Raises ``UnusableCheckpoint`` when a state does not
    fit (the algorithm and optimizer may then be partly overwritten: build them again)."""
    try:
        algorithm.load_state_dict(checkpoint.algorithm)
        optimizer.load_state_dict(checkpoint.optimizer)
        if scheduler is not None:
            if checkpoint.scheduler is None:
                raise KeyError("no learning-rate scheduler state")
            scheduler.load_state_dict(checkpoint.scheduler)
        restore_rng_state(checkpoint.rng)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnusableCheckpoint(f"checkpoint does not fit this job: {reason}") from exc


def set_aside(job_dir: str | os.PathLike, why: str = "unusable") -> Path | None:
    """Rename the checkpoint to ``checkpoint.pt.<why>-<UTC time>`` (kept for a look, never
    resumed from): ``unusable`` for one that cannot be resumed, ``before-start-over`` for a good
    one a user chose to start over from; return its new path, or ``None`` when there was none."""
    path = checkpoint_path(job_dir)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
    base = f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    aside, n = path.with_name(base), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{base}-{n}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside


def discard_checkpoint(job_dir: str | os.PathLike) -> None:
    """Delete the checkpoint of a job (and any half-written one)."""
    path = checkpoint_path(job_dir)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)


# -- stopping on a signal --------------------------------------------------------------------


class StopSignals:
    """Within this context, SIGTERM, SIGUSR2 and SIGINT set ``received`` instead of stopping the
    process, so the training loop can finish its step, save a checkpoint and stop.

    A second Ctrl-C stops at once (``KeyboardInterrupt``). On exit the previous handlers come
    back. Outside the main thread, where Python cannot handle signals, this does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            name = signal.Signals(signum).name
            again = " (Ctrl-C again to stop now)" if signum == signal.SIGINT else ""
            print(
                f"sage-bench: {name}: stopping after this step{again}", file=sys.stderr, flush=True
            )

    def __enter__(self) -> StopSignals:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                break
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
