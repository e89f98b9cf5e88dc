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
