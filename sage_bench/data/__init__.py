"""Data sets by name (DomainBed's multi-domain sets; the multi-task sets), DomainBed's
per-environment splits, and loaders.

The data set classes, and with them torch, are imported on first use: ``sage_bench.data.catalog``
(names and environment labels) must stay readable without torch, as the collector reads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sage_bench.data.catalog import (
    ALL_DATASET_NAMES,
    DATASET_NAMES,
    ENVIRONMENTS,
    MULTITASK_DATASET_NAMES,
    dataset_task,
)
from sage_bench.errors import UserError

if TYPE_CHECKING:
    from sage_bench.data.base import MultiDomainDataset
    from sage_bench.data.multitask import MultiTaskDataset

# class name -> the module that defines it
_MODULES = {
    "MultiDomainDataset": "sage_bench.data.base",
    "RotatedDigits": "sage_bench.data.digits",
    "ColoredDigits": "sage_bench.data.digits",
    "PACS": "sage_bench.data.domainbed",
    "VLCS": "sage_bench.data.domainbed",
    "OfficeHome": "sage_bench.data.domainbed",
    "TerraIncognita": "sage_bench.data.domainbed",
    "DomainNet": "sage_bench.data.domainbed",
    "MultiTaskDataset": "sage_bench.data.multitask",
    "DigitScenes": "sage_bench.data.digit_scenes",
    "DigitScenes2": "sage_bench.data.digit_scenes",
    "NYUv2": "sage_bench.data.nyuv2",
    "Cityscapes": "sage_bench.data.nyuv2",
}


def __getattr__(name: str) -> Any:
    if name == "DATASETS":  # name -> class, in the catalog's order
        return {n: getattr(importlib.import_module(_MODULES[n]), n) for n in DATASET_NAMES}
    if name == "MULTITASK_DATASETS":  # name -> class
        return {n: getattr(importlib.import_module(_MODULES[n]), n) for n in MULTITASK_DATASET_NAMES}
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
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
    return getattr(importlib.import_module(_MODULES[name]), name)


def get_multitask_dataset_class(name: str) -> type[MultiTaskDataset]:
    """The multi-task data set registered under ``name``, or an error listing the valid names."""
    if name not in MULTITASK_DATASET_NAMES:
        raise UnknownDatasetError(
            f"unknown multi-task dataset {name!r}; valid choices: {', '.join(MULTITASK_DATASET_NAMES)}"
        )
    return getattr(importlib.import_module(_MODULES[name]), name)


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
