"""Every multi-task row against a transcription of its trainer (float64, SGD, three steps) on a
narrow MTAN that has the same weights as the lineage's model; SAGE's reductions; checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_bench.algorithms import MULTI_TASK, algorithms, build_multitask_algorithm
from sage_bench.algorithms.registry import algorithm_space
from sage_bench.data.digit_scenes import DigitScenes
from sage_bench.hparams import HParamError
from sage_bench.models.mtan import MTAN
from sage_bench.mtl import MultiTaskLoss
from tests.reference import mtl_steps as ref
from tests.reference.mtan import SegNetMtan

FILTERS = (4, 8, 8, 8, 8)
STEPS = 3


@pytest.fixture(scope="module")
def batches():
    data = DigitScenes()
    out = []
    for s in range(STEPS + 1):
        idx = [2 * s, 2 * s + 1]
        x = data.train.images[idx].double()
        t = {k: v[idx] for k, v in data.train.targets.items()}
        t = {k: v.double() if v.is_floating_point() else v for k, v in t.items()}
        out.append((x, t))
    return out, data.tasks


def _twins(tasks, seed=5):
    torch.manual_seed(seed)
    theirs = SegNetMtan(n_tasks=len(tasks), class_nb=tasks[0].channels, filter=FILTERS).double()
    torch.manual_seed(seed)
    ours = MTAN(tasks, filters=FILTERS).double()
    return ours, theirs


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _targets_list(targets, tasks):
    return [targets[t.name] for t in tasks]


def _assert_same(ours, theirs, atol):
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=atol), f"{name}: max diff {(a - b).abs().max().item():.2e}"
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=0, atol=atol), name


def _build(name, net, tasks, **hparams):
    return build_multitask_algorithm(name, net, _sgd(net.parameters()), MultiTaskLoss(tasks), hparams)


def test_stl_reports_its_own_tasks_loss_as_the_step_loss_when_an_untrained_head_gives_nan():
    """An untrained head that outputs an exact zero vector makes the normals' loss NaN (L2
    normalisation without epsilon); STL trains only its task, so its step loss, which the job
    checks for divergence, is that task's and stays finite."""
    data = DigitScenes(train_scenes=8, val_scenes=1)
    torch.manual_seed(0)
    net = MTAN(data.tasks, filters=FILTERS)
    for p in net.pred["normal"].parameters():
        torch.nn.init.zeros_(p)  # the normals head outputs 0 everywhere: 0 / 0
    algo = build_multitask_algorithm("STL", net, torch.optim.Adam(net.parameters(), 1e-3), MultiTaskLoss(data.tasks), {"task": "seg"})
    stats = algo.update(data.train.images, data.train.targets)
    assert np.isnan(stats["loss_normal"]) and np.isfinite(stats["loss_seg"])
    assert stats["loss"] == stats["loss_seg"]
    assert all(torch.isfinite(p).all() for p in net.parameters())


PLAIN = [
    ("STL", {"task": "depth"}, lambda m, o, x, t: ref.stl_step(m, o, x, t, main_task=1), 1e-10),
    ("LS", {}, ref.ls_step, 1e-10),
    ("MGDA", {}, ref.mgda_step, 1e-10),
    # least squares stops within xtol 1e-8 of FairGrad's w; both sides form A differently
    ("FairGrad", {"alpha": 2.0}, lambda m, o, x, t: ref.fairgrad_step(m, o, x, t, alpha=2.0), 1e-7),
]


@pytest.mark.parametrize("name, hparams, reference_step, atol", PLAIN, ids=[p[0] for p in PLAIN])
def test_plain_rows_match_their_trainers(batches, name, hparams, reference_step, atol):
    data, tasks = batches
    ours, theirs = _twins(tasks)
    algo = _build(name, ours, tasks, **hparams)
    optimizer = _sgd(theirs.parameters())
    for x, targets in data[:STEPS]:
        stats = algo.update(x, targets)
        with _float64_default():
            reference_step(theirs, optimizer, x, _targets_list(targets, tasks))
    _assert_same(ours, theirs, atol)
    assert set(stats) >= {"loss", "loss_seg", "loss_depth", "loss_normal"}
    if name == "MGDA":
        assert sum(stats[f"weight_{t.name}"] for t in tasks) == pytest.approx(len(tasks))


