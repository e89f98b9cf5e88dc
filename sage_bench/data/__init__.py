"""Data sets by name, DomainBed's per-environment splits, and loaders."""

from __future__ import annotations

from sage_bench.data.base import MultiDomainDataset
from sage_bench.data.digits import ColoredDigits, RotatedDigits
from sage_bench.data.domainbed import PACS, VLCS, DomainNet, OfficeHome, TerraIncognita
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


def num_environments(name: str) -> int:
    return len(get_dataset_class(name).ENVIRONMENTS)


__all__ = [
    "DATASETS",
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
