"""How much disk a sweep needs, said before it launches.

A finished job keeps its records (``results.jsonl``), its log and arguments, and its final model
only when ``save_final_model=true``; its checkpoint is deleted when it finishes. While it runs
it also holds a checkpoint (the network's weights and the optimizer's state), and two while it
saves one: the new one is written in full before it replaces the old. The sweep needs what its
jobs keep plus two checkpoints per job that runs at the same time.

Weights and optimizer state are measured, not guessed: the network and optimizer of each
distinct (data set, backbone, optimizer) are built on PyTorch's ``meta`` device, which has
shapes but no memory, and take one step there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sage_bench.config import JobSpec
from sage_bench.sweep.plan import SweepJob
from sage_bench.units import format_bytes

_LOG_BYTES = 4096  # out.txt's header (environment, arguments, hyperparameters), launch.json, done
_LOG_ROW_BYTES = 100  # one row of out.txt per record
_EXTRA_FLOATS = 8  # room for the floats an algorithm's update returns besides the loss
_WANDB_BYTES = 1 << 20  # an offline wandb run of one job, roughly
CHECKPOINTS_WHILE_SAVING = 2  # a running job's checkpoints at once: the old stays until the new is written


def _record_steps(spec: JobSpec) -> int:
    """How many records a job writes: one per epoch (multi-task), or at every step ``s`` with
    ``s % checkpoint_freq == 0`` and at the last step (counted, not listed: ``steps`` may be huge)."""
    if spec.multi_task:
        return spec.epochs
    periodic = -(-spec.steps // spec.checkpoint_freq)  # 0, freq, 2 freq, ... below steps
    return periodic + ((spec.steps - 1) % spec.checkpoint_freq != 0)


def _record_values(spec: JobSpec) -> list[str]:
    """The names of a record's values besides the loss and the timings: accuracies of every
    environment's splits, or a multi-task job's metrics, task losses and ``delta_m``."""
    from sage_bench.data import get_dataset_class

    if spec.multi_task:
        from sage_bench.mtl.metrics import metric_names

        tasks = get_dataset_class(spec.dataset).TASKS
        return [f"test_{k}" for t in tasks for k in [*metric_names(t), f"{t.name}_loss"]] + ["delta_m", "lr"]
    n_envs = len(get_dataset_class(spec.dataset).ENVIRONMENTS)
    return [f"env{i}_{s}_acc" for i in range(n_envs) for s in ("in", "out")]


def kept_bytes(spec: JobSpec) -> int:
    """What a finished job keeps, final model aside (an upper estimate)."""
    a_float = 0.12345678901234567
    record = {
        "step": spec.steps,
        "epoch": a_float,
        "loss": a_float,
        "step_time": a_float,
        "mem_gb": a_float,
    }
    record.update({f"extra_{i}": a_float for i in range(_EXTRA_FLOATS)})
    record.update({key: a_float for key in _record_values(spec)})
    record.update({"hparams": spec.hparams, "args": spec.record_args()})
    record_bytes = len(json.dumps(record, sort_keys=True, default=str)) + 1
    args_bytes = len(json.dumps(spec.record_args(), indent=2, sort_keys=True, default=str))
    n_records = _record_steps(spec)
    total = n_records * (record_bytes + _LOG_ROW_BYTES) + 2 * args_bytes + _LOG_BYTES
    if spec.wandb.get("mode", "off") != "off":
        total += _WANDB_BYTES
    return total


def _tensor_bytes(value: object) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def model_bytes(spec: JobSpec) -> tuple[int, int]:
    """(weights, optimizer state) of the job's network, in bytes, measured on the meta device."""
    from sage_bench.data import get_dataset_class
    from sage_bench.models import build_network

    if spec.multi_task:
        from sage_bench.models.mtan import mtan

        with torch.device("meta"):
            network = mtan(get_dataset_class(spec.dataset).TASKS, spec.backbone_options["width"])
        return _sizes(network, spec)
    dataset = get_dataset_class(spec.dataset)(
        str(spec.data_dir), spec.test_envs, spec.hparams, **spec.dataset_options
    )
    with torch.device("meta"):
        network = build_network(
            spec.backbone,
            dataset.input_shape,
            dataset.num_classes,
            spec.hparams,
            **spec.backbone_options,
        )
    return _sizes(network, spec)


def _sizes(network: torch.nn.Module, spec: JobSpec) -> tuple[int, int]:
    """(weights, optimizer state) in bytes of ``network`` on the meta device after one step."""
    from sage_bench.optim import build_optimizer

    with torch.device("meta"):
        optimizer = build_optimizer(
            spec.optimizer, network.parameters(), spec.hparams, **spec.optimizer_options
        )
        for p in network.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        optimizer.step()
    weights = sum(_tensor_bytes(v) for v in network.state_dict().values())
    state = optimizer.state_dict()["state"]
    optimizer_bytes = sum(
        _tensor_bytes(v) for per_param in state.values() for v in per_param.values()
    )
    return weights, optimizer_bytes


def _model_key(spec: JobSpec) -> str:
    return json.dumps(
        [
            spec.dataset,
            spec.dataset_options,
            spec.backbone,
            spec.backbone_options,
            spec.optimizer,
            spec.optimizer_options,
        ],
        sort_keys=True,
        default=str,
    )


@dataclass
class DiskEstimate:
    """What a sweep's jobs will write, in bytes."""

    n_jobs: int
    kept: int  # by all the jobs once finished (records, logs, final models)
    checkpoint: int  # the largest checkpoint of one running job
    concurrency: int  # jobs that may run at the same time
    unmeasured: list[str] = field(default_factory=list)  # why some checkpoints could not be sized

    @property
    def needed(self) -> int:
        return self.kept + min(self.concurrency, self.n_jobs) * CHECKPOINTS_WHILE_SAVING * self.checkpoint

    def describe(self, free: int | None = None) -> str:
        if self.n_jobs == 0:
            return "disk: nothing to launch"
        running = min(self.concurrency, self.n_jobs)
        text = (
            f"disk: {self.n_jobs} jobs keep {format_bytes(self.kept)} once finished "
            f"({format_bytes(self.kept / self.n_jobs)} each); while running, a job also holds a "
            f"checkpoint of up to {format_bytes(self.checkpoint)}, two while it saves one "
            f"(deleted when it finishes), {running} at a time: {format_bytes(self.needed)} needed"
        )
        if free is not None:
            text += f", {format_bytes(free)} free"
        for reason in self.unmeasured:
            text += f"\n  checkpoint size unknown for {reason}"
        return text


def estimate_disk(jobs: Sequence[SweepJob], concurrency: int) -> DiskEstimate:
    """The disk that ``jobs`` need when at most ``concurrency`` of them run at once."""
    sizes: dict[str, tuple[int, int] | None] = {}
    unmeasured = []
    kept = 0
    largest_checkpoint = 0
    for job in jobs:
        spec = job.spec
        key = _model_key(spec)
        if key not in sizes:
            try:
                sizes[key] = model_bytes(spec)
            except Exception as exc:  # e.g. data or weights missing on this machine
                sizes[key] = None
                unmeasured.append(f"{spec.dataset} / {spec.backbone} ({type(exc).__name__}: {exc})")
        kept += kept_bytes(spec)
        if sizes[key] is not None:
            weights, optimizer_state = sizes[key]
            largest_checkpoint = max(largest_checkpoint, weights + optimizer_state)
            if spec.save_final_model:
                kept += weights
    return DiskEstimate(len(jobs), kept, largest_checkpoint, concurrency, unmeasured)


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free
