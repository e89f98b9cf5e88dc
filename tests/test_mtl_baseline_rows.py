"""Table 2's other rows (SI, RLW, DWA, UW, FAMO, PCGrad, GradDrop, IMTL-G, CAGrad, MoCo,
Nash-MTL, F-MTL) against transcriptions of their authors' training steps.

Each row trains a narrow MTAN (float64) for several steps beside the lineage's ``SegNetMtan``
with the same weights, trained by a literal transcription of its trainer
(``tests/reference/mtl_trainers.py``), with SGD and with Adam; the random draws (RLW's weights,
PCGrad's orders, GradDrop's uniforms) are replayed from the algorithm's own generators. Then:
resuming from a checkpoint is exact for every row, the registrations are valid, every row trains
on DigitScenes through ``build_algorithm``, and Nash-MTL without cvxpy says what to install.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import random

import numpy as np
import pytest
import torch

from sage_bench import hparams as hp
from sage_bench.aggregators.gram import gram_matrix
from sage_bench.aggregators.mgda import min_norm_weights
from sage_bench.aggregators.nashmtl import MissingSolverError
from sage_bench.algorithms import build_algorithm
from sage_bench.algorithms.registry import MULTI_TASK, get_algorithm
from sage_bench.data.digit_scenes import DigitScenes
from sage_bench.models.mtan import MTAN, mtan
from sage_bench.mtl import MultiTaskLoss
from tests.helpers.mtl_problems import matrices
from tests.reference import mtl_solvers as ref
from tests.reference import mtl_trainers as trainers
from tests.reference.mtan import SegNetMtan

pytestmark = [
    pytest.mark.filterwarnings("ignore:To copy construct"),  # the authors' IMTL-G
    pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP"),  # nash-mtl's problem
]

ROWS = ["SI", "RLW", "DWA", "UW", "FAMO", "PCGrad", "GradDrop", "IMTL-G", "CAGrad", "MoCo", "Nash-MTL", "F-MTL"]
FILTERS = (4, 8, 8, 8, 8)
STEPS = 3
LR = {"sgd": 0.05, "adam": 1e-3}


@pytest.fixture(scope="module")
def batches():
    data = DigitScenes()
    out = []
    for s in range(STEPS + 1):
        idx = [2 * s, 2 * s + 1]
        x = data.train.images[idx].double()
        t = {k: (v[idx].double() if v.is_floating_point() else v[idx]) for k, v in data.train.targets.items()}
        out.append((x, t))
    return out, data.tasks


class float64_default:
    """The transcriptions' ``torch.Tensor(...)`` / ``torch.zeros(...)`` follow the default dtype."""

    def __enter__(self):
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.previous)


def twins(tasks, seed=5):
    torch.manual_seed(seed)
    theirs = SegNetMtan(n_tasks=len(tasks), class_nb=tasks[0].channels, filter=FILTERS).double()
    torch.manual_seed(seed)
    ours = MTAN(tasks, filters=FILTERS).double()
    return ours, theirs


def optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=LR[kind], momentum=0.9)
    return torch.optim.Adam(params, lr=LR[kind])


def build(name, net, tasks, kind="sgd", dataset="NYUv2", **hparams):
    return build_algorithm(name, net, optimizer(kind, net.parameters()), hparams, dataset=dataset, loss_fn=MultiTaskLoss(tasks))


def targets_list(targets, tasks):
    return [targets[t.name] for t in tasks]


def assert_same(ours, theirs, atol):
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=atol), f"{name}: max diff {(a - b).abs().max().item():.2e}"
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=atol), name


def sync(ours, our_optimizer, theirs, their_optimizer):
    """Start the next step of the transcription from our state (weights, BatchNorm statistics,
    optimizer state): a batch of two through BatchNorm in training mode amplifies rounding
    differences (the per-tensor sums of the authors' code against our flat ones) about 50-fold
    per step, so each step is compared from the same point; the methods' own state (generators,
    histories, warm starts) is not synchronised."""
    with torch.no_grad():
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            b.copy_(a)
            for key, value in our_optimizer.state[a].items():
                their_optimizer.state[b][key] = value.clone() if torch.is_tensor(value) else value
        for a, b in zip(ours.buffers(), theirs.buffers(), strict=True):
            b.copy_(a)


