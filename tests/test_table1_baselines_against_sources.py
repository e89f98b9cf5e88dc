"""Table 1's other baselines against literal transcriptions of their sources
(``tests/reference/domainbed.py``, ``tests/reference/authors.py``), over several updates, in
float64, with SGD and with Adam.

Both sides start from the same weights and see the same batches; both start every update
from the same state of torch's and NumPy's global generators, and must leave them in the same
state (the same random draws, in the same order), except Fish's reference, which rebuilds its
network and so draws initial weights. Only float rounding separates the two sides (1e-9).
"""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import tests.reference.authors as authors
import tests.reference.domainbed as ref
from sage_bench.algorithms import build_algorithm
from sage_bench.algorithms.base import NetworkError
from sage_bench.models import Classifier
from tests.helpers.nets import domains, small_cnn

OPTIMIZERS = ["sgd", "adam"]
K = 3  # training domains
N = 6  # examples per domain
TOL = 1e-9


def make_optimizer(kind):
    """The factory both sides use: ``(params, lr, weight_decay, **extra) -> optimizer``; SGD
    ignores Adam's ``betas``."""

    def make(params, lr, weight_decay, betas=None):
        if kind == "sgd":
            return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
        extra = {} if betas is None else {"betas": betas}
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)

    return make


def tiny_classifier(seed=0, batchnorm=False, classes=3):
    """``head(featurizer(x))`` on 4 inputs; the featurizer has ``n_outputs`` (and BatchNorm)."""
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if batchnorm else []) + [nn.Tanh()]
    featurizer = nn.Sequential(*layers)
    featurizer.n_outputs = 8
    return Classifier(featurizer, nn.Linear(8, classes)).double()


def batches(steps=5, shape=(4,), classes=3, n=N, seed=0):
    out = []
    for s in range(steps):
        out.append([(x.double(), y) for x, y in domains(shape, classes, k=K, n=n, seed=seed + 10 * s)])
    return out


def same_draws(ours, theirs):
    """Run ``ours()`` and ``theirs()`` from the same generator states; both must draw alike."""
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    a = ours()
    after = torch.get_rng_state(), np.random.get_state()[1].copy()
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    b = theirs()
    assert torch.equal(after[0], torch.get_rng_state()), "different torch draws"
    assert np.array_equal(after[1], np.random.get_state()[1]), "different NumPy draws"
    return a, b


def assert_close(module_a, module_b, tol=TOL):
    """The same state, entry by entry in order (the two sides name their modules differently)."""
    a, b = module_a.state_dict(), module_b.state_dict()
    assert len(a) == len(b)
    for (name, u), v in zip(a.items(), b.values(), strict=True):
        assert u.shape == v.shape, name
        assert torch.allclose(u.double(), v.double(), rtol=0, atol=tol), (
            f"{name}: max diff {(u.double() - v.double()).abs().max().item():.2e}"
        )


def assert_stats(ours, theirs, tol=TOL):
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=tol, abs=tol), key


def build(name, net, kind, hparams, **kwargs):
    hparams = {"lr": 0.05, "weight_decay": 1e-3, **hparams}
    optimizer = make_optimizer(kind)(net.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"])
    return build_algorithm(name, net, optimizer, hparams, num_domains=K, num_classes=3, **kwargs), hparams


# --------------------------------------------------------------------------------------------
# DomainBed


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("name", ["IRM", "VREx"])
def test_irm_and_vrex_penalty_anneal_and_optimizer_reset(name, kind):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    prefix = name.lower()
    algo, h = build(name, net, kind, {f"{prefix}_lambda": 50.0, f"{prefix}_penalty_anneal_iters": 2})
    theirs = getattr(ref, name)(twin.featurizer, twin.head, h, make_optimizer(kind))
    for t, batch in enumerate(batches()):
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update, batch))
        assert_stats(a, b)
        if t == 2 and kind == "adam":  # the anneal ended at this update: Adam started afresh
            assert {s["step"].item() for s in algo.optimizer.state.values()} == {1.0}
    assert algo.update_count.item() == 5
    assert_close(net, theirs.network)


