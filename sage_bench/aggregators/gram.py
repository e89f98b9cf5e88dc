"""Inner products of the rows of a ``K x P`` gradient matrix, accumulated in float64."""

from __future__ import annotations

import torch

CHUNK = 1 << 22  # columns per float64 block: bounds the extra memory for large networks


def gram_matrix(grads: torch.Tensor) -> torch.Tensor:
    """``A = G G^T`` as a float64 ``K x K`` tensor on the CPU, computed pair by pair with
    ``torch.dot`` over float64 blocks of columns, so that equal rows give bit-equal entries
    (``A_ij == A_ii`` when ``g_i == g_j``, which the min-norm solver's ``>=`` tests rely on), a
    matrix of fewer than ``CHUNK`` columns gives exactly the authors' ``torch.dot`` values, and
    the extra memory stays small."""
    k = grads.shape[0]
    gram = torch.zeros(k, k, dtype=torch.float64)
    for block in grads.split(CHUNK, dim=1):
        # fresh (aligned) copies: torch.dot's rounding depends on the alignment of its inputs,
        # so two equal rows at different offsets of one matrix could give different products
        rows = [block[i].to(torch.float64, copy=True) for i in range(k)]
        for i in range(k):
            for j in range(i, k):
                gram[i, j] += torch.dot(rows[i], rows[j]).item()
    return gram.triu() + gram.triu(1).T
