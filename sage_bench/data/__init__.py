"""Data sets by name (DomainBed's multi-domain sets; the multi-task sets), DomainBed's
per-environment splits, and loaders.

The data set classes, and with them torch, are imported on first use, from the module each
data set's entry in ``sage_bench.data.catalog.CATALOG`` names: the catalog (names, modules,
environment labels, tasks) must stay readable without torch, as the collector reads it. Adding a
data set is its module (a class named as the data set), its catalog entry and, for the
``dataset=`` config group, ``configs/dataset/<name>.yaml``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sage_bench.data.catalog import (
    ALL_DATASET_NAMES,
    CATALOG,
    DATASET_NAMES,
    ENVIRONMENTS,
    MULTITASK_DATASET_NAMES,
    dataset_task,
)
from sage_bench.errors import UserError

if TYPE_CHECKING:
    from sage_bench.data.base import MultiDomainDataset
    from sage_bench.data.multitask import MultiTaskDataset

# the base classes, which are no data sets, by the module that defines them
_BASES = {"MultiDomainDataset": "sage_bench.data.base", "MultiTaskDataset": "sage_bench.data.multitask"}


def _class(name: str) -> Any:
    """The class ``name``: a data set's (from the module its catalog entry names) or a base class."""
    module = CATALOG[name].module if name in CATALOG else _BASES[name]
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str) -> Any:
    if name == "DATASETS":  # name -> class, in the catalog's order
        return {n: _class(n) for n in DATASET_NAMES}
    if name == "MULTITASK_DATASETS":  # name -> class
        return {n: _class(n) for n in MULTITASK_DATASET_NAMES}
    if name in CATALOG or name in _BASES:
        return _class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UnknownDatasetError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _check_name(name: str) -> None:
    if dataset_task(name) is None:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; valid choices: {', '.join(sorted(ALL_DATASET_NAMES))}"
        )


def get_dataset_class(name: str) -> type[MultiDomainDataset] | type[MultiTaskDataset]:
    """The class registered under ``name`` (a domain-generalization or a multi-task data set,
    ``sage_bench.data.catalog.dataset_task`` says which), or an error listing the valid names."""
    _check_name(name)
    return _class(name)


def get_multitask_dataset_class(name: str) -> type[MultiTaskDataset]:
    """The multi-task data set registered under ``name``, or an error listing the valid names."""
    if name not in MULTITASK_DATASET_NAMES:
        raise UnknownDatasetError(
            f"unknown multi-task dataset {name!r}; valid choices: {', '.join(MULTITASK_DATASET_NAMES)}"
        )
    return _class(name)


def num_environments(name: str) -> int:
    """How many environments the domain-generalization data set ``name`` has (without
    importing torch)."""
    if name not in ENVIRONMENTS:
        raise UnknownDatasetError(
            f"unknown domain-generalization dataset {name!r}; valid choices: {', '.join(sorted(DATASET_NAMES))}"
        )
    return len(ENVIRONMENTS[name])


__all__ = [
    "ALL_DATASET_NAMES",
    "CATALOG",
    "DATASETS",
    "DATASET_NAMES",
    "MULTITASK_DATASET_NAMES",
    "ENVIRONMENTS",
    "MULTITASK_DATASETS",
    "Cityscapes",
    "DigitScenes",
    "DigitScenes2",
    "MultiTaskDataset",
    "NYUv2",
    "get_multitask_dataset_class",
    "PACS",
    "VLCS",
    "ColoredDigits",
    "DomainNet",
    "MultiDomainDataset",
    "OfficeHome",
    "RotatedDigits",
    "TerraIncognita",
    "dataset_task",
    "get_dataset_class",
    "num_environments",
]