class _float64_default:
    """The transcriptions' ``torch.Tensor(...)`` allocations follow the default dtype."""

    def __enter__(self):
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.previous)


SAMO_ROWS = [("SAMO-LS", "ls"), ("SAMO-MGDA", "mgda"), ("SAMO-FairGrad", "fairgrad")]


@pytest.mark.slow
@pytest.mark.parametrize("cityscapes", [False, True], ids=["nyu-trainer", "cityscapes-trainer"])
@pytest.mark.parametrize("name, method", SAMO_ROWS, ids=[r[0] for r in SAMO_ROWS])
def test_samo_matches_its_trainer(batches, name, method, cityscapes):
    data, tasks = batches
    ours, theirs = _twins(tasks)
    hparams = {"rho": 0.05, "beta": 0.5, "zo_eps": 0.01}
    if cityscapes:
        hparams |= {"zo_mix": "layerwise", "accumulate_previous": True}
    algo = _build(name, ours, tasks, **hparams)
    optimizer = _sgd(theirs.parameters())
    np.random.seed(123)
    algo.zo_rng.seed(123)  # the trainer draws the zeroth-order seeds from NumPy's global generator
    for x, targets in data[:STEPS]:
        stats = algo.update(x, targets)
        with _float64_default():
            ref.samo_step(theirs, optimizer, x, _targets_list(targets, tasks), method, cityscapes=cityscapes, **hparams_for_ref(hparams))
    _assert_same(ours, theirs, 1e-7 if method == "fairgrad" else 1e-10)
    assert stats["perturbed_loss"] != stats["loss"]


def hparams_for_ref(hparams):
    return {k: hparams[k] for k in ("rho", "beta", "zo_eps")}


