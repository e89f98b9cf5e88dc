"""The algorithm registry: one registration per algorithm, read by the configuration, the
hyperparameter registry and ``build_algorithm``."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from sage_bench import hparams as hp
from sage_bench.algorithms import ALGORITHMS, build_algorithm
from sage_bench.algorithms.base import Algorithm
from sage_bench.algorithms.registry import (
    _REGISTRY,
    DOMAIN_GENERALIZATION,
    algorithm_space,
    algorithms,
    register_algorithm,
)
from sage_bench.config import hparam_space, load_job
from sage_bench.errors import ConfigError
from sage_bench.models import Classifier
from sage_bench.sweep.plan import Sweep

DG_ALGORITHMS = sorted(algorithms(DOMAIN_GENERALIZATION))


@pytest.mark.parametrize("name", DG_ALGORITHMS)
def test_every_registered_algorithm_composes_from_the_config(name, tmp_path):
    spec = load_job([f"algorithm={name}", f"output_dir={tmp_path}"])
    assert spec.algorithm == name
    assert set(algorithm_space(name, "small")) <= set(spec.hparams)


@pytest.mark.parametrize("family, dataset", [("small", "RotatedDigits"), ("large", "PACS"), ("large", "DomainNet")])
@pytest.mark.parametrize("name", DG_ALGORITHMS)
def test_defaults_and_random_draws_lie_in_their_ranges(name, family, dataset):
    space = hparam_space(name, dataset)
    draws = [hp.defaults(space)] + [hp.sample(space, seed) for seed in range(1, 60)]
    for drawn in draws:
        for key, value in drawn.items():
            assert hp.coerce(key, space[key], value) == value
            if isinstance(value, float):
                assert math.isfinite(value)


def test_out_of_range_values_stop_a_job_and_a_sweep_before_anything_is_made(tmp_path):
    for override, expected in [
        ("hparams.rho=-1", r"hparams.rho=-1.0 is out of range: must be in \[0, inf\)"),
        ("hparams.lr=nan", r"hparams.lr=nan is out of range: must be in \(0, inf\)"),
        ("hparams.lr=0", r"hparams.lr=0.0 is out of range"),
        ("hparams.batch_size=0", r"hparams.batch_size=0 is out of range: must be in \[1, inf\)"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            load_job(["algorithm=SAGE", override, f"output_dir={tmp_path}"])
    sweep = Sweep(tmp_path / "sweep", ["RotatedDigits"], ["SAM"], overrides=["hparams.rho=0.05,-0.1"],
                  hparams_seeds=[0], trial_seeds=[0])  # fmt: skip
    with pytest.raises(ConfigError, match=r"hparams.rho=-0.1 is out of range"):
        sweep.jobs()
    assert not any(tmp_path.iterdir())


def test_equal_values_written_differently_are_one_job(tmp_path):
    a = load_job(["algorithm=SAM", "hparams.lr=1", "test_envs=[1,0]", f"output_dir={tmp_path}"])
    b = load_job(["algorithm=SAM", "hparams.lr=1.0", "test_envs=[0,1]", f"output_dir={tmp_path}"])
    assert a.job_dir == b.job_dir
    assert a.hparams_overrides == {"lr": 1.0} and a.settings.test_envs == [0, 1]


class _Echo(Algorithm):
    def update(self, minibatches):
        return {"loss": 0.0}


def test_a_new_registration_is_a_config_choice_and_duplicates_are_refused(tmp_path):
    def space(context):
        return {"strength": hp.HParam(0.5, hp.const(0.5), "how strong", range=hp.UNIT_INTERVAL)}

    register_algorithm("EchoForTest", space=space)(_Echo)
    try:
        assert ALGORITHMS["EchoForTest"] is _Echo
        spec = load_job(["algorithm=EchoForTest", "hparams.strength=0.25", f"output_dir={tmp_path}"])
        assert spec.hparams["strength"] == 0.25
        with pytest.raises(ConfigError, match=r"hparams.strength=2.0 is out of range: must be in \[0, 1\]"):
            load_job(["algorithm=EchoForTest", "hparams.strength=2", f"output_dir={tmp_path}"])
        algo = build_algorithm("EchoForTest", nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
        assert algo.hparams["strength"] == 0.5
        with pytest.raises(ValueError, match="registered twice"):
            register_algorithm("EchoForTest")(type("Other", (Algorithm,), {}))
    finally:
        del _REGISTRY["EchoForTest"]


def test_unknown_algorithm_lists_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown algorithm 'Nope'.*ERM.*SAGE"):
        load_job(["algorithm=Nope", f"output_dir={tmp_path}"])


def test_the_choices_are_grouped_by_task_and_follow_the_registry(tmp_path):
    register_algorithm("GoneForTest")(type("Gone", (_Echo,), {}))
    try:
        assert load_job(["algorithm=GoneForTest", f"output_dir={tmp_path}"]).algorithm == "GoneForTest"
    finally:
        del _REGISTRY["GoneForTest"]
    with pytest.raises(ConfigError) as refused:
        load_job(["algorithm=GoneForTest", f"output_dir={tmp_path}"])
    message = str(refused.value)
    assert "GoneForTest" not in message.split("valid choices:")[1]
    assert re.search(r"valid choices: CDANN, CORAL, .*, VREx \(domain generalization\); CAGrad, .*LS, MGDA.*\(multi-task\)$", message)


def test_algorithms_that_take_gradients_at_perturbed_weights_say_so():
    perturbing = {name for name, cls in ALGORITHMS.items() if cls.perturbs_weights}
    assert {"SAM", "GSAM", "SAGM", "DISAM", "SAGE", "GAM", "GGA"} <= perturbing
    assert not perturbing & {"ERM", "IRM", "DANN", "Fish", "IIB", "GGA-L", "Mixup"}


def test_build_algorithm_passes_domains_and_classes():
    net = Classifier(_Featurizer(), nn.Linear(4, 3))
    algo = build_algorithm("CDANN", net, torch.optim.Adam(net.parameters()), num_domains=5, num_classes=3)
    assert algo.num_domains == 5 and algo.num_classes == 3
    assert algo.discriminator.output.out_features == 5 and algo.class_embeddings.num_embeddings == 3


class _Featurizer(nn.Linear):
    def __init__(self):
        super().__init__(2, 4)
        self.n_outputs = 4
