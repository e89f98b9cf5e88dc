"""Fixed gradient matrices and a linear multi-task problem that realises them.

``LinearTasks(G, b)`` has shared parameters ``theta`` (split into a vector and a matrix, so
code that walks parameter lists is exercised) and one scalar head ``h_k`` per task, with
``L_k = <G_k, theta> + h_k + b_k``. At the initial zeros ``L_k = b_k``, the shared gradient of
``L_k`` is exactly row ``k`` of ``G`` and the gradient of ``L_k`` on head ``j`` is ``[j == k]``:
after an authors' method writes ``.grad``, the shared gradient is its direction and head ``k``'s
gradient is its weight on task ``k``.
"""

from __future__ import annotations

import torch
from torch import nn

P = 7  # columns of every matrix: a vector of 3 and a 2 x 2 matrix


def _rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def matrices() -> dict[str, torch.Tensor]:
    """Named ``K x 7`` gradient matrices (float64): random and degenerate, K = 2 and 3."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(P, generator=gen, dtype=torch.float64)
    r = torch.randn(P, generator=gen, dtype=torch.float64)
    return {
        "random2": torch.randn(2, P, generator=gen, dtype=torch.float64),
        "random3": torch.randn(3, P, generator=gen, dtype=torch.float64),
        "conflicting3": _rows(
            [1.0, 0.5, -0.2, 0.3, 0.0, 0.1, -0.4],
            [-0.8, 0.2, 0.4, -0.5, 0.3, 0.0, 0.2],
            [0.1, -0.9, 0.3, 0.2, -0.6, 0.4, 0.0],
        ),
        "identical2": torch.stack([g, g]),
        "identical3": torch.stack([g, g, g]),
        "opposite2": torch.stack([g, -g]),
        "opposite3": torch.stack([g, -g, r]),
        "orthogonal2": _rows([2.0, 0, 0, 0, 0, 0, 0], [0, 0.5, 0, 0, 0, 0, 0]),
        "orthogonal3": _rows(
            [3.0, 0, 0, 0, 0, 0, 0], [0, 0, 0.2, 0, 0, 0, 0], [0, 0, 0, 0, 1.0, 1.0, 0]
        ),
        "zero_row3": torch.stack([g, torch.zeros(P, dtype=torch.float64), r]),
        "repeated3": torch.stack([g, r, r]),
        # projected against the other two, a row can end up in conflict with itself
        "self_conflict3": _rows(
            [0.0, -1.0, 0, 0, 0, 0, 0], [-2.0, 3.0, 0, 0, 0, 0, 0], [3.0, -2.0, 0, 0, 0, 0, 0]
        ),
    }


def loss_values(num_tasks: int) -> torch.Tensor:
    return torch.tensor([0.7, 1.3, 2.1][:num_tasks], dtype=torch.float64)


class LinearTasks(nn.Module):
    def __init__(self, grads: torch.Tensor, values: torch.Tensor):
        super().__init__()
        dtype = grads.dtype
        self.register_buffer("G", grads.clone())
        self.register_buffer("b", values.to(dtype).clone())
        self.vector = nn.Parameter(torch.zeros(3, dtype=dtype))
        self.matrix = nn.Parameter(torch.zeros(2, 2, dtype=dtype))
        self.heads = nn.ParameterList(
            [nn.Parameter(torch.zeros((), dtype=dtype)) for _ in range(grads.shape[0])]
        )

    def shared(self) -> list[nn.Parameter]:
        return [self.vector, self.matrix]

    def losses(self) -> torch.Tensor:
        theta = torch.cat([self.vector.flatten(), self.matrix.flatten()])
        return torch.stack(
            [self.G[k] @ theta + self.heads[k] + self.b[k] for k in range(len(self.b))]
        )

    def shared_grad(self) -> torch.Tensor:
        return torch.cat([p.grad.flatten() for p in self.shared()])

    def head_grads(self) -> torch.Tensor:
        return torch.stack([h.grad for h in self.heads])
