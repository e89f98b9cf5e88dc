"""The data set catalog: each data set's module and its environments or tasks, without torch.

``CATALOG`` is the one table of data sets; everything else here is derived from it, and
``sage_bench.data`` finds each class through its entry (the class of a data set is named as it
and defined in the entry's module).

Everything that only needs to know which data sets exist, what their environments or tasks are
called and which kind of job they make (the collector, the planner of a sweep, the
configuration) reads it here, so it starts without importing torch; the domain-generalization
classes take their ``ENVIRONMENTS`` from this table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    """One data set: the module that defines its class (a class named as the data set), and
    either its ``environments`` (a domain-generalization set; labels in DomainBed's order, the
    index of a label is the environment's index) or its ``tasks`` (a multi-task set; ``(name,
    kind)`` in the lineage's order, which the class's ``TASKS`` must match)."""

    module: str
    environments: tuple[str, ...] = ()
    tasks: tuple[tuple[str, str], ...] = ()


def domain_generalization(module: str, *environments: str) -> CatalogEntry:
    return CatalogEntry(module, environments=environments)


def multi_task(module: str, *tasks: tuple[str, str]) -> CatalogEntry:
    return CatalogEntry(module, tasks=tasks)


SEG, DEPTH, NORMAL = ("seg", "segmentation"), ("depth", "depth"), ("normal", "normal")

#: Every data set by name. Adding one: its module (a class named as the data set) and its entry
#: here; ``configs/dataset/<name>.yaml`` is optional (without it the ``dataset=`` group offers the
#: constructor's keyword defaults).
CATALOG: dict[str, CatalogEntry] = {
    "RotatedDigits": domain_generalization("sage_bench.data.digits", "0", "15", "30", "45", "60", "75"),
    "ColoredDigits": domain_generalization("sage_bench.data.digits", "+90%", "+80%", "-90%"),
    "PACS": domain_generalization("sage_bench.data.domainbed", "A", "C", "P", "S"),
    "VLCS": domain_generalization("sage_bench.data.domainbed", "C", "L", "S", "V"),
    "OfficeHome": domain_generalization("sage_bench.data.domainbed", "A", "C", "P", "R"),
    "TerraIncognita": domain_generalization("sage_bench.data.domainbed", "L100", "L38", "L43", "L46"),
    "DomainNet": domain_generalization("sage_bench.data.domainbed", "clip", "info", "paint", "quick", "real", "sketch"),
    "DigitScenes": multi_task("sage_bench.data.digit_scenes", SEG, DEPTH, NORMAL),
    "DigitScenes2": multi_task("sage_bench.data.digit_scenes", SEG, DEPTH),
    "NYUv2": multi_task("sage_bench.data.nyuv2", SEG, DEPTH, NORMAL),
    "Cityscapes": multi_task("sage_bench.data.nyuv2", SEG, DEPTH),
}

# Derived views, read without torch (the collector, the planner, the configuration).

# name -> environment labels in DomainBed's order (the index of a label is the environment's index)
ENVIRONMENTS: dict[str, list[str]] = {n: list(e.environments) for n, e in CATALOG.items() if e.environments}

DATASET_NAMES: list[str] = list(ENVIRONMENTS)  # registry order

# Multi-task data sets: name -> their tasks as (name, kind), in the lineage's order (the data set
# classes' ``TASKS`` agree; ``tests/test_collect_without_torch.py`` checks)
MULTITASK_TASKS: dict[str, tuple[tuple[str, str], ...]] = {n: e.tasks for n, e in CATALOG.items() if e.tasks}

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
