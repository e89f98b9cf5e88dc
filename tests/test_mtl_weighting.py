"""Loss weightings (SI, RLW, DWA, UW, FAMO) against transcriptions of their authors' code.

Each runs several steps on a fixed sequence of losses; the transcription's weights are the
gradients its objective leaves on the losses. Resuming from a ``state_dict`` that went through
``torch.save`` / ``torch.load(weights_only=True)`` must continue exactly like an uninterrupted run.
"""

from __future__ import annotations

import io

import pytest
import torch

from sage_bench.aggregators import aggregate
from sage_bench.aggregators.weighting import (
    FAMO,
    LOSS_WEIGHTINGS,
    DynamicWeightAverage,
    LossWeighting,
    RandomLossWeighting,
    ScaleInvariant,
    UncertaintyWeighting,
)
from tests.helpers.mtl_problems import LinearTasks, matrices
from tests.reference import mtl_solvers as ref


def loss_sequence(steps: int, num_tasks: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Positive, slowly decreasing losses with noise, float32 as a network's."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([2.0, 0.5, 0.1, 1.0][:num_tasks])
    return [
        scales * (1.0 + 0.3 * torch.rand(num_tasks, generator=gen)) / (1 + 0.05 * t)
        for t in range(steps)
    ]


def weights_of(objective: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(objective, losses)
    return grad


def reload(weighting: LossWeighting, fresh: LossWeighting) -> LossWeighting:
    buffer = io.BytesIO()
    torch.save(weighting.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def close(actual, expected, tol=1e-6):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol)


# -- one step against the transcriptions -----------------------------------------------------


def test_si():
    losses = torch.tensor([0.5, 2.0, 0.01], requires_grad=True)
    reference = ref.ScaleInvariantLinearScalarization(3).get_weighted_loss(losses)
    objective, weights = ScaleInvariant(3).weighted_loss(losses)
    close(objective, reference, 0)
    close(weights, weights_of(reference, losses))
    close(weights_of(objective, losses), weights)


def test_rlw_replays_the_authors_draws():
    weighting = RandomLossWeighting(3, generator=torch.Generator().manual_seed(11))
    global_weighting = RandomLossWeighting(3)
    torch.manual_seed(11)
    reference = ref.RLW(3)
    draws = []
    for losses in loss_sequence(4):
        losses.requires_grad_(True)
        objective_ref, w_ref = reference.get_weighted_loss(losses)
        draws.append(w_ref)
        objective, weights = weighting.weighted_loss(losses)
        close(weights, w_ref, 0)
        close(objective, objective_ref, 0)
        close(weights_of(objective, losses), weights)
    torch.manual_seed(11)  # without a generator: torch's global one, as the authors'
    for w_ref in draws:
        close(global_weighting.weighted_loss(torch.ones(3))[1], w_ref, 0)
    assert not torch.equal(draws[0], draws[1])


def test_dwa_over_sixty_steps():
    reference = ref.DynamicWeightAverage(3, temp=2.0)
    weighting = DynamicWeightAverage(3, temperature=2.0)
    seen = []
    for losses in loss_sequence(60):
        losses.requires_grad_(True)
        objective_ref, _ = reference.get_weighted_loss(losses)
        objective, weights = weighting.weighted_loss(losses)
        close(weights, weights_of(objective_ref, losses))
        close(objective, objective_ref)
        seen.append(weights)
    # ones / K for the first 26 steps (the code's `running_iterations > 25`), then adapted
    assert all(torch.equal(w, torch.full((3,), 1 / 3)) for w in seen[:26])
    assert not torch.equal(seen[26], seen[25])
    assert abs(seen[-1].sum().item() - 1.0) < 1e-6


def test_uw_against_the_authors_shared_adam():
    """In the authors' trainer the log-variances are a second parameter group (lr 0.025) of the
    network's Adam; here they have their own Adam, stepped in ``update``."""
    reference = ref.Uncertainty(3)
    dummy = torch.nn.Parameter(torch.zeros(2))
    shared_adam = torch.optim.Adam(
        [dict(params=[dummy], lr=1e-4), dict(params=reference.parameters(), lr=0.025)]
    )
    weighting = UncertaintyWeighting(3, lr=0.025)
    for losses in loss_sequence(8):
        losses.requires_grad_(True)
        shared_adam.zero_grad()
        objective_ref = reference.get_weighted_loss(losses)
        w_ref = weights_of(objective_ref, losses)
        objective_ref = reference.get_weighted_loss(losses)  # the authors' single backward
        objective_ref.backward()
        shared_adam.step()
        objective, weights = weighting.weighted_loss(losses)
        close(weights, w_ref)
        close(objective, objective_ref.detach())
        weighting.update()
        close(weighting.log_vars.detach(), reference.logsigma.detach())
    assert (weighting.log_vars.detach() != 0).all()


@pytest.mark.parametrize("gamma", [1e-3, 1e-2])
def test_famo_over_steps(gamma):
    reference = ref.FAMO(3, gamma=gamma, w_lr=0.025)
    weighting = FAMO(3, gamma=gamma, lr=0.025)
    sequence = loss_sequence(10)
    for losses, new_losses in zip(sequence[:-1], sequence[1:], strict=True):
        losses.requires_grad_(True)
        objective_ref, _ = reference.get_weighted_loss(losses)
        w_ref = weights_of(objective_ref, losses)
        objective, weights = weighting.weighted_loss(losses)
        close(weights, w_ref)
        close(objective, objective_ref.detach())
        close(weights_of(objective, losses), weights)
        reference.update(new_losses * 0.9)  # the losses of the no-grad forward after the step
        weighting.update(new_losses * 0.9)
        close(weighting.logits.detach(), reference.w.detach())
    assert (weighting.logits.detach() != 0).any()


def test_famo_needs_the_new_losses():
    weighting = FAMO(2)
    assert weighting.needs_new_losses and not UncertaintyWeighting.needs_new_losses
    weighting.weighted_loss(torch.ones(2))
    with pytest.raises(ValueError, match="no-grad forward"):
        weighting.update()


# -- resume identity -------------------------------------------------------------------------


def drive(weighting: LossWeighting, sequence: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for losses, new_losses in zip(sequence[:-1], sequence[1:], strict=True):
        out.append(weighting.weighted_loss(losses)[1])
        weighting.update(new_losses)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomLossWeighting(3, generator=torch.Generator().manual_seed(3)),
        lambda: DynamicWeightAverage(3, window=4),
        lambda: UncertaintyWeighting(3),
        lambda: FAMO(3, gamma=1e-3),
    ],
    ids=["rlw", "dwa", "uw", "famo"],
)
def test_state_dict_resumes_identically(make):
    sequence = loss_sequence(21)
    straight = drive(make(), sequence)
    first = make()
    drive(first, sequence[:11])
    resumed = reload(first, make())
    continued = drive(resumed, sequence[10:])
    assert len(continued) == 10
    for a, b in zip(straight[10:], continued, strict=True):
        assert torch.equal(a, b)


def test_stateless_weightings_refuse_foreign_state():
    with pytest.raises(ValueError, match="no state"):
        ScaleInvariant(2).load_state_dict({"costs": torch.ones(1)})


# -- as aggregators: the direction a backward of the objective gives --------------------------


@pytest.mark.parametrize("name", ["si", "rlw", "dwa", "uw", "famo"])
def test_aggregate_equals_backward_of_the_objective(name):
    grads = matrices()["random3"].float()
    model = LinearTasks(grads, torch.tensor([0.7, 1.3, 2.1]))
    make = {
        "si": lambda: ScaleInvariant(3),
        "rlw": lambda: RandomLossWeighting(3, torch.Generator().manual_seed(1)),
        "dwa": lambda: DynamicWeightAverage(3, window=2),
        "uw": lambda: UncertaintyWeighting(3),
        "famo": lambda: FAMO(3),
    }[name]
    by_backward, by_aggregate = make(), make()
    for _ in range(5):  # past DWA's warm-up, and UW/FAMO weights away from uniform
        for p in [*model.shared(), *model.heads]:
            p.grad = None
        objective, _ = by_backward.weighted_loss(model.losses())
        objective.backward()
        losses = model.losses().detach()
        if name == "rlw":
            direction, weights = aggregate("rlw", grads, losses, generator=by_aggregate.generator)
        elif name == "si":
            direction, weights = aggregate("si", grads, losses)
        else:
            direction, weights = aggregate(name, grads, losses, weighting=by_aggregate)
        close(direction, model.shared_grad())
        close(weights, model.head_grads())
        by_backward.update(losses * 0.9)
        by_aggregate.update(losses * 0.9)
        model.b.mul_(0.8)


def test_stateful_aggregators_ask_for_their_weighting():
    with pytest.raises(TypeError, match=r"weighting=DynamicWeightAverage\(num_tasks"):
        aggregate("dwa", torch.ones(2, 3), torch.ones(2))
    with pytest.raises(TypeError, match="FAMO"):
        aggregate("famo", torch.ones(2, 3), torch.ones(2), weighting=DynamicWeightAverage(2))


def test_registry_and_shapes():
    assert sorted(LOSS_WEIGHTINGS) == ["dwa", "famo", "rlw", "si", "uw"]
    with pytest.raises(ValueError, match="expects 3 losses"):
        DynamicWeightAverage(3).weighted_loss(torch.ones(2))
