"""``Constant``: the floor of a multi-task table, a row that trains nothing.

Over the first epoch it reads the training split (every batch the runner gives it, augmented as
any row's) and keeps, without a single gradient step:

- segmentation: the class counts of the labelled pixels; it predicts, at every pixel, each
  class's log-frequency (smoothed by one count per class), so its label is the mode of the
  training split's pixels (on the embedded scenes and NYU-v2 / Cityscapes: the background or
  the commonest class). A per-position mode would use where objects usually lie; this floor
  does not, as the lineage's "predict the majority class" reference does not;
- depth: a histogram of the valid depths (target not 0) in bins of ``DEPTH_BIN`` units; it
  predicts their median (to half a bin) everywhere;
- normals: the sum of the valid normals; it predicts their mean direction everywhere.

Later epochs read nothing more. Its numbers are what a model that ignores the image scores: a
row of a table that does not beat them by a wide margin has not learnt that task.
"""

from __future__ import annotations

from typing import Any

import torch

from sage_bench.algorithms.multitask import MultiTaskAlgorithm
from sage_bench.algorithms.registry import MULTI_TASK, no_hparams, register_algorithm

DEPTH_BIN = 1e-3  # depth units per histogram bin


@register_algorithm("Constant", space=no_hparams, task=MULTI_TASK)
class Constant(MultiTaskAlgorithm):
    """The training split's commonest segmentation class, median depth and mean normal, for every
    image (see the module docstring). Needs a network with ``tasks`` (``sage_bench.models.mtan``)."""

    @classmethod
    def passes_per_step(cls, num_tasks, hparams):
        return 0.0

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        self.kinds = {task.name: task for task in network.tasks}
        self.fitted = False
        self.class_counts: dict[str, torch.Tensor] = {}
        self.depth_histogram: dict[str, torch.Tensor] = {}
        self.normal_sum: dict[str, torch.Tensor] = {}

    def update(self, x, targets):
        if not self.fitted:
            self._read(targets)
        # the training loss of what it predicts now, as every row reports its own
        with torch.no_grad():
            losses = self.loss_fn(self.predict(x), targets)
        return self.loss_stats(torch.stack([losses[t].float() for t in self.tasks]))

    def _read(self, targets) -> None:
        """Add a batch's targets to the counts (the first epoch only)."""
        for name, target in targets.items():
            kind = self.kinds[name].kind
            if kind == "segmentation":
                self._count_classes(name, target)
            elif kind == "depth":
                valid = target[target != 0].clamp_min(0.0)
                bins = torch.round(valid / DEPTH_BIN).long().cpu()
                counts = torch.bincount(bins)
                old = self.depth_histogram.get(name, torch.zeros(0, dtype=torch.int64))
                size = max(len(old), len(counts))
                self.depth_histogram[name] = _padded(old, size) + _padded(counts, size)
            else:
                valid = target.abs().sum(1, keepdim=True) != 0
                total = (target * valid).sum(dim=(0, 2, 3)).double().cpu()
                self.normal_sum[name] = self.normal_sum.get(name, torch.zeros(3, dtype=torch.float64)) + total

    def _count_classes(self, name: str, target: torch.Tensor) -> None:
        classes = self.kinds[name].channels
        labelled = target[(target >= 0) & (target < classes)].cpu()
        counts = self.class_counts.get(name, torch.zeros(classes, dtype=torch.int64))
        self.class_counts[name] = counts + torch.bincount(labelled, minlength=classes)

    def end_epoch(self, epoch):
        self.fitted = True
        # no parameter has a gradient, so nothing moves; the runner's learning-rate scheduler
        # then knows the optimizer was called (PyTorch warns about a scheduler step before one)
        self.optimizer.step()

    def median_depth(self, name: str) -> float:
        histogram = self.depth_histogram[name]
        cumulative = torch.cumsum(histogram, 0)
        return float(torch.searchsorted(cumulative, (cumulative[-1] + 1) // 2).item()) * DEPTH_BIN

    def predict(self, x):
        n, (h, w) = x.shape[0], x.shape[-2:]
        device = x.device
        outputs = {}
        for name, task in self.kinds.items():
            if task.kind == "segmentation":
                counts = self.class_counts[name]
                frequency = (counts + 1).double() / (counts.sum() + len(counts))
                outputs[name] = frequency.log().float().to(device).view(1, -1, 1, 1).expand(n, -1, h, w)
            elif task.kind == "depth":
                outputs[name] = torch.full((n, 1, h, w), self.median_depth(name), device=device)
            else:
                mean = self.normal_sum[name] / self.normal_sum[name].norm()
                outputs[name] = mean.float().to(device).view(1, 3, 1, 1).expand(n, 3, h, w)
        return outputs

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "fitted": self.fitted, "class_counts": self.class_counts,
            "depth_histogram": self.depth_histogram, "normal_sum": self.normal_sum,
        }  # fmt: skip

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.fitted = state["fitted"]
        self.class_counts = dict(state["class_counts"])
        self.depth_histogram = dict(state["depth_histogram"])
        self.normal_sum = dict(state["normal_sum"])


def _padded(counts: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.pad(counts, (0, size - len(counts)))
