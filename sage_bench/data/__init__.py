"""Data sets by name (DomainBed's multi-domain sets; the multi-task sets), DomainBed's
per-environment splits, and loaders."""

from __future__ import annotations

from sage_bench.data.base import MultiDomainDataset
from sage_bench.data.digit_scenes import DigitScenes, DigitScenes2
from sage_bench.data.digits import ColoredDigits, RotatedDigits
from sage_bench.data.domainbed import PACS, VLCS, DomainNet, OfficeHome, TerraIncognita
from sage_bench.data.multitask import MultiTaskDataset
from sage_bench.data.nyuv2 import Cityscapes, NYUv2
from sage_bench.errors import UserError

DATASETS: dict[str, type[MultiDomainDataset]] = {
    "RotatedDigits": RotatedDigits,
    "ColoredDigits": ColoredDigits,
    "PACS": PACS,
    "VLCS": VLCS,
    "OfficeHome": OfficeHome,
    "TerraIncognita": TerraIncognita,
    "DomainNet": DomainNet,
}


MULTITASK_DATASETS: dict[str, type[MultiTaskDataset]] = {
    "DigitScenes": DigitScenes,
    "DigitScenes2": DigitScenes2,
    "NYUv2": NYUv2,
    "Cityscapes": Cityscapes,
}


class UnknownDatasetError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def get_dataset_class(name: str) -> type[MultiDomainDataset]:
    """The class registered under ``name``, or an error listing the valid names."""
    if name not in DATASETS:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; valid choices: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


def get_multitask_dataset_class(name: str) -> type[MultiTaskDataset]:
    """The multi-task data set registered under ``name``, or an error listing the valid names."""
    if name not in MULTITASK_DATASETS:
        raise UnknownDatasetError(
            f"unknown multi-task dataset {name!r}; valid choices: {', '.join(MULTITASK_DATASETS)}"
        )
    return MULTITASK_DATASETS[name]


def num_environments(name: str) -> int:
    return len(get_dataset_class(name).ENVIRONMENTS)


__all__ = [
    "DATASETS",
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
    "get_dataset_class",
    "num_environments",
]
