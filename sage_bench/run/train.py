"""Train one job into its output folder (DomainBed's ``train.py``, as a function).

This module is the job shell, the same for every kind of job: the lock, the log, the tracker,
the stop signals, ``job.json``, loading and checking the checkpoint, writing records, the
``done`` marker and what a failure leaves. The training loop itself is the job kind's:
``sage_bench.run.dg`` (domain generalization: steps, environments, model selection's records)
or ``sage_bench.run.mtl`` (multi-task: epochs, per-epoch metrics); each gets a ``Job``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from sage_bench import __version__
from sage_bench.config import JobSpec
from sage_bench.data.loaders import close_loaders, is_worker_death
from sage_bench.lock import job_lock
from sage_bench.records import (
    ERROR_FILE,
    LOG_FILE,
    append_record,
    is_done,
    mark_done,
)
from sage_bench.run import checkpoint as ckpt
from sage_bench.run.guards import TrainingDiverged
from sage_bench.run.tracking import Tracker
from sage_bench.seeding import seed_everything

JOB_FILE = "job.json"
MODEL_FILE = "model.pt"  # the final model, kept when save_final_model=true
_SCHEDULER_VARIABLES = (
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
    "CUDA_VISIBLE_DEVICES",
)  # fmt: skip


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it; warnings and errors go
    to standard error."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)


@contextmanager
def _job_logger(job_dir: Path, console: bool = True) -> Iterator[logging.Logger]:
    logger = logging.getLogger(f"sage_bench.job.{job_dir.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    file_handler = logging.FileHandler(job_dir / LOG_FILE, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [file_handler]
    if console:
        console_handler = _TqdmHandler()
        console_handler.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console_handler)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield logger
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def run_job(spec: JobSpec, console: bool = True, start_over: bool = False) -> Path:
    """Train ``spec`` and write its folder ``spec.job_dir``; return that folder.

    ``console=False`` writes the log only to the job's ``out.txt``.

    A finished job (its ``done`` marker exists) is not run again; an unfinished one resumes
    from its checkpoint, unless ``start_over`` (the checkpoint is then moved aside) or the
    checkpoint was written by a different computation (``CheckpointMismatch``). SIGTERM, SIGUSR2
    or Ctrl-C stop the job after the current step with a checkpoint saved (``JobInterrupted``).
    Raises ``JobAlreadyRunning`` when another process runs the job.
    """
    job_dir = spec.job_dir
    if is_done(job_dir):
        ckpt.discard_checkpoint(job_dir)  # left behind by a job killed as it finished
        if console:
            print(f"{job_dir}: already done")
        return job_dir
    job_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(job_dir) as lock:
        if is_done(job_dir):  # finished by another process while this one waited for the lock
            print(f"{job_dir}: already done")
            lock.remove_on_release = True
            return job_dir
        with _job_logger(job_dir, console) as log, Tracker(log) as tracker, ckpt.StopSignals() as stop:
            (job_dir / ERROR_FILE).unlink(missing_ok=True)
            try:
                if start_over and (aside := ckpt.set_aside(job_dir, "before-start-over")) is not None:
                    log.warning(f"starting over from step 0 as asked; the checkpoint is now {aside}")
                try:
                    _train(spec, job_dir, log, stop, tracker)
                except ckpt.UnusableCheckpoint as exc:
                    aside = ckpt.set_aside(job_dir)
                    log.warning(f"{exc}; moved it to {aside}; starting again from step 0")
                    _train(spec, job_dir, log, stop, tracker)
            except ckpt.JobInterrupted as exc:
                log.warning(f"job {exc}; running it again resumes from there")
                raise
            except RuntimeError as exc:
                if stop.received is None or not is_worker_death(exc):
                    _record_failure(job_dir, log, exc)
                    raise
                # a loader worker died after a stop signal (killed with the process group):
                # this is the stop, and the job resumes from its last checkpoint
                interrupted = ckpt.JobInterrupted(stop.received, None)
                log.warning(f"job {interrupted} (a data-loading worker died: {exc})")
                raise interrupted from exc
            except BaseException as exc:
                _record_failure(job_dir, log, exc)
                raise
            finally:
                close_loaders()  # the job's loader workers end with it
        lock.remove_on_release = is_done(job_dir)  # a finished job's folder keeps no lock file
    return job_dir


def _record_failure(job_dir: Path, log: logging.Logger, exc: BaseException) -> None:
    """Say why the job failed in ``err.txt`` (the traceback, its last line the reason) and in
    the log. On a full disk the reason names the file, and a short write is tried when the
    traceback does not fit."""
    reason = f"{type(exc).__name__}: {exc}"
    text = "".join(traceback.format_exception(exc))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and "no space left" not in str(exc):
        where = exc.filename or f"in {job_dir}"
        reason = f"OSError: no space left on device while writing {where}"
        text += reason + "\n"
    for content in (text, reason + "\n"):
        try:
            (job_dir / ERROR_FILE).write_text(content)
            break
        except OSError:
            continue
    log.error(f"job failed: {reason}")


def _describe(spec: JobSpec, log: logging.Logger) -> None:
    log.info("Environment:")
    log.info(f"\tsage-bench: {__version__}")
    log.info(f"\tPython: {platform.python_version()}")
    log.info(f"\tPyTorch: {torch.__version__}")
    log.info(f"\tTorchvision: {torchvision.__version__}")
    log.info(f"\tCUDA: {torch.version.cuda}")
    log.info(f"\tNumPy: {np.__version__}")
    log.info(f"\tHost: {platform.node()} (pid {os.getpid()})")
    for variable in _SCHEDULER_VARIABLES:
        if variable in os.environ:
            log.info(f"\t{variable}: {os.environ[variable]}")
    log.info("Args:")
    for key, value in sorted(spec.record_args().items()):
        log.info(f"\t{key}: {value}")
    log.info("HParams:")
    for key, value in sorted(spec.hparams.items()):
        log.info(f"\t{key}: {value}")


def _run_name(spec: JobSpec) -> str:
    where = "" if spec.multi_task else f" test_envs={spec.test_envs}"
    return f"{spec.algorithm} {spec.dataset}{where} hparams_seed={spec.hparams_seed} trial_seed={spec.trial_seed}"


@dataclass
class Job:
    """What a training loop gets from the job shell: the spec, its folder, the log, the stop
    signals (``stop.received``), the computation its checkpoints must match, and how to start
    (``begin``) and write a record (``write_record``)."""

    spec: JobSpec
    dir: Path
    log: logging.Logger
    stop: ckpt.StopSignals
    tracker: Tracker
    computation: dict[str, Any]

    def begin(self, total_steps: int) -> ckpt.Checkpoint | None:
        """The checkpoint to resume from (``None``: start at step 0) of a job of
        ``total_steps`` steps, checked against the job's computation; then the tracker starts and
        the global generators are seeded from the job's seed. Call once, before anything random
        (building the network)."""
        spec = self.spec
        resume = ckpt.load_checkpoint(self.dir, spec.job_id, total_steps)
        if resume:
            ckpt.check_computation(resume, self.computation, ckpt.checkpoint_path(self.dir))
            if resume.torch != torch.__version__:  # numerics may differ slightly; the code is the same
                self.log.warning(f"the checkpoint was written with PyTorch {resume.torch}, this is {torch.__version__}")
        self.tracker.start(spec.wandb, self.dir, _run_name(spec), {**spec.record_args(), "hparams": spec.hparams})
        seed_everything(spec.seed)
        return resume

    def write_record(self, record: dict[str, Any], step: int) -> None:
        """Append ``record`` to ``results.jsonl`` and send it to the tracker (without
        ``hparams`` and ``args``) at ``step``."""
        append_record(self.dir, record)
        self.tracker.log({k: v for k, v in record.items() if k not in ("hparams", "args")}, step)


def _train(
    spec: JobSpec, job_dir: Path, log: logging.Logger, stop: ckpt.StopSignals, tracker: Tracker
) -> None:
    from sage_bench.run import dg, mtl

    _describe(spec, log)
    (job_dir / JOB_FILE).write_text(json.dumps(spec.record_args(), indent=2, sort_keys=True))
    job = Job(spec, job_dir, log, stop, tracker, ckpt.job_computation(spec.hparams, spec.record_args()))
    algorithm = (mtl.train if spec.multi_task else dg.train)(job)
    if spec.save_final_model:
        model = {"algorithm": algorithm.state_dict(), "args": spec.record_args(), "hparams": spec.hparams}
        torch.save(model, job_dir / MODEL_FILE)
    mark_done(job_dir)
    ckpt.discard_checkpoint(job_dir)
    log.info(f"done: {job_dir}")


__all__ = ["JOB_FILE", "MODEL_FILE", "Job", "TrainingDiverged", "run_job"]
