"""``Job``: what a kind's training loop gets from the job shell (``sage_bench.run.train``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sage_bench.config import JobSpec
from sage_bench.records import append_record
from sage_bench.run import checkpoint as ckpt
from sage_bench.run.tracking import Tracker
from sage_bench.seeding import seed_everything


def _run_name(spec: JobSpec) -> str:
    return f"{spec.describe()} hparams_seed={spec.hparams_seed} trial_seed={spec.trial_seed}"


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


__all__ = ["Job"]