def test_irm_penalty_splits_each_domain_by_even_and_odd_positions():
    net = tiny_classifier()
    logits = net(torch.randn(6, 4, dtype=torch.float64))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    order = torch.tensor([1, 0, 2, 3, 4, 5])  # moves examples between the halves
    from sage_bench.algorithms.domainbed import IRM

    assert IRM.irm_penalty(logits, y).item() == pytest.approx(ref.IRM._irm_penalty(logits, y).item(), rel=1e-12)
    assert IRM.irm_penalty(logits[order], y[order]).item() != pytest.approx(IRM.irm_penalty(logits, y).item())


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_groupdro_weights_q(kind):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    algo, h = build("GroupDRO", net, kind, {"groupdro_eta": 0.5})
    theirs = ref.GroupDRO(twin.featurizer, twin.head, h, make_optimizer(kind))
    assert algo.q.numel() == 0
    for batch in batches():
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update, batch))
        assert_stats(a, b)
        assert torch.allclose(algo.q, theirs.q, rtol=0, atol=1e-7)
    assert algo.q.sum().item() == pytest.approx(1.0) and not torch.allclose(algo.q, torch.full((K,), 1 / K))
    assert_close(net, theirs.network)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_mixup_draws_as_the_source(kind):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    algo, h = build("Mixup", net, kind, {"mixup_alpha": 0.4})
    theirs = ref.Mixup(twin.featurizer, twin.head, h, make_optimizer(kind))
    uneven = [[(x[: N - i], y[: N - i]) for i, (x, y) in enumerate(batch)] for batch in batches()]
    for batch in uneven:
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update, batch))
        assert_stats(a, b)
    assert_close(net, theirs.network)


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("name", ["MMD", "CORAL"])
def test_mmd_and_coral(name, kind):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    algo, h = build(name, net, kind, {"mmd_gamma": 3.0})
    theirs = ref.AbstractMMD(twin.featurizer, twin.head, h, gaussian=name == "MMD", make_optimizer=make_optimizer(kind))
    for batch in batches():
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update, batch))
        assert_stats(a, b)
        assert a["penalty"] > 0
    assert_close(net, theirs.network)


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("factors", [(1 / 3, 1 / 3), (0.5, 0.1), (0.0, 0.45)])
def test_rsc(factors, kind):
    net = small_cnn().double()
    twin = copy.deepcopy(net)
    hparams = {"rsc_f_drop_factor": factors[0], "rsc_b_drop_factor": factors[1], "lr": 0.01}
    algo, h = build("RSC", net, kind, hparams)
    theirs = ref.RSC(twin.featurizer, twin.head, h, num_classes=10, make_optimizer=make_optimizer(kind))
    for batch in batches(steps=3, shape=(1, 16, 16), classes=10):
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update, batch))
        assert_stats(a, b)
    assert_close(net, theirs.network)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_fish_keeps_its_inner_optimizer_state(kind):
    net = tiny_classifier(batchnorm=True)  # running statistics move with the meta-update too
    twin = copy.deepcopy(net)
    algo, h = build("Fish", net, kind, {"meta_lr": 0.3})
    weights = {f"net.{name}": value for name, value in twin.state_dict().items()}  # WholeFish's keys
    theirs = ref.Fish(lambda: tiny_classifier(seed=7, batchnorm=True), weights, h, make_optimizer(kind))
    for batch in batches():
        assert_stats(algo.update(batch), theirs.update(batch))
    inner = algo.inner_optimizer_state["state"]
    assert set(inner) == set(range(len(list(net.parameters()))))
    if kind == "adam":  # one inner step per domain and update, never reset
        assert {s["step"].item() for s in inner.values()} == {5.0 * K}
    else:
        assert all("momentum_buffer" in s for s in inner.values())
    assert not algo.optimizer.state  # the runner's optimizer never steps
    assert_close(net, theirs.network.net)


# --------------------------------------------------------------------------------------------
# DANN, CDANN


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("name", ["DANN", "CDANN"])
@pytest.mark.parametrize("d_steps, penalty", [(1, 0.0), (2, 0.7)])
def test_dann_alternating_steps_with_gradient_penalty(name, kind, d_steps, penalty):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    hparams = {
        "lambda": 0.8, "d_steps_per_g_step": d_steps, "grad_penalty": penalty, "beta1": 0.5,
        "mlp_width": 16, "mlp_depth": 4, "mlp_dropout": 0.3, "lr_g": 0.02, "lr_d": 0.03,
        "weight_decay_g": 1e-3, "weight_decay_d": 2e-3,
    }  # fmt: skip
    algo, h = build(name, net, kind, hparams)
    assert [n for n, _ in algo.named_parameters() if not n.startswith("network.")] == [
        "discriminator.input.weight", "discriminator.input.bias", "discriminator.hiddens.0.weight",
        "discriminator.hiddens.0.bias", "discriminator.hiddens.1.weight", "discriminator.hiddens.1.bias",
        "discriminator.output.weight", "discriminator.output.bias", "class_embeddings.weight",
    ]  # fmt: skip
    theirs = ref.AbstractDANN(
        twin.featurizer, twin.head, copy.deepcopy(algo.discriminator), copy.deepcopy(algo.class_embeddings), h,
        conditional=name == "CDANN", class_balance=name == "CDANN", make_optimizer=make_optimizer(kind),
    )  # fmt: skip
    kinds = []
    for batch in batches(steps=6):
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update, batch))
        assert_stats(a, b)
        kinds.append(next(iter(a)))
    # update_count is 1 at the first update: 1 % 2 < 1 is false, a generator step
    assert kinds == (["gen_loss", "disc_loss"] * 3 if d_steps == 1 else ["disc_loss", "gen_loss", "disc_loss"] * 2)
    assert_close(net, nn.Sequential(theirs.featurizer, theirs.classifier))
    assert_close(algo.discriminator, theirs.discriminator)
    assert_close(algo.class_embeddings, theirs.class_embeddings)
    assert not algo.optimizer.state  # the runner's optimizer is not used


