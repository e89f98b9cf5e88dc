"""ASAM's element-wise adaptive perturbation against its formula, and its scale invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_bench.geometry import asam_perturbation


def _numpy_asam(params, grads, rho, eta, adaptive):
    """rho T^2 g / ||T g|| written out with numpy, T = |w| + eta where adaptive, else 1."""
    ts = [np.abs(p) + eta if a else np.ones_like(p) for p, a in zip(params, adaptive, strict=True)]
    tg = [t * g for t, g in zip(ts, grads, strict=True)]
    norm = np.sqrt(sum((x**2).sum() for x in tg))
    return [rho * t * x / norm for t, x in zip(ts, tg, strict=True)]


@pytest.mark.parametrize("adaptive", [None, [True, False, True]])
def test_asam_matches_its_formula(adaptive):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64),
              torch.randn(2, 4, generator=g, dtype=torch.float64)]
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    e = asam_perturbation(params, grads, rho=0.3, eta=0.05, adaptive=adaptive)
    expected = _numpy_asam(
        [p.numpy() for p in params], [x.numpy() for x in grads], 0.3, 0.05, adaptive or [True] * 3
    )
    for got, want in zip(e, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # ||T^-1 e|| = rho: the perturbation lies on ASAM's normalised sphere
    ts = [p.abs() + 0.05 if a else torch.ones_like(p) for p, a in zip(params, adaptive or [True] * 3, strict=True)]
    assert torch.sqrt(sum(((x / t) ** 2).sum() for x, t in zip(e, ts, strict=True))).item() == pytest.approx(0.3)


def test_asam_is_invariant_to_elementwise_rescaling_when_eta_is_zero():
    # w -> a * w with g -> g / a (element-wise a > 0) moves e to a * e: the perturbed point is the
    # same function of the rescaled network
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    grad = torch.randn(5, 3, generator=g, dtype=torch.float64)
    scale = torch.rand(5, 3, generator=g, dtype=torch.float64) * 10 + 0.1
    (e,) = asam_perturbation([w], [grad], rho=0.1, eta=0.0)
    (e_scaled,) = asam_perturbation([scale * w], [grad / scale], rho=0.1, eta=0.0)
    torch.testing.assert_close(e_scaled, scale * e)


def test_asam_rejects_mismatched_lists():
    with pytest.raises(ValueError):
        asam_perturbation([torch.zeros(2)], [], rho=0.1)
    with pytest.raises(ValueError):
        asam_perturbation([torch.zeros(2)], [torch.ones(2)], rho=0.1, adaptive=[True, False])
