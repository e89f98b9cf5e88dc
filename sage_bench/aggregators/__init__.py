"""Multi-task gradient aggregators: pure functions of the per-task gradient matrix.

An aggregator combines the ``K x P`` matrix ``grads`` of per-task gradients of the shared
parameters (row ``k`` is task ``k``'s gradient, flattened) and the ``K`` task losses into the
gradient the optimizer receives for the shared parameters, *before any clipping*, with the scale
factor of its authors' code (e.g. LS sums the rows, MGDA returns ``K`` times the min-norm
combination). It returns ``(direction, weights)``: ``direction`` has shape ``(P,)``;
``weights`` has shape ``(K,)`` and is the coefficient each task's *head* gradient gets (``None``
where the method has none).

Aggregators never touch a network or ``.grad``; they are testable on 3 x 5 matrices and usable
outside the framework::

    from sage_bench.mtl import aggregate
    direction, weights = aggregate("mgda", grads, losses)

Keyword arguments are the method's hyperparameters (e.g. ``alpha`` for ``fairgrad``). Methods
with state between steps (a warm start) read and update the mutable mapping ``state`` that the
caller keeps (and checkpoints); methods that draw random numbers take a ``generator`` (a
``torch.Generator``) or values injected by the caller so a test can replay the authors' draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from sage_bench.errors import UserError


class Aggregator(Protocol):
    def __call__(
        self, grads: torch.Tensor, losses: torch.Tensor, **hparams: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


AGGREGATORS: dict[str, Aggregator] = {}


class UnknownAggregatorError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_aggregator(name: str) -> Callable[[Aggregator], Aggregator]:
    """Register ``fn`` under ``name`` (lower case, as ``aggregate`` is called)."""

    def register(fn: Aggregator) -> Aggregator:
        if name in AGGREGATORS:
            raise ValueError(f"aggregator {name!r} is registered twice")
        AGGREGATORS[name] = fn
        return fn

    return register


def aggregate(
    method: str, grads: torch.Tensor, losses: torch.Tensor, **hparams: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(direction, weights)`` of aggregator ``method`` for the ``K x P`` matrix ``grads``."""
    if method not in AGGREGATORS:
        raise UnknownAggregatorError(
            f"unknown aggregator {method!r}; valid choices: {', '.join(sorted(AGGREGATORS))}"
        )
    if grads.ndim != 2:
        raise ValueError(f"grads must be a K x P matrix, got shape {tuple(grads.shape)}")
    if losses.shape != (grads.shape[0],):
        raise ValueError(f"losses must have shape ({grads.shape[0]},), got {tuple(losses.shape)}")
    return AGGREGATORS[method](grads, losses, **hparams)


# The methods register themselves on import (one module each).
from sage_bench.aggregators import (  # noqa: E402, F401
    cagrad,
    fairgrad,
    graddrop,
    imtl,
    ls,
    mgda,
    moco,
    nashmtl,
    pcgrad,
    weighting,
)

__all__ = ["AGGREGATORS", "Aggregator", "aggregate", "register_aggregator"]
