"""Base optimizers by name. Learning rate and weight decay come from the hyperparameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

OPTIMIZERS = {
    "adam": torch.optim.Adam,  # DomainBed's choice for every algorithm
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], hparams: dict[str, Any], **options: Any
) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name](params, lr=hparams['lr'], weight_decay=hparams['weight_decay'], **options)``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    trainable = [p for p in params if p.requires_grad]
    return OPTIMIZERS[name](
        trainable, lr=hparams["lr"], weight_decay=hparams.get("weight_decay", 0.0), **options
    )
