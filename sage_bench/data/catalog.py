"""The registered data sets' names, environment labels and tasks, without torch.

Everything that only needs to know which data sets exist, what their environments or tasks are
called and which kind of job they make (the collector, the planner of a sweep, the
configuration) reads it here, so it starts without importing torch; the domain-generalization
classes take their ``ENVIRONMENTS`` from this table.
"""

from __future__ import annotations

# name -> environment labels in DomainBed's order (the index of a label is the environment's index)
ENVIRONMENTS: dict[str, list[str]] = {
    "RotatedDigits": ["0", "15", "30", "45", "60", "75"],
    "ColoredDigits": ["+90%", "+80%", "-90%"],
    "PACS": ["A", "C", "P", "S"],
    "VLCS": ["C", "L", "S", "V"],
    "OfficeHome": ["A", "C", "P", "R"],
    "TerraIncognita": ["L100", "L38", "L43", "L46"],
    "DomainNet": ["clip", "info", "paint", "quick", "real", "sketch"],
}

DATASET_NAMES: list[str] = list(ENVIRONMENTS)  # registry order

# Multi-task data sets: name -> their tasks as (name, kind), in the lineage's order (the data set
# classes' ``TASKS`` agree; ``tests/test_collect_without_torch.py`` checks)
MULTITASK_TASKS: dict[str, tuple[tuple[str, str], ...]] = {
    "DigitScenes": (("seg", "segmentation"), ("depth", "depth"), ("normal", "normal")),
    "DigitScenes2": (("seg", "segmentation"), ("depth", "depth")),
    "NYUv2": (("seg", "segmentation"), ("depth", "depth"), ("normal", "normal")),
    "Cityscapes": (("seg", "segmentation"), ("depth", "depth")),
}

# Generated multi-task data sets: name -> the version of their generator (``MultiTaskDataset.VERSION``).
# Raised whenever the generated data change: it enters the identity and the records of every job on
# them, and the collector leaves out runs of another version. DigitScenes 2: the scenes of the
# three-colour lights and the lamp at the camera (version 1: haze over a random background colour).
DATA_VERSIONS: dict[str, int] = {"DigitScenes": 2, "DigitScenes2": 2}

MULTITASK_DATASET_NAMES: list[str] = list(MULTITASK_TASKS)
ALL_DATASET_NAMES: list[str] = DATASET_NAMES + MULTITASK_DATASET_NAMES


def dataset_task(name: str) -> str | None:
    """The kind of job a data set makes (``records.DOMAIN_GENERALIZATION`` or
    ``records.MULTI_TASK``); ``None`` for an unknown name."""
    from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK

    if name in ENVIRONMENTS:
        return DOMAIN_GENERALIZATION
    if name in MULTITASK_TASKS:
        return MULTI_TASK
    return None
