"""LS, MGDA and FairGrad against literal transcriptions of their authors' code (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_bench.aggregators import AGGREGATORS, UnknownAggregatorError
from sage_bench.aggregators.fairgrad import fairgrad_weights
from sage_bench.aggregators.gram import gram_matrix
from sage_bench.aggregators.mgda import min_norm_weights
from sage_bench.mtl import aggregate
from tests.reference import mtl as ref

P = 7


def _matrix(kind: str, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(k, P, generator=g, dtype=torch.float64)
    if kind == "identical":
        return torch.randn(1, P, generator=g, dtype=torch.float64).repeat(k, 1)
    if kind == "opposite":  # rows alternate between g and -g (scaled)
        row = torch.randn(P, generator=g, dtype=torch.float64)
        return torch.stack([(-1) ** i * (1 + 0.5 * i) * row for i in range(k)])
    if kind == "orthogonal":  # orthogonal rows of different lengths
        q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
        return q[:k] * torch.arange(1, k + 1, dtype=torch.float64)[:, None]
    if kind == "scaled":  # random rows of very different norms
        return torch.randn(k, P, generator=g, dtype=torch.float64) * torch.logspace(-2, 1, k, dtype=torch.float64)[:, None]
    raise ValueError(kind)


KINDS = ["random", "identical", "opposite", "orthogonal", "scaled"]


def _rows_as_param_lists(grads: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each row cut into two 'parameters' (a 2x2 matrix and a vector), as the authors' lists."""
    return [[row[:4].reshape(2, 2), row[4:]] for row in grads]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _close(a, b, tol=1e-10):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    scale = max(1.0, b.abs().max().item())
    assert torch.allclose(a, b, rtol=0, atol=tol * scale), f"max diff {(a - b).abs().max().item():.3e}"


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_ls_is_the_sum(kind, k):
    grads = _matrix(kind, k)
    direction, weights = aggregate("ls", grads, torch.ones(k))
    shared, heads = ref.linear_scalarization(_rows_as_param_lists(grads))
    _close(direction, _flat(shared))
    assert weights is None and heads == [1.0] * k


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mgda_matches_sener_koltun_solver(kind, k, seed):
    grads = _matrix(kind, k, seed)
    direction, weights = aggregate("mgda", grads, torch.ones(k))
    # one tensor per row, so both sides form the same torch.dot inner products: several of
    # these matrices tie between pairs up to rounding (opposite rows: two pairs of cost 0)
    shared, heads = ref.mgda([[row] for row in grads])
    _close(direction, _flat(shared))
    _close(weights, heads)
    assert weights.sum().item() == pytest.approx(k)  # K times a point of the simplex


def test_mgda_clamps_as_the_authors():
    """Identical rows hit the ``v1v2 >= v1v1`` branch: gamma 0.999, not 1 (an exact QP gives 1/2, 1/2
    or any split); two rows where one dominates give 0.001."""
    grads = _matrix("identical", 2)
    _, weights = aggregate("mgda", grads, torch.ones(2))
    assert weights.tolist() == pytest.approx([2 * 0.999, 2 * 0.001])
    small_first = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    _, weights = aggregate("mgda", small_first, torch.ones(2))
    assert weights.tolist() == pytest.approx([2 * 0.999, 2 * 0.001])
    small_second = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    _, weights = aggregate("mgda", small_second, torch.ones(2))
    assert weights.tolist() == pytest.approx([2 * 0.001, 2 * 0.999])


def test_mgda_min_norm_point_is_nearly_optimal():
    """On random rows the solver lands within its tolerance of the exact min-norm point."""
    grads = _matrix("random", 4, seed=5)
    gram = (grads @ grads.T).numpy()
    lam = min_norm_weights(gram)
    # exact answer by brute force on a fine simplex grid is too slow; check KKT instead:
    # every active task's (A lam)_k equals the minimum, inactive ones are larger
    a_lam = gram @ lam
    active = lam > 1e-6
    assert np.ptp(a_lam[active]) < 1e-3 * np.abs(a_lam).max()
    assert np.all(a_lam[~active] >= a_lam[active].min() - 1e-6)


def test_mgda_single_task_and_huge_gradients():
    """The authors' code fails in both cases (an unbound variable); here they work."""
    one = torch.randn(1, 5, dtype=torch.float64)
    direction, weights = aggregate("mgda", one, torch.ones(1))
    _close(direction, one[0])
    assert weights.tolist() == [1.0]
    huge = _matrix("random", 3) * 1e6
    direction, weights = aggregate("mgda", huge, torch.ones(3))
    assert torch.isfinite(direction).all() and weights.sum().item() == pytest.approx(3)


@pytest.mark.parametrize("residual", ["fairgrad", "samo"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_fairgrad_matches_authors(kind, k, alpha, residual):
    grads = _matrix(kind, k, seed=3)
    direction, weights = aggregate("fairgrad", grads, torch.ones(k), alpha=alpha, residual=residual)
    assert weights is None
    # the solver on the same A: the authors' least_squares call, to the last bits
    gram = gram_matrix(grads).numpy()
    w = ref.fairgrad_w(gram, alpha, residual)
    assert np.allclose(fairgrad_weights(gram, alpha, residual), w, rtol=0, atol=1e-12)
    _close(direction, k * torch.as_tensor(w) @ grads)
    if kind in ("identical", "opposite"):
        return  # A is singular, the equation has no root: where least squares stops moves with A's last bit
    # the whole path from the authors' P x K matrix (their A comes from mm, so it differs in the
    # last bits, and least squares stops within its tolerance xtol = 1e-8 of a different point)
    shared, heads = ref.fairgrad(_rows_as_param_lists(grads), alpha=alpha, residual=residual)
    _close(direction, _flat(shared), tol=1e-7)
    assert heads == [1.0] * k


def test_fairgrad_solves_its_equation_and_scales_by_k():
    grads = _matrix("random", 3, seed=4)
    gram = (grads @ grads.T).numpy()
    w = fairgrad_weights(gram, alpha=2.0)
    assert np.allclose(gram @ w, (1 / w) ** 0.5, atol=1e-6)
    direction, _ = aggregate("fairgrad", grads, torch.ones(3), alpha=2.0)
    _close(direction, 3 * torch.as_tensor(w) @ grads)


def test_registry_and_errors():
    assert {"ls", "mgda", "fairgrad"} <= set(AGGREGATORS)
    with pytest.raises(UnknownAggregatorError, match="valid choices:.*fairgrad.*ls.*mgda"):
        aggregate("nope", torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="K x P"):
        aggregate("ls", torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="unknown FairGrad residual"):
        aggregate("fairgrad", torch.eye(2, dtype=torch.float64), torch.ones(2), residual="x")


def test_float32_gradients_stay_float32():
    grads = _matrix("random", 3).float()
    for name in ("ls", "mgda", "fairgrad"):
        direction, weights = aggregate(name, grads, torch.ones(3))
        assert direction.dtype == torch.float32
        assert weights is None or weights.dtype == torch.float32
