"""The interface every algorithm implements (DomainBed's ``Algorithm`` shape)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]


class Algorithm(nn.Module):
    """Trains a classifier one step at a time from one minibatch per training domain.

    An algorithm wraps any ``nn.Module`` that maps inputs to logits and any torch optimizer
    over its parameters; it owns neither. ``update`` does one training step and returns floats
    to log; ``predict`` gives logits. The algorithm's ``state_dict`` holds the network's
    weights and any state of its own (e.g. a noise generator); the optimizer's state is saved
    separately by whoever made it.

    Forward passes inside ``update`` go through ``self.autocast()``, so setting
    ``autocast_dtype`` (the runner sets it from ``precision.train``, see
    ``sage_bench.precision``) runs them in mixed precision; the default ``None`` runs in the
    parameters' own precision. Evaluation uses ``eval_autocast()`` and ``eval_autocast_dtype``
    (``precision.eval``) the same way.
    """

    autocast_dtype: torch.dtype | None = None
    eval_autocast_dtype: torch.dtype | None = None
    # True for algorithms that take a gradient at perturbed weights (the SAM family, SAGE):
    # their perturbation must survive the precision the forward pass computes in
    perturbs_weights: ClassVar[bool] = False
    # set by the runner before the steps whose statistics go into a record: algorithms that
    # perturb weights then also measure ``perturbation_fidelity`` (once, not on every step)
    measure_fidelity: bool = False

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, hparams: Mapping[str, Any]):
        super().__init__()
        self.network = network
        self.optimizer = optimizer
        self.hparams = dict(hparams)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for training forward passes when ``autocast_dtype`` is set, else nothing."""
        return self._autocast(self.autocast_dtype)

    def eval_autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for evaluation when ``eval_autocast_dtype`` is set, else nothing."""
        return self._autocast(self.eval_autocast_dtype)

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        device_type = next(self.network.parameters()).device.type
        return torch.autocast(device_type=device_type, dtype=dtype)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        """One training step on ``[(x_1, y_1), ..., (x_K, y_K)]``, one pair per training domain."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``."""
        return self.network(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)


def concat(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    """All domains' inputs and labels as one batch, domain after domain."""
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])
