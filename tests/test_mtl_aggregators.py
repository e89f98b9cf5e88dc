"""The gradient-manipulating aggregators against transcriptions of their authors' code.

Every case runs the transcription (``tests/reference/mtl_solvers.py``) on ``LinearTasks``, whose per-task
shared gradients are the rows of a fixed matrix, and compares the shared gradient it writes with
``aggregate``'s direction and the head gradients with its weights.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from sage_bench.aggregators import SOURCE_MAX_NORM, aggregate, source_max_norm
from sage_bench.aggregators.cagrad import cagrad_weights
from sage_bench.aggregators.graddrop import graddrop_mask
from sage_bench.aggregators.pcgrad import draw_orders, project_conflicting
from sage_bench.errors import UserError
from tests.helpers.mtl_problems import LinearTasks, loss_values, matrices
from tests.reference import mtl_solvers as ref

pytestmark = pytest.mark.filterwarnings("ignore:To copy construct")  # the authors' IMTL-G

MATRICES = matrices()
NAMES = sorted(MATRICES)


def problem(name: str, dtype: torch.dtype = torch.float64) -> LinearTasks:
    grads = MATRICES[name].to(dtype)
    return LinearTasks(grads, loss_values(grads.shape[0]))


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(
        actual, expected.to(actual.dtype), rtol=tol, atol=tol, equal_nan=True
    )


# -- PCGrad ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_pcgrad_matches_the_authors_code_with_their_draws(name):
    model = problem(name)
    random.seed(123)
    ref.PCGrad(model.G.shape[0]).backward(model.losses(), model.shared(), list(model.heads))
    after = random.random()

    random.seed(123)  # the global generator, as the authors' code
    direction, weights = aggregate("pcgrad", model.G, model.b)
    assert random.random() == after  # the same numbers were consumed
    close(direction, model.shared_grad(), 1e-12)
    close(weights, model.head_grads(), 0)

    replay = aggregate(
        "pcgrad", model.G, model.b, orders=draw_orders(model.G.shape[0], random.Random(123))
    )
    seeded = aggregate("pcgrad", model.G, model.b, generator=random.Random(123))
    close(replay[0], model.shared_grad(), 1e-12)
    close(seeded[0], model.shared_grad(), 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_pcgrad_projects_against_the_task_itself_as_the_authors_code(seed):
    """The authors' order includes task ``i`` itself; after two projections ``g_i^PC`` can
    conflict with ``g_i``, and then it is projected against it too."""
    model = problem("self_conflict3")
    random.seed(seed)
    ref.PCGrad(3).backward(model.losses(), model.shared(), list(model.heads))
    random.seed(seed)
    close(aggregate("pcgrad", model.G, model.b)[0], model.shared_grad(), 1e-12)


def test_pcgrad_projection_by_hand():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    grads = torch.stack([g1, g2])
    projected = project_conflicting(grads, [[0, 1], [1, 0]])
    # <g1, g2> = -1: g1 - (-1/2) g2 = (0.5, 0.5); g2 - (-1/1) g1 = (0, 1)
    close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]), 1e-7)
    # opposite gradients cancel whatever the order
    opposite = torch.stack([g1, -g1])
    for orders in ([[0, 1], [0, 1]], [[1, 0], [1, 0]]):
        close(aggregate("pcgrad", opposite, torch.ones(2), orders=orders)[0], torch.zeros(2), 0)


def test_pcgrad_orders_are_checked():
    with pytest.raises(ValueError, match="permutations"):
        aggregate("pcgrad", torch.ones(2, 3), torch.ones(2), orders=[[0, 0], [1, 0]])


# -- GradDrop --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_graddrop_matches_the_authors_code_with_their_draws(name):
    model = problem(name, torch.float32)  # the authors' buffer is float32
    torch.manual_seed(7)
    ref.GradDrop(model.G.shape[0]).backward(model.losses(), model.shared())
    direction, weights = aggregate(
        "graddrop", model.G, model.b, generator=torch.Generator().manual_seed(7)
    )
    close(direction, model.shared_grad(), 1e-6)
    torch.manual_seed(7)
    global_draws = aggregate("graddrop", model.G, model.b)
    close(global_draws[0], model.shared_grad(), 1e-6)
    close(weights, torch.ones(model.G.shape[0]), 0)


def test_graddrop_injected_draws_decide_the_sign():
    # sign purity: 1 for coordinate 0, 0.5 for coordinate 1
    grads = torch.tensor([[1.0, -2.0], [3.0, 2.0]])
    keep_positive = graddrop_mask(grads, torch.tensor([0.5, 0.25]))
    close(keep_positive, torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 0)
    keep_negative = graddrop_mask(grads, torch.tensor([0.5, 0.75]))
    close(keep_negative, torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 0)
    tie = graddrop_mask(grads, torch.tensor([0.5, 0.5]))  # P == U keeps neither sign
    close(tie, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), 0)
    direction, _ = aggregate("graddrop", grads, torch.ones(2), U=torch.tensor([0.5, 0.75]))
    close(direction, 2 * torch.tensor([(1.0 + 3.0) / 2, -2.0 / 2]), 1e-7)  # K * mean


# -- IMTL-G ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_imtl_matches_the_authors_code(name):
    model = problem(name)
    loss, alpha = ref.IMTLG(model.G.shape[0]).get_weighted_loss(model.losses(), model.shared())
    loss.backward()
    direction, weights = aggregate("imtl", model.G, model.b)
    close(weights, alpha, 1e-10)
    close(direction, model.shared_grad(), 1e-10)
    close(weights, model.head_grads(), 1e-10)


def test_imtl_degenerate_cases_behave_as_the_authors_code():
    g = MATRICES["identical3"]
    direction, weights = aggregate("imtl", g, torch.ones(3))  # singular: the 1e-8 fallback
    close(weights, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 0)
    close(direction, g[0], 1e-12)
    assert torch.isnan(aggregate("imtl", MATRICES["zero_row3"], torch.ones(3))[1]).all()
    # impartial: the projections of the direction on every unit gradient are equal
    d, _ = aggregate("imtl", MATRICES["random3"], torch.ones(3))
    units = MATRICES["random3"] / MATRICES["random3"].norm(dim=1, keepdim=True)
    proj = units @ d
    close(proj, proj[0].expand(3), 1e-10)


# -- CAGrad ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_cagrad_matches_the_authors_code(name):
    model = problem(name, torch.float32)
    reference = ref.CAGrad(model.G.shape[0], c=0.4)
    reference.backward(model.losses(), model.shared())
    direction, weights = aggregate("cagrad", model.G, model.b, c=0.4)
    close(direction, model.shared_grad(), 1e-6)
    close(weights, torch.ones(model.G.shape[0]), 0)
    gram = (model.G @ model.G.T).numpy()
    cc = (0.4 * (torch.tensor(gram).mean() + 1e-8).sqrt() + 1e-8).item()
    np.testing.assert_allclose(cagrad_weights(gram, cc), reference.w_cpu, atol=1e-9)


@pytest.mark.parametrize("c", [0.2, 0.8])
def test_cagrad_other_radius(c):
    model = problem("conflicting3", torch.float32)
    ref.CAGrad(3, c=c).backward(model.losses(), model.shared())
    close(aggregate("cagrad", model.G, model.b, c=c)[0], model.shared_grad(), 1e-6)


def test_cagrad_slsqp_stops_at_the_start_for_tiny_gradients():
    grads = MATRICES["conflicting3"].float()
    for scale, stays in ((1.0, False), (1e-4, True)):
        g = grads * scale
        gram = (g @ g.T).numpy()
        cc = (0.4 * (torch.tensor(gram).mean() + 1e-8).sqrt() + 1e-8).item()
        w = cagrad_weights(gram, cc)
        assert np.array_equal(w, np.ones(3) / 3) == stays
        model = LinearTasks(g, loss_values(3))
        ref.CAGrad(3).backward(model.losses(), model.shared())
        close(aggregate("cagrad", g, torch.ones(3))[0], model.shared_grad(), 1e-6)
    # at the start the direction is the mean gradient, rescaled
    g = grads * 1e-4
    mean = g.mean(0)
    cc = (0.4 * ((g @ g.T).mean() + 1e-8).sqrt() + 1e-8).item()
    expected = 3 * (mean + cc / (mean.norm() + 1e-8) * mean) / (1 + 0.4**2)
    close(aggregate("cagrad", g, torch.ones(3))[0], expected, 1e-6)


# -- MoCo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_moco_matches_libmtl_over_steps(name):
    grads = MATRICES[name].float()
    num_tasks = grads.shape[0]
    model = LinearTasks(grads, loss_values(num_tasks))
    reference = ref.MoCo(num_tasks, model.shared())
    state: dict = {}
    for step in range(4):
        # a different matrix and losses each step, so the tracking variables matter
        model.G.copy_(grads * (1 + 0.5 * step) + 0.1 * step)
        model.b.copy_(loss_values(num_tasks) / (1 + step))
        for p in [*model.shared(), *model.heads]:
            p.grad = None
        lambd = reference.backward(model.losses())
        direction, weights = aggregate("moco", model.G, model.b, state=state)
        close(direction, model.shared_grad(), 1e-6)
        close(state["lambd"], torch.from_numpy(lambd), 1e-6)
        close(weights, model.head_grads(), 0)
    assert state["step"] == 4


def test_moco_state_resumes_identically():
    grads = [MATRICES["random3"].float() * (1 + i) for i in range(6)]
    losses = torch.tensor([0.5, 1.0, 2.0])
    straight: dict = {}
    out_straight = [aggregate("moco", g, losses, state=straight)[0] for g in grads]
    first: dict = {}
    for g in grads[:3]:
        aggregate("moco", g, losses, state=first)
    resumed = reload(first)
    out_resumed = [aggregate("moco", g, losses, state=resumed)[0] for g in grads[3:]]
    for a, b in zip(out_straight[3:], out_resumed, strict=True):
        assert torch.equal(a, b)


def reload(state: dict) -> dict:
    """``state`` through ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# -- the clip table --------------------------------------------------------------------------


def test_source_max_norm():
    assert source_max_norm("nashmtl", "NYUv2") == 1.0
    assert source_max_norm("nashmtl", "Cityscapes") == 0.0
    for method in ("pcgrad", "cagrad", "graddrop"):
        assert source_max_norm(method, "Cityscapes") == 1.0
        assert source_max_norm(method, "NYUv2") == 0.0
    assert set(SOURCE_MAX_NORM["NYUv2"]) == set(SOURCE_MAX_NORM["Cityscapes"])
    with pytest.raises(UserError, match="valid choices: NYUv2, Cityscapes"):
        source_max_norm("pcgrad", "DigitScenes")
    with pytest.raises(UserError, match="valid choices"):
        source_max_norm("sam", "NYUv2")