def tolerance(kind, name=""):
    """How far one step may differ by rounding. Adam divides by the root of the second moment,
    which turns the rounding of gradient entries that cancel to nearly zero (a convolution's bias
    before BatchNorm) into visible relative differences; SciPy's SLSQP (CAGrad) stops within its
    tolerance (its stopping point moves by up to a few 1e-9 with how ``A`` is formed: 2e-10 in
    a weight on the version-2 scenes). A step of these rates moves weights by about 1e-3, a
    wrong rule far more."""
    slsqp = 1000 if name == "CAGrad" else 1
    return slsqp * (1e-9 if kind == "adam" else 1e-12)


def moved(net, before):
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


# --------------------------------------------------------------------------------------------
# Loss weightings: the nash-mtl / FAMO trainer around their weight methods


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", ["SI", "RLW", "DWA", "UW", "FAMO"])
def test_weighting_rows_match_their_trainer(batches, name, kind):
    data, tasks = batches
    ours, theirs = twins(tasks)
    hparams = {"DWA": {"window": 1}, "FAMO": {"gamma": 0.01}}.get(name, {})
    algo = build(name, ours, tasks, kind, **hparams)
    n = len(tasks)
    famo = None
    param_groups = [dict(params=theirs.parameters(), lr=LR[kind])]
    if name == "SI":
        method = ref.ScaleInvariantLinearScalarization(n)
    elif name == "RLW":
        method = ref.RLW(n)
        torch.manual_seed(algo.noise.seed)  # the authors draw from torch's global generator
    elif name == "DWA":
        method = ref.DynamicWeightAverage(n, iteration_window=1, temp=2.0)
    elif name == "UW":  # float32 log-variances in a second parameter group, as their trainer
        method = ref.Uncertainty(n)
        param_groups.append(dict(params=method.parameters(), lr=0.025))
    else:
        method = famo = ref.FAMO(n, gamma=0.01, w_lr=0.025)
    their_optimizer = type(algo.optimizer)(param_groups, **({"momentum": 0.9} if kind == "sgd" else {}))
    # a StepLR halving every two steps on both (UW's log-variances follow it there and here)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (algo.optimizer, their_optimizer)]
    for x, targets in data[:STEPS]:
        stats = algo.update(x, targets)
        # RLW's float32 draws: its weights are drawn in the default dtype
        with float64_default() if name != "RLW" else contextlib.nullcontext():
            trainers.lineage_step(theirs, their_optimizer, x, targets_list(targets, tasks), trainers.weighted_loss_backward(method.get_weighted_loss), famo=famo)
        assert_same(ours, theirs, tolerance(kind))
        sync(ours, algo.optimizer, theirs, their_optimizer)
        for scheduler in schedulers:
            scheduler.step()
    assert all(math.isfinite(v) for v in stats.values())
    if name == "UW":
        assert torch.allclose(algo.weighting.log_vars, method.logsigma, rtol=0, atol=1e-7)
        # set before its third step, after two scheduler steps (one halving)
        assert algo.weighting.optimizer.param_groups[0]["lr"] == 0.0125
    if name == "FAMO":
        assert torch.allclose(algo.weighting.logits, famo.w, rtol=0, atol=1e-7) and (famo.w != 0).any()
    if name == "DWA":  # past the warm-up the weights moved away from 1/K
        assert stats["weight_seg"] != pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------------
# Gradient aggregation: the nash-mtl / FAMO trainer and LibMTL's


# (row, max_norm, optimizer): each row with SGD and Adam at one clip, and SGD at the other
AGGREGATING = [
    ("PCGrad", 0.0, "sgd"), ("PCGrad", 0.0, "adam"), ("PCGrad", 1.0, "sgd"),
    ("GradDrop", 1.0, "sgd"), ("GradDrop", 1.0, "adam"), ("GradDrop", 0.0, "sgd"),
    ("IMTL-G", 0.0, "sgd"), ("IMTL-G", 0.0, "adam"),
    ("CAGrad", 1.0, "sgd"), ("CAGrad", 1.0, "adam"), ("CAGrad", 0.0, "sgd"),
    ("MoCo", 0.0, "sgd"), ("MoCo", 0.0, "adam"),
    ("Nash-MTL", 1.0, "sgd"), ("Nash-MTL", 1.0, "adam"), ("Nash-MTL", 0.0, "sgd"),
]  # fmt: skip