SAGE_ROWS = [
    ("SAGE-LS", "ls", "mean"), ("SAGE-MGDA", "mgda", "mean"), ("SAGE-FairGrad", "fairgrad", "mean"),
    ("SAGE-SAMO-LS", "ls", "samo"), ("SAGE-SAMO-MGDA", "mgda", "samo"), ("SAGE-SAMO-FairGrad", "fairgrad", "samo"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name, method, ascent", SAGE_ROWS, ids=[r[0] for r in SAGE_ROWS])
def test_sage_rows_match_a_plain_restatement(batches, name, method, ascent):
    data, tasks = batches
    ours, theirs = _twins(tasks)
    # the restatement descends as SAMO-X: SAGE-X's own default (X's descent) is tested below
    algo = _build(name, ours, tasks, rho=0.02, gamma=0.01, polar="svd", descent="samo")
    assert algo.ascent == ascent and algo.hparams["descent"] == "samo"
    optimizer = _sgd(theirs.parameters())
    generator = torch.Generator().manual_seed(algo.noise.seed)
    np.random.seed(7)
    algo.zo_rng.seed(7)
    for x, targets in data[:STEPS]:
        stats = algo.update(x, targets)
        with _float64_default():
            S = ref.sage_mtl_step(theirs, optimizer, x, _targets_list(targets, tasks), method, 0.02, 0.01, generator, ascent=ascent)
        # geometry's mean_pairwise_cosine forms the Gram matrix in float32
        assert stats["S"] == pytest.approx(S, abs=1e-6)
        assert stats["beta"] == pytest.approx(0.01 * (1 - S), abs=1e-8) and stats["beta"] > 0
        _assert_same(ours, theirs, 1e-7 if method == "fairgrad" else 1e-9)
        # the polar factor of a nearly rank-deficient gradient amplifies the 1e-11 that S's
        # float32 Gram puts into the noise: start each step from the same state
        _sync(ours, algo.optimizer, theirs, optimizer)


def _sync(ours, our_optimizer, theirs, their_optimizer):
    with torch.no_grad():
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            b.copy_(a)
            their_optimizer.state[b]["momentum_buffer"] = our_optimizer.state[a]["momentum_buffer"].clone()
        for a, b in zip(ours.buffers(), theirs.buffers(), strict=True):
            b.copy_(a)


class _RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of every gradient it steps with (``None`` where a parameter has none)."""

    def __init__(self, params):
        super().__init__(params, lr=0.05, momentum=0.9)
        self.seen: list[list[torch.Tensor | None]] = []

    def step(self, closure=None):
        self.seen.append([None if p.grad is None else p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


@pytest.mark.parametrize("row", ["LS", "MGDA", "FairGrad"])
def test_sage_x_at_rho_and_gamma_zero_takes_the_steps_of_x(batches, row):
    """SAGE-X with its defaults, only rho = gamma = 0 given: X's gradients and weights, step for step."""
    data, tasks = batches
    nets = [_twins(tasks)[0] for _ in range(2)]
    optimizers = [_RecordingSGD(net.parameters()) for net in nets]
    sage = build_multitask_algorithm(f"SAGE-{row}", nets[0], optimizers[0], MultiTaskLoss(tasks), {"rho": 0.0, "gamma": 0.0})
    plain = build_multitask_algorithm(row, nets[1], optimizers[1], MultiTaskLoss(tasks), {})
    assert sage.hparams["descent"] == "base" and sage.ascent == "mean"
    atol = 1e-9 if row == "FairGrad" else 1e-12  # FairGrad's least squares stops within its tolerance
    for step, (x, targets) in enumerate(data):
        sage.update(x, targets)
        plain.update(x, targets)
        names = [name for name, _ in nets[0].named_parameters()]
        for name, a, b in zip(names, optimizers[0].seen[step], optimizers[1].seen[step], strict=True):
            assert (a is None) == (b is None), (step, name)
            if a is not None:
                assert torch.allclose(a, b, rtol=0, atol=atol), (step, name, (a - b).abs().max().item())
        for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
            assert torch.allclose(a, b, rtol=0, atol=atol), (step, name)
    assert len(optimizers[0].seen) == len(data) > 1


@pytest.mark.parametrize("solver, row", [("ls", "LS"), ("mgda", "MGDA"), ("fairgrad", "FairGrad")])
def test_sage_x_with_samo_descent_at_rho_zero_is_samo_x(batches, solver, row):
    """The other reading, one override away: SAGE-X descending as SAMO-X is SAMO-X at rho 0."""
    data, tasks = batches
    nets = [_twins(tasks)[0] for _ in range(2)]
    sage = _build(f"SAGE-{row}", nets[0], tasks, rho=0.0, gamma=0.0, descent="samo")
    samo = _build(f"SAMO-{row}", nets[1], tasks, rho=0.0)
    for x, targets in data[:2]:
        sage.update(x, targets)
        samo.update(x, targets)
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12 if solver != "fairgrad" else 1e-9), name


def test_scale_factors_of_samo_descent(batches):
    _, tasks = batches
    net = _twins(tasks)[0]
    g = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    losses = torch.ones(3, dtype=torch.float64)
    from sage_bench.mtl import aggregate

    for name, solver, factor, options in (("SAMO-LS", "ls", 3, {}), ("SAMO-MGDA", "mgda", 3, {}), ("SAMO-FairGrad", "fairgrad", 1, {"residual": "samo", "alpha": 2.0})):
        algo = _build(name, net, tasks)
        expected = aggregate(solver, g, losses, **options)[0] * factor
        assert torch.allclose(algo.samo_direction(g, losses), expected, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["FairGrad", "SAMO-MGDA", "SAGE-SAMO-FairGrad", "SAGE-LS"])
def test_state_dict_resumes_exactly(batches, name, tmp_path):
    """Two steps, save algorithm and optimizer, load into fresh objects: the third step matches
    an uninterrupted run (generators, SAMO's seed stream and previous gradients included)."""
    data, tasks = batches
    extra = {"accumulate_previous": True, "zo_mix": "layerwise"} if name.startswith("SAMO") else {}
    extra |= {"gamma": 0.01} if name.startswith("SAGE") else {}
    torch.manual_seed(11)
    net = _twins(tasks)[0]
    algo = _build(name, net, tasks, **extra)
    for x, targets in data[:2]:
        algo.update(x, targets)
    # through a file read as checkpoints are (weights_only: tensors and plain containers only)
    path = tmp_path / "checkpoint.pt"
    torch.save({"algorithm": algo.state_dict(), "optimizer": algo.optimizer.state_dict()}, path)
    checkpoint = torch.load(path, weights_only=True)
    saved_algo, saved_opt = checkpoint["algorithm"], checkpoint["optimizer"]
    x, targets = data[2]
    expected = algo.update(x, targets)

    torch.manual_seed(999)  # a fresh process: other global draws at construction
    fresh_net = MTAN(tasks, filters=FILTERS).double()
    fresh = _build(name, fresh_net, tasks, **extra)
    fresh.load_state_dict(saved_algo)
    fresh.optimizer.load_state_dict(saved_opt)
    got = fresh.update(x, targets)
    assert got == pytest.approx(expected, rel=1e-12)
    for a, b in zip(net.parameters(), fresh_net.parameters(), strict=True):
        assert torch.equal(a, b)


def test_rows_spaces_and_errors(batches):
    _, tasks = batches
    rows = [
        "STL", "LS", "MGDA", "FairGrad", "SAMO-LS", "SAMO-MGDA", "SAMO-FairGrad", "SAGE-LS", "SAGE-MGDA",
        "SAGE-FairGrad", "SAGE-SAMO-LS", "SAGE-SAMO-MGDA", "SAGE-SAMO-FairGrad",
    ]  # fmt: skip
    registered = list(algorithms(MULTI_TASK))
    assert [name for name in registered if name in rows] == rows  # in registration order

    def multitask_space(name):
        return algorithm_space(name)

    sage = multitask_space("SAGE-FairGrad")
    assert sage["rho"].default == 1e-4 and sage["gamma"].default == 1e-5 and sage["alpha"].default == 2.0
    assert multitask_space("SAGE-SAMO-LS")["ascent"].default == "samo"
    assert multitask_space("SAGE-SAMO-LS")["descent"].default == "samo" and sage["descent"].default == "base"
    # SAGE-X reads no zeroth-order knob, so it has none (they would enter its jobs' identity)
    assert not {"ascent", "beta", "zo_eps", "zo_mix", "accumulate_previous"} & set(sage)
    assert multitask_space("SAMO-FairGrad")["rho"].default == 0.001 and multitask_space("SAMO-LS")["beta"].default == 0.5
    net = _twins(tasks)[0]
    with pytest.raises(HParamError, match="unknown algorithm 'PCGrad-ish'; valid choices: .*STL"):
        multitask_space("PCGrad-ish")
    with pytest.raises(HParamError, match="ERM is a domain-generalization algorithm.*multi-task algorithms are STL, LS"):
        _build("ERM", net, tasks)
    with pytest.raises(HParamError, match="unknown hyperparameter 'alpah'"):
        _build("FairGrad", net, tasks, alpah=1.0)
    with pytest.raises(HParamError, match="valid choices: samo, samo_mean"):
        _build("SAGE-SAMO-LS", net, tasks, ascent="mean")
    with pytest.raises(HParamError, match="unknown hyperparameter 'ascent'"):
        _build("SAGE-LS", net, tasks, ascent="samo")
    with pytest.raises(ValueError, match="tasks: seg, depth, normal"):
        _build("STL", net, tasks, task="edges")
