"""The methods' hyperparameter spaces fit the functions and classes they configure."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from sage_bench.aggregators import AGGREGATORS, METHOD_SPACES, SOURCE_MAX_NORM
from sage_bench.aggregators.weighting import LOSS_WEIGHTINGS


def keyword_defaults(method: str) -> dict:
    """The keywords (and defaults) a space's values are passed to: the weighting class's
    constructor for loss weightings, the aggregator's keyword-only arguments otherwise."""
    if method in LOSS_WEIGHTINGS:
        target = LOSS_WEIGHTINGS[method].__init__
    else:
        target = AGGREGATORS[method]
    params = inspect.signature(target).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("method", sorted(METHOD_SPACES))
@pytest.mark.parametrize("dataset", ["NYUv2", "Cityscapes", None])
def test_space_names_are_keywords_and_defaults_are_the_code_defaults(method, dataset):
    assert method in AGGREGATORS
    keywords = keyword_defaults(method)
    space = METHOD_SPACES[method](dataset)
    for name, hparam in space.items():
        assert name in keywords, f"{method}: {name} is not a keyword of its code"
        if (method, name) != ("famo", "gamma"):  # the run scripts' value, not the class default
            assert hparam.default == keywords[name], (method, name)
        for seed in range(5):
            value = hparam.sample(np.random.RandomState(seed))
            assert isinstance(value, type(hparam.default))


def test_famo_gamma_follows_the_run_scripts():
    assert METHOD_SPACES["famo"]("NYUv2")["gamma"].default == 0.001
    assert METHOD_SPACES["famo"]("Cityscapes")["gamma"].default == 0.01
    draws = {
        METHOD_SPACES["famo"]("NYUv2")["gamma"].sample(np.random.RandomState(s)) for s in range(40)
    }
    assert draws == {1e-4, 1e-3, 1e-2}


def test_every_method_has_a_clip_entry():
    for table in SOURCE_MAX_NORM.values():
        assert set(METHOD_SPACES) <= set(table)


def test_a_method_declared_in_one_module_is_a_row_with_its_space_and_its_sources_clip():
    """What a new method's module declares (space, clip per source, row) is all it takes."""
    import torch

    from sage_bench.aggregators import METHODS, Row, register_aggregator
    from sage_bench.algorithms import build_multitask_algorithm
    from sage_bench.algorithms.multitask import AGGREGATING_ROWS
    from sage_bench.algorithms.registry import _REGISTRY
    from sage_bench.hparams import POSITIVE, HParam, const, default_hparams

    class TwoTasks(torch.nn.Module):
        """``L_a = 3 theta_0 + h_a``, ``L_b = 4 theta_1 + h_b``: shared gradients (3, 0) and (0, 4)."""

        task_names = ["a", "b"]

        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
            self.heads = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.zeros((), dtype=torch.float64)) for t in "ab"})

        def forward(self, x):
            return {"a": 3 * self.theta[0] + self.heads["a"], "b": 4 * self.theta[1] + self.heads["b"]}

        def shared_parameters(self):
            return [self.theta]

        def task_parameters(self, task):
            return [self.heads[task]]

    def scaled_space(dataset=None):
        return {"scale": HParam(3.0, const(3.0), "multiplies the sum", range=POSITIVE)}

    try:
        @register_aggregator("scaled_sum_for_test", space=scaled_space, clip={"NYUv2": 0.5, "Cityscapes": 0.0},
                             row=Row("ScaledSumForTest"))  # fmt: skip
        def scaled_sum(grads, losses, scale: float = 3.0):
            return scale * grads.sum(dim=0), None

        assert default_hparams("ScaledSumForTest", "NYUv2", "mtan") == {
            **default_hparams("LS", "NYUv2", "mtan"), "scale": 3.0, "max_norm": 0.5
        }
        assert default_hparams("ScaledSumForTest", "Cityscapes", "mtan")["max_norm"] == 0.0
        for dataset, norm in (("NYUv2", 0.5), ("Cityscapes", 3.0 * 5.0)):  # 3 * ||(3, 4)||, unclipped
            net = TwoTasks()
            algo = build_multitask_algorithm("ScaledSumForTest", net, torch.optim.SGD(net.parameters(), lr=1.0),
                                             lambda outputs, targets: outputs, dataset=dataset)  # fmt: skip
            algo.update(torch.zeros(1), {})
            assert torch.linalg.vector_norm(net.theta.detach()).item() == pytest.approx(norm), dataset
            assert net.theta.detach().tolist() == pytest.approx([-0.6 * norm, -0.8 * norm])  # along -(3, 4)
    finally:
        METHODS.pop("scaled_sum_for_test", None)
        AGGREGATORS.pop("scaled_sum_for_test", None)
        AGGREGATING_ROWS.pop("ScaledSumForTest", None)
        _REGISTRY.pop("ScaledSumForTest", None)