def their_method(name, algo, n, max_norm, shared):
    """The reference weight method's ``backward`` (and, for MoCo, the object), random draws
    replayed from ``algo``'s generators."""
    if name == "PCGrad":
        random.setstate(algo.orders_rng.getstate())
        method = ref.PCGrad(n, max_norm=max_norm)
        return method.backward, None
    if name == "GradDrop":
        torch.manual_seed(algo.solver_noise.seed)
        return (lambda losses, s, h: ref.GradDrop(n, max_norm).backward(losses, s)), None
    if name == "CAGrad":
        return (lambda losses, s, h: ref.CAGrad(n, c=0.4, max_norm=max_norm).backward(losses, s)), None
    if name == "IMTL-G":
        method = ref.IMTLG(n)
        return (lambda losses, s, h: method.get_weighted_loss(losses, s)[0].backward()), None
    if name == "Nash-MTL":
        method = ref.NashMTL(n, max_norm=max_norm)
        return (lambda losses, s, h: method.backward(losses, s)), None
    with float64_default():
        return None, ref.MoCo(n, shared)


@pytest.mark.parametrize("name, max_norm, kind", AGGREGATING, ids=[f"{n}-clip{c:g}-{k}" for n, c, k in AGGREGATING])
def test_aggregating_rows_match_their_trainer(batches, name, max_norm, kind):
    data, tasks = batches
    ours, theirs = twins(tasks)
    algo = build(name, ours, tasks, kind, max_norm=max_norm)
    their_optimizer = optimizer(kind, theirs.parameters())
    backward, moco = their_method(name, algo, len(tasks), max_norm, list(theirs.shared_parameters()))
    for x, targets in data[:STEPS]:
        stats = algo.update(x, targets)
        with float64_default(), trainers.unused_as_zeros():
            if moco is not None:
                trainers.libmtl_step(theirs, their_optimizer, x, targets_list(targets, tasks), moco)
            else:
                trainers.lineage_step(theirs, their_optimizer, x, targets_list(targets, tasks), backward)
        assert_same(ours, theirs, tolerance(kind, name))
        sync(ours, algo.optimizer, theirs, their_optimizer)
    assert all(math.isfinite(v) for v in stats.values())


# --------------------------------------------------------------------------------------------
# F-MTL: FS-MTL's train.py


