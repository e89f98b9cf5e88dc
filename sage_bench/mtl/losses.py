"""The training losses of the MTAN lineage (CAGrad / Nash-MTL / FAMO / FairGrad / SAMO ``calc_loss``).

- segmentation: ``nll_loss(log_softmax output, labels, ignore_index=-1)`` (mean over labelled pixels);
- depth: ``sum |p - g| * mask / #valid``;
- normal: ``1 - sum(p * g * mask) / #valid``;

where ``mask`` marks the pixels whose target is not all zeros (summed over channels) and
``#valid`` counts them (pixels, not channels). A batch without a valid pixel gives NaN, as there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from sage_bench.mtl.tasks import Task

IGNORE_INDEX = -1


def valid_mask(target: torch.Tensor) -> torch.Tensor:
    """``(B, 1, H, W)`` float mask: 1 where the target's channels are not all zero."""
    return (torch.sum(target, dim=1) != 0).to(target.dtype).unsqueeze(1)


def task_loss(kind: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The lineage's loss for one task of ``kind``."""
    if kind == "segmentation":
        return F.nll_loss(prediction, target, ignore_index=IGNORE_INDEX)
    mask = valid_mask(target)
    count = torch.count_nonzero(mask)
    if kind == "depth":
        return torch.sum(torch.abs(prediction - target) * mask) / count
    if kind == "normal":
        return 1 - torch.sum((prediction * target) * mask) / count
    raise ValueError(f"unknown task kind {kind!r}")


class MultiTaskLoss:
    """``(outputs, targets) -> {task: loss}`` for a list of tasks, in task order."""

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = list(tasks)

    def __call__(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {t.name: task_loss(t.kind, outputs[t.name], targets[t.name]) for t in self.tasks}
