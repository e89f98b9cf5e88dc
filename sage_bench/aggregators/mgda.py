"""MGDA: Sener and Koltun's min-norm point of the convex hull of the task gradients.

As the repositories of Table 2 run it (nash-mtl / FAMO / SAMO ``MGDA`` with ``params="shared"``,
``normalization="none"``, and ``MinNormSolver.find_min_norm_element``, which they take from
``intel-isl/MultiObjectiveOptimization``):

1. ``A_ij = <g_i, g_j>``. For every pair ``i < j`` (in order) the best point on the segment,
   ``gamma = (A_jj - A_ij) / (A_ii + A_jj - 2 A_ij)``, clamped to ``0.999`` when ``A_ij >= A_ii``
   and to ``0.001`` when ``A_ij >= A_jj`` (not to 1 and 0: a clamped pair keeps 0.1% of the other
   task); the pair with the smallest cost starts the search (``lambda_i = gamma``,
   ``lambda_j = 1 - gamma``). With two tasks that pair is the answer.
2. Otherwise projected gradient steps on the simplex: direction ``-A lambda`` projected onto the
   simplex's tangent space, step to the first face it hits (or 1), projection onto the simplex,
   then an exact line search between the old and new point with the same clamped two-point rule.
   It stops when the step changes ``lambda`` by less than ``1e-5`` in L1 norm and returns the
   iterate *before* that last step.

The shared direction is ``K sum_k lambda_k g_k`` (nash-mtl scales ``lambda`` by ``K`` "to make
sure it sums to n_tasks") and head ``k`` gets weight ``K lambda_k``.

Where this differs from the authors' code, on purpose:

- Their loop counter is never incremented, so their ``MAX_ITER = 250`` is not enforced and the
  loop only ends by the stopping rule; here it also ends after ``max_iter`` (default 10,000)
  steps with a warning, instead of hanging.
- They start the pair search with ``dmin = 1e8`` and fail (an unbound variable) when every pair
  costs more than that (squared gradient norms above 1e8); here the cheapest pair is taken.
- With a single task they fail the same way; here ``lambda = [1]``.
- ``A`` is summed in float64 over the whole gradient (``gram_matrix``); they sum per-tensor
  float32 dot products in Python floats. The difference is rounding of the inner products.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from sage_bench.aggregators import Row, register_aggregator
from sage_bench.aggregators.gram import gram_matrix

STOP_CRIT = 1e-5
MAX_ITER = 10_000


def _segment_min(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """``(gamma, cost)`` minimising ``|gamma x1 + (1 - gamma) x2|^2`` with the authors' clamps."""
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def _best_pair(gram: np.ndarray) -> tuple[int, int, float, float]:
    """The pair ``(i, j)`` whose segment holds the smallest-norm point, its gamma and cost."""
    best = None
    n = gram.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            gamma, cost = _segment_min(gram[i, i], gram[i, j], gram[j, j])
            if best is None or cost < best[3]:
                best = (i, j, gamma, cost)
    assert best is not None
    return best


def _project_to_simplex(y: np.ndarray) -> np.ndarray:
    """The Euclidean projection of ``y`` onto ``{z : sum z = 1, z >= 0}`` (sort-based)."""
    m = len(y)
    ordered = np.flip(np.sort(y), axis=0)
    running = 0.0
    threshold = (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        running += ordered[i]
        candidate = (running - 1) / (i + 1.0)
        if candidate > ordered[i + 1]:
            threshold = candidate
            break
    return np.maximum(y - threshold, np.zeros(y.shape))


def _next_point(current: np.ndarray, direction: np.ndarray, n: int) -> np.ndarray:
    """Step along ``direction`` (projected to sum zero) up to the first simplex face, then project."""
    tangent = direction - (np.sum(direction) / n)
    to_zero = -1.0 * current[tangent < 0] / tangent[tangent < 0]
    to_one = (1.0 - current[tangent > 0]) / (tangent[tangent > 0])
    t = 1
    if len(to_zero[to_zero > 1e-7]) > 0:
        t = np.min(to_zero[to_zero > 1e-7])
    if len(to_one[to_one > 1e-7]) > 0:
        t = min(t, np.min(to_one[to_one > 1e-7]))
    return _project_to_simplex(tangent * t + current)


def _quadratic(gram: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """``a^T A b`` summed term by term in the authors' loop order."""
    total = 0.0
    n = len(a)
    for i in range(n):
        for j in range(n):
            total += a[i] * b[j] * gram[i, j]
    return total


def min_norm_weights(gram: np.ndarray, max_iter: int = MAX_ITER, stop: str = "l1") -> np.ndarray:
    """Sener and Koltun's ``lambda`` (on the simplex) for the Gram matrix ``A`` of the gradients.

    ``stop="l1"``: the loop ends when ``sum |change| < 1e-5`` (the lineage's solver);
    ``"squared_l2"``: when ``sum change^2 < 1e-5`` (the torch copy in VietHoang1512/FS-MTL)."""
    if stop not in ("l1", "squared_l2"):
        raise ValueError(f"unknown stopping rule {stop!r}; valid choices: l1, squared_l2")
    gram = np.asarray(gram, dtype=np.float64)
    n = gram.shape[0]
    if n == 1:
        return np.ones(1)
    i, j, gamma, _ = _best_pair(gram)
    weights = np.zeros(n)
    weights[i] = gamma
    weights[j] = 1 - gamma
    if n < 3:
        return weights
    for _ in range(max_iter):
        candidate = _next_point(weights, -1.0 * np.dot(gram, weights), n)
        v1v1 = _quadratic(gram, weights, weights)
        v1v2 = _quadratic(gram, weights, candidate)
        v2v2 = _quadratic(gram, candidate, candidate)
        step, _ = _segment_min(v1v1, v1v2, v2v2)
        updated = step * weights + (1 - step) * candidate
        change = updated - weights
        if (np.sum(np.abs(change)) if stop == "l1" else np.sum(change**2)) < STOP_CRIT:
            return weights
        weights = updated
    warnings.warn(f"MGDA's min-norm search did not stop within {max_iter} steps", RuntimeWarning, stacklevel=2)
    return weights


@register_aggregator(
    "mgda",
    clip={"NYUv2": 0.0, "Cityscapes": 0.0},  # nash-mtl and FAMO never clip MGDA
    row=Row(
        "MGDA",
        tunable_clip=False,
        doc="MGDA: ``K`` times Sener and Koltun's min-norm combination; head ``k`` weight ``K lambda_k``; "
        "no clipping (nash-mtl / FAMO).",
    ),
)
def mgda(grads: torch.Tensor, losses: torch.Tensor, max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K sum_k lambda_k g_k, K lambda)`` with Sener and Koltun's min-norm ``lambda``."""
    k = grads.shape[0]
    weights = min_norm_weights(gram_matrix(grads).numpy(), max_iter) * k
    weights_t = torch.as_tensor(weights, dtype=grads.dtype, device=grads.device)
    return weights_t @ grads, weights_t
