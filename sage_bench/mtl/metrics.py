"""Per-epoch evaluation as the MTAN lineage computes it (``ConfMatrix``, ``depth_error``,
``normal_error`` and the trainers' averaging).

- Segmentation: one confusion matrix over every batch of the epoch, counting pixels whose label
  is in ``[0, C)``; ``IoU_c = diag / (row + col - diag)``, ``mIoU`` = the mean over all ``C``
  classes (NaN when a class is neither predicted nor present), pixel accuracy = ``diag / total``.
- Depth, per batch over its valid pixels (target not 0): absolute error ``sum |p - g| / n`` and
  relative error ``sum |p - g| / g / n``; the epoch's value is the plain mean over batches.
- Normals, per batch over valid pixels: angles ``degrees(acos(clamp(<p, g>, -1, 1)))``; their
  mean, median (numpy's, the mean of the two middle values for an even count) and the shares
  below 11.25, 22.5 and 30 degrees; each averaged over batches (so the epoch's "median" is the
  mean of per-batch medians, as in the lineage).
- Losses: each batch's task loss, averaged over batches.

Units are the lineage's: fractions for mIoU, pixel accuracy and the shares, raw errors,
degrees. The lineage sums per-batch values in float32 (``avg_cost += cost / n_batches``); here
they are summed in float64 and divided once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sage_bench.mtl.tasks import ANGLE_THRESHOLDS, Task, metric_names

__all__ = ["ANGLE_THRESHOLDS", "ConfusionMatrix", "MetricAccumulator", "depth_errors", "metric_names", "normal_errors"]


class ConfusionMatrix:
    """Pixel counts ``mat[target, prediction]`` over any number of batches."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.mat: torch.Tensor | None = None

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add the labels ``prediction`` (class indices) against ``target`` (any shape, -1 ignored)."""
        n = self.num_classes
        prediction, target = prediction.flatten(), target.flatten()
        if self.mat is None:
            self.mat = torch.zeros((n, n), dtype=torch.int64, device=prediction.device)
        with torch.no_grad():
            keep = (target >= 0) & (target < n)
            index = n * target[keep].to(torch.int64) + prediction[keep]
            self.mat += torch.bincount(index, minlength=n**2).reshape(n, n)

    def miou_and_accuracy(self) -> tuple[float, float]:
        h = self.mat.double()
        diag = torch.diag(h)
        accuracy = diag.sum() / h.sum()
        iou = diag / (h.sum(1) + h.sum(0) - diag)
        return torch.mean(iou).item(), accuracy.item()


def depth_errors(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Absolute and relative error of one batch over its valid pixels."""
    mask = (torch.sum(target, dim=1) != 0).unsqueeze(1)
    p, g = prediction.masked_select(mask), target.masked_select(mask)
    count = torch.count_nonzero(mask)
    difference = torch.abs(p - g)
    return (difference.sum() / count).item(), ((difference / g).sum() / count).item()


def normal_errors(prediction: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Mean and median angle (degrees) and the shares within 11.25, 22.5 and 30 degrees."""
    mask = torch.sum(target, dim=1) != 0
    cosine = torch.sum(prediction * target, 1).masked_select(mask)
    angles = np.degrees(torch.acos(torch.clamp(cosine, -1, 1)).detach().cpu().numpy())
    return [
        float(np.mean(angles)),
        float(np.median(angles)),
        *(float(np.mean(angles < t)) for t in ANGLE_THRESHOLDS),
    ]


class MetricAccumulator:
    """Collects one epoch's evaluation batch by batch; ``compute()`` gives every metric."""

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = list(tasks)
        self.reset()

    def reset(self) -> None:
        self.batches = 0
        self.sums: dict[str, float] = {}
        self.confusion = {t.name: ConfusionMatrix(t.channels) for t in self.tasks if t.kind == "segmentation"}

    def _add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value

    def update(
        self,
        outputs: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        losses: Mapping[str, torch.Tensor | float] | None = None,
    ) -> None:
        """Add one batch: the network's ``outputs`` and the ``targets`` by task name, and
        optionally the batch's task losses."""
        self.batches += 1
        for task in self.tasks:
            out, target = outputs[task.name].detach(), targets[task.name]
            if task.kind == "segmentation":
                self.confusion[task.name].update(out.argmax(1), target)
                continue
            values = depth_errors(out, target) if task.kind == "depth" else normal_errors(out, target)
            names = metric_names(task)
            for name, value in zip(names, values, strict=True):
                self._add(name, value)
        for name, loss in (losses or {}).items():
            self._add(f"{name}_loss", float(loss))

    def compute(self) -> dict[str, float]:
        """Every metric of the epoch so far, keyed ``<task>_<metric>`` (and ``<task>_loss``)."""
        if self.batches == 0:
            raise ValueError("no batch was added")
        result: dict[str, float] = {}
        for task in self.tasks:
            if task.kind == "segmentation":
                miou, accuracy = self.confusion[task.name].miou_and_accuracy()
                result[f"{task.name}_miou"], result[f"{task.name}_pixacc"] = miou, accuracy
            else:
                for name in metric_names(task):
                    result[name] = self.sums[name] / self.batches
            if f"{task.name}_loss" in self.sums:
                result[f"{task.name}_loss"] = self.sums[f"{task.name}_loss"] / self.batches
        return result
