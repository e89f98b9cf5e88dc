"""Lists of tensors as one flat vector and back (the ``K x P`` matrices of multi-task solvers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def flatten(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """All tensors flattened and concatenated in order; a ``None`` entry counts as zeros shaped
    like the matching entry of ``like`` (e.g. the gradient of a parameter a loss does not use)."""
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            if like is None:
                raise ValueError("flatten got None without `like` to take its shape from")
            t = torch.zeros_like(like[i])
        parts.append(t.reshape(-1))
    return torch.cat(parts)


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``vector`` cut into tensors shaped like those of ``like`` (the inverse of ``flatten``)."""
    sizes = [t.numel() for t in like]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} elements, the tensors {sum(sizes)}")
    return [part.view_as(t) for part, t in zip(vector.split(sizes), like, strict=True)]