FMTL_CASES = [
    ("pcgrad", "sam", False, True), ("mgda", "split", True, True), ("mgda", "split", False, False),
    ("mgda", "sam", True, True), ("cagrad", "split", False, True), ("cagrad", "sam", True, True),
    ("imtl", "split", True, True), ("imtl", "sam", False, True),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("solver, combine, adaptive, normalize", FMTL_CASES, ids=["-".join(map(str, c)) for c in FMTL_CASES])
def test_fmtl_matches_its_trainer(batches, solver, combine, adaptive, normalize):
    data, tasks = batches
    ours, theirs = twins(tasks)
    rho = 0.5 if adaptive else 0.02
    algo = build("F-MTL", ours, tasks, solver=solver, combine=combine, adaptive=adaptive, normalize=normalize, rho=rho)
    their_optimizer = optimizer("sgd", theirs.parameters())
    random.setstate(algo.orders_rng.getstate())
    method = solver if combine == "split" else f"a-{solver}"
    for x, targets in data[:2]:
        stats = algo.update(x, targets)
        with float64_default():
            trainers.fsmtl_step(theirs, their_optimizer, x, targets_list(targets, tasks), method, rho, adaptive, normalize=normalize)
        assert_same(ours, theirs, tolerance("sgd", "CAGrad" if solver == "cagrad" else ""))
        sync(ours, algo.optimizer, theirs, their_optimizer)
    assert stats["perturbed_loss"] != stats["loss"]


@pytest.mark.parametrize("name", [n for n, g in matrices().items() if g.shape[0] == 3])
def test_fmtl_min_norm_solver_is_its_torch_copy(name):
    """FS-MTL's MGDA stops at ``sum change^2 < 1e-5`` (``stop="squared_l2"``); the lineage's at
    ``sum |change| < 1e-5``: the weights differ by up to 1.6e-2 on these matrices."""
    G = matrices()[name]
    with float64_default():
        theirs, _ = trainers.MinNormSolver.find_min_norm_element([[row] for row in G])
    gram = gram_matrix(G).numpy()
    ours = min_norm_weights(gram, stop="squared_l2")
    assert np.allclose(ours, theirs.numpy(), rtol=0, atol=1e-14)
    if name in ("random3", "orthogonal3", "self_conflict3"):
        assert not np.allclose(ours, min_norm_weights(gram), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="valid choices: l1, squared_l2"):
        min_norm_weights(gram, stop="l2")


@pytest.mark.slow
def test_fmtl_defaults_with_adam(batches):
    data, tasks = batches
    ours, theirs = twins(tasks)
    algo = build("F-MTL", ours, tasks, "adam")  # NYUv2's defaults: PCGrad, split, ASAM, rho 0.05
    their_optimizer = optimizer("adam", theirs.parameters())
    random.setstate(algo.orders_rng.getstate())
    for x, targets in data[:2]:
        algo.update(x, targets)
        with float64_default():
            trainers.fsmtl_step(theirs, their_optimizer, x, targets_list(targets, tasks), "pcgrad", 0.05, True)
        assert_same(ours, theirs, tolerance("adam"))
        sync(ours, algo.optimizer, theirs, their_optimizer)


# --------------------------------------------------------------------------------------------
# Resume identity


RESUME_HPARAMS = {"DWA": {"window": 1}, "F-MTL": {"rho": 0.5}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ROWS)
def test_state_dict_resumes_exactly(batches, name, tmp_path):
    """Two steps, save algorithm and optimizer through a file read as checkpoints are, load into
    fresh objects built under other global draws: the next step matches an uninterrupted run
    bit for bit (generators, histories, learned weights and their optimizers included)."""
    data, tasks = batches
    hparams = RESUME_HPARAMS.get(name, {})
    torch.manual_seed(11)
    net = MTAN(tasks, filters=FILTERS).double()
    algo = build(name, net, tasks, "adam", **hparams)
    scheduler = torch.optim.lr_scheduler.StepLR(algo.optimizer, step_size=1, gamma=0.5)
    for x, targets in data[:2]:
        algo.update(x, targets)
        scheduler.step()
    path = tmp_path / "checkpoint.pt"
    torch.save({"algorithm": algo.state_dict(), "optimizer": algo.optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    expected = []
    for x, targets in data[2:3]:
        expected.append(algo.update(x, targets))
        scheduler.step()

    torch.manual_seed(999)  # a fresh process: other global draws at construction
    random.seed(999)
    fresh_net = MTAN(tasks, filters=FILTERS).double()
    fresh = build(name, fresh_net, tasks, "adam", **hparams)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh.optimizer, step_size=1, gamma=0.5)
    fresh.load_state_dict(checkpoint["algorithm"])
    fresh.optimizer.load_state_dict(checkpoint["optimizer"])
    fresh_scheduler.load_state_dict(checkpoint["scheduler"])
    for (x, targets), stats in zip(data[2:3], expected, strict=True):
        assert fresh.update(x, targets) == stats
        fresh_scheduler.step()
    for a, b in zip(net.parameters(), fresh_net.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(net.buffers(), fresh_net.buffers(), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# Registration and spaces


def test_rows_are_registered_as_multi_task_with_valid_spaces():
    for name in ROWS:
        registered = get_algorithm(name)
        assert registered.task == MULTI_TASK and registered.cls.__name__.replace("_", "") in name.replace("-", "")
        for dataset in ("NYUv2", "Cityscapes", "DigitScenes", None):
            space = registered.space(hp.SpaceContext("large", dataset))
            assert not set(space) & hp.SHARED_HPARAM_NAMES, name
            draws = [hp.defaults(space)] + [hp.sample(space, seed) for seed in range(1, 30)]
            for drawn in draws:
                for key, value in drawn.items():
                    assert hp.coerce(key, space[key], value) == value, (name, key)


def space_default(name, key, dataset):
    return hp.defaults(get_algorithm(name).space(hp.SpaceContext("large", dataset)))[key]


def test_defaults_follow_the_source_of_each_data_set():
    # clipping: nash-mtl (NYUv2) clips only Nash-MTL; FAMO (Cityscapes, and the rest) PCGrad,
    # GradDrop, CAGrad
    for name in ("PCGrad", "GradDrop", "CAGrad"):
        assert (space_default(name, "max_norm", "NYUv2"), space_default(name, "max_norm", "Cityscapes")) == (0.0, 1.0)
        assert space_default(name, "max_norm", "DigitScenes") == 1.0
    assert (space_default("Nash-MTL", "max_norm", "NYUv2"), space_default("Nash-MTL", "max_norm", "Cityscapes")) == (1.0, 0.0)
    assert space_default("IMTL-G", "max_norm", "NYUv2") == space_default("MoCo", "max_norm", "Cityscapes") == 0.0
    assert (space_default("FAMO", "gamma", "NYUv2"), space_default("FAMO", "gamma", "Cityscapes")) == (0.001, 0.01)
    assert space_default("CAGrad", "c", None) == 0.4 and space_default("DWA", "temperature", None) == 2.0
    assert space_default("UW", "method_params_lr", None) == 0.025
    city = hp.defaults(get_algorithm("F-MTL").space(hp.SpaceContext("large", "Cityscapes")))
    assert (city["solver"], city["rho"], city["adaptive"], city["normalize"]) == ("mgda", 0.0025, False, False)
    assert space_default("F-MTL", "solver", "NYUv2") == "pcgrad" and get_algorithm("F-MTL").cls.perturbs_weights


def test_clipping_is_where_max_norm_says(batches):
    """With SGD and no momentum, one step moves the shared weights by lr times the gradient:
    clipped to norm 1 or not."""
    data, tasks = batches
    x, targets = data[0]
    moves = {}
    for max_norm in (0.0, 1.0):
        net = twins(tasks)[0]
        algo = build_algorithm("PCGrad", net, torch.optim.SGD(net.parameters(), lr=1.0), {"max_norm": max_norm}, loss_fn=MultiTaskLoss(tasks))
        before = [p.detach().clone() for p in algo.shared_parameters()]
        algo.update(x, targets)
        moves[max_norm] = torch.linalg.vector_norm(torch.cat([(p - b).flatten() for p, b in zip(algo.shared_parameters(), before, strict=True)]))
    assert moves[1.0].item() == pytest.approx(1.0, rel=1e-6) and moves[0.0] > 1.0


def test_build_algorithm_names_what_a_row_needs(batches):
    _, tasks = batches
    net = twins(tasks)[0]
    with pytest.raises(hp.HParamError, match="PCGrad is a multi-task algorithm: .* or pass loss_fn="):
        build_algorithm("PCGrad", net, torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(hp.HParamError, match="ERM is a domain-generalization algorithm: it takes no loss_fn"):
        build_algorithm("ERM", net, torch.optim.SGD(net.parameters(), lr=0.1), loss_fn=MultiTaskLoss(tasks))
    with pytest.raises(hp.HParamError, match="hparams.solver='sgd' is not valid; valid choices: mgda, pcgrad, cagrad, imtl"):
        build("F-MTL", net, tasks, solver="sgd")


def test_nash_mtl_without_cvxpy_says_what_to_install(batches, monkeypatch):
    _, tasks = batches
    real_import = builtins.__import__

    def no_cvxpy(name, *args, **kwargs):
        if name == "cvxpy" or name.startswith("cvxpy."):
            raise ImportError("No module named 'cvxpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cvxpy)
    net = twins(tasks)[0]
    with pytest.raises(MissingSolverError, match=r"needs cvxpy with the ECOS solver; install them with: pip install -e '\.\[mtl\]'"):
        build("Nash-MTL", net, tasks)


# --------------------------------------------------------------------------------------------
# Every row on DigitScenes with the narrow MTAN


@pytest.mark.parametrize("name", ROWS)
def test_every_row_trains_on_digit_scenes(name):
    data = DigitScenes()
    torch.manual_seed(0)
    net = mtan(data.tasks, "narrow")
    algo = build_algorithm(name, net, torch.optim.Adam(net.parameters(), lr=1e-3), dataset="DigitScenes", loss_fn=MultiTaskLoss(data.tasks))
    before = [p.detach().clone() for p in net.parameters()]
    for step in range(2):
        idx = list(range(8 * step, 8 * step + 8))
        stats = algo.update(data.train.images[idx], {k: v[idx] for k, v in data.train.targets.items()})
        assert all(type(v) is float and math.isfinite(v) for v in stats.values())
    assert {"loss", "loss_seg", "loss_depth", "loss_normal"} <= set(stats)
    assert moved(net, before)