def test_dann_needs_domains_classes_and_a_featurizer():
    net = tiny_classifier()
    opt = torch.optim.Adam(net.parameters())
    with pytest.raises(NetworkError, match=r"DANN needs num_domains: pass build_algorithm\(\.\.\., num_domains=N\)"):
        build_algorithm("DANN", net, opt, num_classes=3)
    with pytest.raises(NetworkError, match="IIB needs num_classes"):
        build_algorithm("IIB", net, opt, num_domains=3)
    plain = nn.Sequential(nn.Linear(4, 3))
    for name in ["DANN", "CDANN", "MMD", "CORAL", "RSC", "IIB", "GGA", "GGA-L"]:
        with pytest.raises(NetworkError, match=f"{name.replace('-', '_')} needs the network's featurizer and head"):
            build_algorithm(name, plain, torch.optim.Adam(plain.parameters()), num_domains=3, num_classes=3)


# --------------------------------------------------------------------------------------------
# IIB


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("enable_bn", [True, False])
def test_iib(kind, enable_bn):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    algo, h = build("IIB", net, kind, {"lambda_beta": 0.01, "lambda_inv_risks": 3, "enable_bn": enable_bn, "batch_size": N})
    theirs = authors.IIB(
        twin.featurizer, twin.head, copy.deepcopy(algo.encoder), copy.deepcopy(algo.fc3_mu),
        copy.deepcopy(algo.fc3_logvar), copy.deepcopy(algo.env_classifier), h, num_domains=K,
        make_optimizer=make_optimizer(kind),
    )  # fmt: skip
    for batch in batches():
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update, batch))
        assert_stats(a, b)
    for mine, source in [(net.featurizer, theirs.featurizer), (net.head, theirs.inv_classifier),
                         (algo.encoder, theirs.encoder), (algo.fc3_mu, theirs.fc3_mu),
                         (algo.fc3_logvar, theirs.fc3_logvar), (algo.env_classifier, theirs.env_classifier)]:  # fmt: skip
        assert_close(mine, source)
    x = batches(1)[0][0][0]
    a, b = same_draws(partial(algo.predict, x), partial(theirs.predict, x))  # samples z in train mode
    assert torch.allclose(a, b, atol=TOL)
    algo.eval()
    theirs.eval()
    assert torch.allclose(algo.predict(x), theirs.predict(x), atol=TOL)


# --------------------------------------------------------------------------------------------
# GGA, GGA-L


@pytest.mark.slow  # 250 search iterations per annealed update, on both sides
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_gga_inside_and_outside_its_window(kind):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    hparams = {"neighborhoodSize": 0.02, "start_step": 1, "end_step": 2}
    algo, h = build("GGA", net, kind, hparams)
    theirs = authors.ERM_GGA(twin.featurizer, twin.head, h, make_optimizer(kind))
    accepted = []
    for step, batch in enumerate(batches(steps=4)):
        a, b = same_draws(partial(algo.update, batch), partial(authors.gga_trainer_step, theirs, step, batch))
        assert_stats(a, b)
        accepted.append(a.get("accepted"))
    assert accepted[0] is None and accepted[3] is None  # outside: plain ERM, no draws
    assert None not in accepted[1:3] and sum(accepted[1:3]) > 0
    assert_close(net, theirs.network)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_gga_l(kind):
    net = tiny_classifier()
    twin = copy.deepcopy(net)
    algo, h = build("GGA-L", net, kind, {"gga_l_gamma": 0.05})
    theirs = authors.GGA_L(twin.featurizer, twin.head, h, make_optimizer(kind))
    for batch in batches():
        x = [x for x, _ in batch]
        y = [y for _, y in batch]
        a, b = same_draws(partial(algo.update, batch), partial(theirs.update_perturbed, x, y))
        assert_stats(a, b)
    assert_close(net, theirs.network)


def test_gga_needs_two_domains():
    net = tiny_classifier()
    algo = build_algorithm("GGA-L", net, torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(NetworkError, match="needs at least two training domains; got 1"):
        algo.update(batches(1)[0][:1])


# --------------------------------------------------------------------------------------------
# GAM


@pytest.mark.parametrize("kind", OPTIMIZERS)
@pytest.mark.parametrize("batchnorm", [False, True])
def test_gam(kind, batchnorm):
    net = tiny_classifier(batchnorm=batchnorm)
    twin = copy.deepcopy(net)
    hparams = {"grad_rho": 0.05, "grad_norm_rho": 0.2, "grad_beta_0": 0.3, "grad_beta_1": 0.6, "grad_gamma": 0.05}
    algo, h = build("GAM", net, kind, hparams)
    base = make_optimizer(kind)(twin.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
    args = {**hparams, "grad_beta_2": 1 - hparams["grad_beta_0"], "grad_beta_3": 1 - hparams["grad_beta_1"]}
    theirs = authors.GAM(twin.parameters(), base, twin, args)
    for batch in batches():
        a, b = same_draws(partial(algo.update, batch), partial(authors.gam_erm_step, theirs, batch))
        assert_stats(a, b)
    assert_close(net, twin)
