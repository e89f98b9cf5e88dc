"""grads_of_losses (one forward, K backwards) and flatten / unflatten."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sage_bench.geometry import flatten, grads_of_losses, unflatten


def test_grads_of_losses_is_one_backward_per_loss_through_one_graph():
    torch.manual_seed(0)
    trunk, head_a, head_b = nn.Linear(4, 5), nn.Linear(5, 1), nn.Linear(5, 2)
    params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
    x = torch.randn(6, 4)
    features = torch.tanh(trunk(x))
    losses = [head_a(features).pow(2).mean(), head_b(features).abs().mean()]
    grads = grads_of_losses(losses, params)
    for k, make in enumerate([lambda f: head_a(f).pow(2).mean(), lambda f: head_b(f).abs().mean()]):
        expected = torch.autograd.grad(make(torch.tanh(trunk(x))), params, allow_unused=True)
        for g, e in zip(grads[k], expected, strict=True):
            assert (g is None) == (e is None)
            if g is not None:
                assert torch.allclose(g, e)
    assert grads[0][4] is None and grads[1][2] is None  # a loss does not reach the other head
    with pytest.raises(RuntimeError):  # the graph is freed after the last loss
        losses[0].backward()


def test_flatten_and_unflatten_are_inverse():
    like = [torch.zeros(2, 3), torch.zeros(4)]
    flat = flatten([torch.arange(6.0).view(2, 3), None], like=like)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 0, 0, 0, 0]
    back = unflatten(flat, like)
    assert back[0].shape == (2, 3) and torch.equal(back[1], torch.zeros(4))
    with pytest.raises(ValueError, match="10 elements, the tensors 9"):
        unflatten(flat, [torch.zeros(9)])
    with pytest.raises(ValueError, match="without `like`"):
        flatten([None])
