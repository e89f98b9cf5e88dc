"""Nash-MTL against a transcription of nash-mtl's ``NashMTL`` (cvxpy + ECOS).

Skipped, with the reason printed, only where cvxpy or ECOS cannot be imported: they are the
optional ``mtl`` extra, which the ``test`` extra installs.
"""

from __future__ import annotations

import builtins
import io

import numpy as np
import pytest
import torch

from sage_bench.aggregators import aggregate
from sage_bench.aggregators.nashmtl import MissingSolverError
from tests.helpers.mtl_problems import LinearTasks, loss_values, matrices
from tests.reference import mtl_solvers as ref

cp = pytest.importorskip("cvxpy", reason="cvxpy is not installed (pip install -e '.[mtl]')")
pytest.importorskip("ecos", reason="ECOS is not installed (pip install -e '.[mtl]')")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

MATRICES = matrices()


def run_reference(reference: ref.NashMTL, model: LinearTasks) -> tuple[torch.Tensor, torch.Tensor]:
    for p in [*model.shared(), *model.heads]:
        p.grad = None
    reference.backward(model.losses(), model.shared())
    return model.shared_grad(), model.head_grads()


@pytest.mark.parametrize("name", sorted(MATRICES))
def test_first_step_matches_the_authors_code(name):
    model = LinearTasks(MATRICES[name], loss_values(MATRICES[name].shape[0]))
    direction_ref, heads_ref = run_reference(ref.NashMTL(model.G.shape[0], max_norm=0.0), model)
    state: dict = {}
    direction, weights = aggregate("nashmtl", model.G, model.b, state=state)
    torch.testing.assert_close(direction, direction_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(weights, heads_ref, rtol=1e-9, atol=1e-12)
    assert state["step"] == 1


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_warm_started_steps_match_the_authors_code(num_tasks):
    """Five steps on changing gradients, one of them infeasible (opposite rows), so the warm
    start and the kept weights both matter."""
    gen = torch.Generator().manual_seed(num_tasks)
    base = torch.randn(num_tasks, 7, generator=gen, dtype=torch.float64)
    opposite = MATRICES["opposite3"][:num_tasks] if num_tasks == 3 else MATRICES["opposite2"]
    sequence = [base, base + 0.3 * torch.randn(base.shape, generator=gen, dtype=base.dtype), opposite,
                2 * base, base.flip(0)]  # fmt: skip
    model = LinearTasks(base, loss_values(num_tasks))
    reference = ref.NashMTL(num_tasks, max_norm=0.0)
    state: dict = {}
    previous = None
    for step, grads in enumerate(sequence):
        model.G.copy_(grads)
        direction_ref, heads_ref = run_reference(reference, model)
        direction, weights = aggregate("nashmtl", grads, model.b, state=state)
        torch.testing.assert_close(direction, direction_ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(weights, heads_ref, rtol=1e-9, atol=1e-12)
        if step == 2 and num_tasks == 2:  # ECOS refuses the data: the previous weights stay
            assert torch.equal(weights, previous)
        previous = weights


def test_weights_balance_the_tasks():
    """``alpha_k (G G^T alpha)_k ~ 1``, so the direction's squared norm is about K."""
    grads = MATRICES["random3"]
    direction, alpha = aggregate("nashmtl", grads, torch.ones(3), state={})
    balance = alpha * (grads @ grads.T @ alpha)
    np.testing.assert_allclose(balance.numpy(), np.ones(3), atol=1e-3)
    assert abs(direction.norm().item() - 3**0.5) < 1e-3


def test_update_weights_every_reuses_the_weights():
    model = LinearTasks(MATRICES["random3"], loss_values(3))
    reference = ref.NashMTL(3, update_weights_every=2, max_norm=0.0)
    state: dict = {}
    first = None
    for step, scale in enumerate([1.0, 3.0, 0.5]):
        model.G.copy_(MATRICES["random3"] * scale + 0.1 * step)
        direction_ref, heads_ref = run_reference(reference, model)
        direction, weights = aggregate(
            "nashmtl", model.G, model.b, state=state, update_weights_every=2
        )
        torch.testing.assert_close(weights, heads_ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(direction, direction_ref, rtol=1e-9, atol=1e-12)
        if step == 0:
            first = state["alpha"].clone()
        elif step == 1:  # reused
            assert torch.equal(state["alpha"], first)
        else:  # re-solved
            assert not torch.equal(state["alpha"], first)


def test_failing_solves_keep_the_previous_weights(monkeypatch):
    grads = MATRICES["random3"]
    state: dict = {}
    _, first = aggregate("nashmtl", grads, torch.ones(3), state=state)

    def fail(self, *args, **kwargs):
        raise cp.error.SolverError("Solver 'ECOS' failed.")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    direction, weights = aggregate("nashmtl", 2 * grads + 1, torch.ones(3), state=state)
    assert torch.equal(weights, first)
    torch.testing.assert_close(direction, first @ (2 * grads + 1))


def test_all_zero_gradients_keep_the_previous_weights():
    state: dict = {}
    _, first = aggregate("nashmtl", MATRICES["random2"], torch.ones(2), state=state)
    direction, weights = aggregate(
        "nashmtl", torch.zeros(2, 7, dtype=torch.float64), torch.ones(2), state=state
    )
    assert torch.equal(weights, first)
    assert torch.equal(direction, torch.zeros(7, dtype=torch.float64))
    with pytest.raises(ValueError, match="not finite"):
        aggregate("nashmtl", torch.full((2, 7), float("nan")), torch.ones(2), state={})


def test_state_resumes_identically():
    gen = torch.Generator().manual_seed(5)
    sequence = [torch.randn(3, 7, generator=gen, dtype=torch.float64) for _ in range(4)]
    straight: dict = {}
    expected = [aggregate("nashmtl", g, torch.ones(3), state=straight)[0] for g in sequence]
    first: dict = {}
    for g in sequence[:2]:
        aggregate("nashmtl", g, torch.ones(3), state=first)
    buffer = io.BytesIO()
    torch.save(first, buffer)
    buffer.seek(0)
    resumed = torch.load(buffer, weights_only=True)
    for g, want in zip(sequence[2:], expected[2:], strict=True):
        assert torch.equal(aggregate("nashmtl", g, torch.ones(3), state=resumed)[0], want)


def test_missing_cvxpy_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_cvxpy(name, *args, **kwargs):
        if name == "cvxpy":
            raise ImportError("No module named 'cvxpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cvxpy)
    with pytest.raises(MissingSolverError, match=r"pip install -e '\.\[mtl\]'"):
        aggregate("nashmtl", MATRICES["random2"], torch.ones(2), state={})
