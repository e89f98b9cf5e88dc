"""What a dense prediction task is: a name, a kind and the number of output channels."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("segmentation", "depth", "normal")
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


@dataclass(frozen=True)
class Task:
    """One task of a multi-task data set.

    ``kind`` fixes the head's output transform, the loss and the metrics (as in the MTAN
    lineage): ``segmentation`` (``channels`` classes, log-softmax, NLL with ignore index -1,
    mIoU and pixel accuracy), ``depth`` (1 channel, L1 over valid pixels, absolute and
    relative error) or ``normal`` (3 channels, L2-normalised, ``1 - cos``, angle statistics).
    """

    name: str
    kind: str
    channels: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; valid choices: {', '.join(KINDS)}")
        if self.kind == "depth" and self.channels != 1:
            raise ValueError(f"a depth task has 1 channel, got {self.channels}")
        if self.kind == "normal" and self.channels != 3:
            raise ValueError(f"a normal task has 3 channels, got {self.channels}")


def segmentation(classes: int, name: str = "seg") -> Task:
    return Task(name, "segmentation", classes)


def depth(name: str = "depth") -> Task:
    return Task(name, "depth", 1)


def normal(name: str = "normal") -> Task:
    return Task(name, "normal", 3)


def metric_suffixes(kind: str) -> list[str]:
    """The metrics of a task of ``kind``, in the lineage's order (Table 2's columns)."""
    if kind == "segmentation":
        return ["miou", "pixacc"]
    if kind == "depth":
        return ["abs_err", "rel_err"]
    if kind == "normal":
        return ["angle_mean", "angle_median", *(f"within_{t:g}" for t in ANGLE_THRESHOLDS)]
    raise ValueError(f"unknown task kind {kind!r}; valid choices: {', '.join(KINDS)}")


def metric_names(task: Task) -> list[str]:
    """The metric keys of ``task`` in the lineage's order (without its loss)."""
    return [f"{task.name}_{s}" for s in metric_suffixes(task.kind)]
