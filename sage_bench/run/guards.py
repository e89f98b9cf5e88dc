"""What every training loop checks and measures: divergence (NaN or infinite losses and
weights), the peak memory, and the log's table rows."""

from __future__ import annotations

import resource

import numpy as np
import torch


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the last checkpoint (all finite) is kept."""


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``; on CPU, the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def format_row(values: list, width: int = 12) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            v = f"{v:.4f}"
        return str(v).ljust(width)[:width]

    return "  ".join(fmt(v) for v in values)


def kept(saved_step: int) -> str:
    if saved_step == 0:
        return "no checkpoint was saved yet"
    return f"the last checkpoint (before step {saved_step}) is kept; running the job again resumes from it"


def check_finite(stats: dict[str, float], step: int, saved_step: int) -> None:
    """Stop the job when a loss the update returned is NaN or infinite."""
    for key, value in stats.items():
        if key.endswith("loss") and not np.isfinite(value):
            raise TrainingDiverged(
                f"the training {key} became {value} at step {step}; {kept(saved_step)}. "
                "A smaller hparams.lr, or a closer look at the data, usually helps"
            )


def check_finite_weights(algorithm: torch.nn.Module, step: int, saved_step: int) -> None:
    """Stop the job when a weight is NaN or infinite (checked before each checkpoint is saved)."""
    tensors = [p.detach() for p in algorithm.parameters() if p.is_floating_point()]
    # the largest magnitude of each tensor: finite unless an element is not (a 2-norm overflows)
    if tensors and not torch.isfinite(torch.stack(torch._foreach_norm(tensors, ord=float("inf")))).all():
        raise TrainingDiverged(f"the weights became NaN or infinite at step {step}; {kept(saved_step)}")
