"""What a job computes in (``precision.*``, ``tf32``), the job identity of those keys, and the
measurements that show whether a perturbation survives it (``perturbation_fidelity``,
``grad_change``, ``noise_ratio``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sage_bench.algorithms import build_algorithm
from sage_bench.cli import main
from sage_bench.collect.loading import bf16_perturbation_runs
from sage_bench.config import ConfigError, load_job
from sage_bench.geometry import add_gaussian_noise_
from sage_bench.geometry.fidelity import (
    effective_perturbation,
    forward_rounding,
    perturbation_fidelity,
    relative_difference,
    round_to_tf32,
)
from sage_bench.precision import resolve_precision
from sage_bench.records import read_records

BF16 = torch.bfloat16


# ------------------------------------------------------------------------------ resolution


@pytest.mark.parametrize(
    "settings, tf32, device, perturbs, expected",
    [
        ({}, "auto", "cuda", True, (None, BF16, BF16, False)),  # the SAM family / SAGE on a GPU
        ({}, "auto", "cuda", False, (BF16, BF16, BF16, True)),  # ERM on a GPU: as before
        ({}, "auto", "cpu", True, (None, None, None, False)),  # the CPU stays float32
        ({}, "auto", "cpu", False, (None, None, None, False)),
        ({"train": "bf16"}, "auto", "cpu", True, (BF16, None, None, False)),  # explicit: CPU bf16 autocast
        ({"train": "fp32", "eval": "fp32", "polar": "fp32"}, True, "cuda", False, (None, None, None, True)),
        ({"eval": "bf16", "polar": "bf16"}, False, "cpu", False, (None, BF16, BF16, False)),
        ({}, True, "cpu", True, (None, None, None, False)),  # no TF32 on a CPU
    ],
)
def test_precision_resolution(settings, tf32, device, perturbs, expected):
    p = resolve_precision(settings, tf32, device, perturbs)
    assert (p.train, p.eval, p.polar, p.tf32) == expected


def test_precision_keys_are_checked(capsys):
    with pytest.raises(ConfigError, match=r"'precision.train': 'fp8'; valid choices: auto, fp32, bf16"):
        load_job(["precision.train=fp8"])
    with pytest.raises(ConfigError, match=r"'tf32': 'sometimes'; valid choices: auto, true, false"):
        load_job(["tf32=sometimes"])
    with pytest.raises(ConfigError, match="'autocast' is replaced by precision.train and precision.eval"):
        load_job(["autocast=none"])
    assert main(["train", "--dry-run", "precision.eval=half"]) == 2
    assert "precision.eval" in capsys.readouterr().err


def test_records_say_what_the_job_computed_in():
    args = load_job(["algorithm=SAGE", "device=cpu", "precision.train=bf16"]).record_args()
    assert args["precision"] == {"train": "bf16", "eval": "auto", "polar": "auto"} and args["tf32"] == "auto"
    assert args["computed_in"] == {"train": "bfloat16", "eval": "float32", "polar": "float32", "tf32": False}
    assert "autocast" not in args


# ------------------------------------------------------------------------------ identity


def test_default_precision_keeps_the_identity_of_existing_jobs():
    # the hashes jobs had before precision.* existed (computed with the default keys)
    # (SAGE's at perturbation=difference: its default, auto, changed what it computes on CUDA)
    assert load_job(["algorithm=SAGE", "perturbation=difference"]).job_id == "56f3053cb2f2caf651b8a65eb1b8ed1d"
    assert load_job(["algorithm=ERM", "dataset=ColoredDigits", "test_envs=[2]"]).job_id == "063f99c1e136dc9e660ff532f23103a9"


@pytest.mark.parametrize(
    "algorithm, override, same",
    [
        ("SAGE", "precision.train=bf16", False),
        ("SAGE", "precision.eval=fp32", False),
        ("SAGE", "precision.polar=fp32", False),
        ("SAGE", "tf32=true", False),
        ("SAGE", "compile=true", False),
        ("SAGE", "precision.train=fp32", True),  # what auto gives SAGE on every device
        ("SAGE", "tf32=false", True),
        ("ERM", "precision.train=fp32", False),  # auto is bf16 for ERM on a GPU
        ("ERM", "tf32=false", False),
        ("ERM", "tf32=true", True),
    ],
)
def test_a_run_in_another_precision_is_another_job(algorithm, override, same):
    default = load_job([f"algorithm={algorithm}", "perturbation=difference"])
    other = load_job([f"algorithm={algorithm}", "perturbation=difference", override])
    assert (other.job_id == default.job_id) is same


# ------------------------------------------------------------------------------ geometry


def _tf32_reference(x: torch.Tensor) -> torch.Tensor:
    """Round to 10 explicit mantissa bits, to nearest, ties away from zero, via frexp."""
    mantissa, exponent = torch.frexp(x.double())  # |mantissa| in [0.5, 1): 11 significant bits kept
    scaled = mantissa * 2.0**11
    rounded = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    return torch.ldexp(rounded / 2.0**11, exponent).float()


def test_tf32_rounding():
    x = torch.randn(10000) * torch.logspace(-20, 20, 10000)
    assert torch.equal(round_to_tf32(x), _tf32_reference(x))
    ulp = 2.0**-10
    halfway = torch.tensor([1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 4, 1 + 3 * ulp / 4])
    assert round_to_tf32(halfway).tolist() == [1 + ulp, -(1 + ulp), 1.0, 1 + ulp]
    exact = torch.tensor([1.0, 1 + ulp, 0.0, -2.5])
    assert torch.equal(round_to_tf32(exact), exact)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 3)
        self.ln = nn.LayerNorm(3)

    def forward(self, x):
        return self.ln(self.head(self.norm(self.conv(x)).mean(dim=(2, 3))))


def test_forward_rounding_rule():
    net = _Net()
    params = list(net.parameters())
    rounding = dict(zip([n for n, _ in net.named_parameters()], forward_rounding(net, params, BF16), strict=True))
    assert rounding == {
        "conv.weight": BF16, "conv.bias": BF16, "norm.weight": None, "norm.bias": None,
        "head.weight": BF16, "head.bias": BF16, "ln.weight": None, "ln.bias": None,
    }  # fmt: skip
    assert forward_rounding(net, params, None) == [None] * len(params)  # float32 on the CPU: no TF32


def test_fidelity_of_a_tiny_perturbation_in_both_precisions():
    torch.manual_seed(0)
    w = [torch.randn(64, 64) * 0.02, torch.randn(64) * 0.02]
    e = [torch.randn_like(t) * 1e-6 * t.norm() / math.sqrt(t.numel()) for t in w]  # rho = 1e-6 relative
    float32 = perturbation_fidelity(w, e, [None, None])
    bf16 = perturbation_fidelity(w, e, [BF16, BF16])
    assert float32 > 0.99 > 0.9 > bf16
    # the effective perturbation is what the rounded weights differ by, element by element
    effective = effective_perturbation(w, e, [BF16, None])
    assert torch.equal(effective[0], (w[0] + e[0]).to(BF16).float() - w[0].to(BF16).float())
    assert torch.equal(effective[1], (w[1] + e[1]) - w[1])
    cosine = torch.nn.functional.cosine_similarity(
        torch.cat([t.flatten() for t in e]).double(), torch.cat([t.flatten() for t in effective]).double(), dim=0
    )
    assert perturbation_fidelity(w, e, [BF16, None]) == pytest.approx(cosine.item(), rel=1e-9)
    # a perturbation large enough for bf16 survives it
    assert perturbation_fidelity(w, [t * 1e5 for t in e], [BF16, BF16]) > 0.99
    assert perturbation_fidelity(w, [torch.zeros_like(t) for t in w], [BF16, BF16]) == 1.0


def test_relative_difference():
    a, b = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])], [torch.tensor([0.0, 0.0]), torch.tensor([0.0])]
    assert relative_difference(a, a).item() == 0.0
    assert relative_difference([t * 2 for t in a], a).item() == pytest.approx(1.0)
    assert relative_difference(a, b).item() == math.inf and relative_difference(b, b).item() == 0.0


def test_noise_norm_is_the_norm_of_what_was_added():
    grads = [torch.randn(5, 3), torch.randn(7)]
    before = [g.clone() for g in grads]
    norm = add_gaussian_noise_(grads, 0.3, torch.Generator().manual_seed(1))
    added = torch.cat([(g - b).flatten() for g, b in zip(grads, before, strict=True)])
    assert norm.item() == pytest.approx(added.norm().item(), rel=1e-5)
    assert add_gaussian_noise_(grads, 0.0, torch.Generator()).item() == 0.0


# ------------------------------------------------------------------------------ algorithms


def _batches(n_domains=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 1, 6, 6, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n_domains)]


@pytest.mark.parametrize("name", ["SAM", "GSAM", "SAGM", "DISAM", "SAGE"])
def test_perturbation_algorithms_report_what_the_perturbation_does(name):
    torch.manual_seed(0)
    net = _Net()
    algorithm = build_algorithm(
        name, net, torch.optim.SGD(net.parameters(), lr=0.1), {"rho": 1e-2}, perturbation="difference"
    )
    stats = algorithm.update(_batches())
    assert stats["grad_change"] > 0 and "perturbation_fidelity" not in stats  # measured only when asked
    algorithm.measure_fidelity = True
    stats = algorithm.update(_batches(seed=1))
    assert stats["perturbation_fidelity"] > 0.99  # float32: the forward pass sees e
    algorithm.autocast_dtype = BF16  # CPU bf16 autocast, as precision.train=bf16
    algorithm.hparams["rho"] = 1e-7 if name == "SAGE" else 1e-6
    assert algorithm.update(_batches(seed=2))["perturbation_fidelity"] < 0.9
    assert ("noise_ratio" in stats) is (name == "SAGE")


def test_grad_change_is_zero_without_a_perturbation():
    torch.manual_seed(0)
    net = _Net()
    sam = build_algorithm("SAM", net, torch.optim.SGD(net.parameters(), lr=0.1), {"rho": 0.0})
    assert sam.update(_batches())["grad_change"] == 0.0
    sage = build_algorithm("SAGE", net, torch.optim.SGD(net.parameters(), lr=0.1), {"rho": 0.0, "noise": False})
    stats = sage.update(_batches())
    assert stats["grad_change"] < 1e-5 and stats["noise_ratio"] == 0.0  # per-domain passes vs one pass: rounding


def test_noise_ratio_is_the_added_noise_over_the_perturbed_gradient():
    torch.manual_seed(0)
    noisy_net, quiet_net = _Net(), _Net()
    quiet_net.load_state_dict(noisy_net.state_dict())
    before = [p.detach().clone() for p in noisy_net.parameters()]
    noisy = build_algorithm("SAGE", noisy_net, torch.optim.SGD(noisy_net.parameters(), lr=1.0), {"rho": 0.0, "gamma": 0.5})
    quiet = build_algorithm("SAGE", quiet_net, torch.optim.SGD(quiet_net.parameters(), lr=1.0), {"rho": 0.0, "noise": False})
    stats, quiet_stats = noisy.update(_batches()), quiet.update(_batches())

    def flat(tensors):
        return torch.cat([t.detach().flatten() for t in tensors])

    # SGD at lr 1 moves by minus the final gradient: the two steps differ by the noise
    noise = flat(quiet_net.parameters()) - flat(noisy_net.parameters())
    g_adv = flat(before) - flat(quiet_net.parameters())
    assert stats["beta"] > 0 and quiet_stats["noise_ratio"] == 0.0
    assert stats["noise_ratio"] == pytest.approx((noise.norm() / g_adv.norm()).item(), rel=1e-4)


# ------------------------------------------------------------------------------ a job


@pytest.mark.slow
def test_bf16_job_at_the_papers_rho_records_low_fidelity_and_warns(tmp_path, capsys):
    common = ["dataset=RotatedDigits", "algorithm=SAGE", "device=cpu", "hparams.rho=1e-6", "steps=2",
              "checkpoint_freq=1", "progress=false", f"output_dir={tmp_path}", "perturbation=difference"]  # fmt: skip
    assert main(["train", *common, "precision.train=bf16"]) == 0
    err = capsys.readouterr().err
    job = load_job([*common, "precision.train=bf16"]).job_dir
    fidelities = [r["perturbation_fidelity"] for r in read_records(job)]
    assert len(fidelities) == 2 and max(fidelities) < 0.2  # far below 0.9
    assert "perturbation_fidelity" in err and "set precision.train=fp32" in err
    assert "set precision.train=fp32" in (job / "out.txt").read_text()
    assert main(["train", *common]) == 0  # the defaults: float32 on the CPU
    err = capsys.readouterr().err
    records = read_records(load_job(common).job_dir)
    assert min(r["perturbation_fidelity"] for r in records) > 0.99 and "perturbation_fidelity" not in err
    assert all(r["grad_change"] > 0 and r["noise_ratio"] > 0 for r in records)


def test_collect_warns_about_gpu_runs_under_bf16_autocast():
    def record(algorithm, device, **args):
        return {"args": {"algorithm": algorithm, "device": device, "output_dir": f"runs/{algorithm}{device}", **args}}

    records = [
        record("SAGE", "cuda", autocast="bf16"),
        record("SAGE", "cuda:1", autocast="bf16"),
        record("SAM", "cpu", autocast="bf16"),  # the CPU ignored autocast
        record("ERM", "cuda", autocast="bf16"),  # perturbs nothing
        record("GSAM", "cuda", autocast="none"),
        record("SAGM", "cuda", precision={"train": "auto"}),  # written since precision.* exists
        record("MyOwn", "cuda", autocast="bf16"),  # not registered here: unknown
    ]
    warnings = bf16_perturbation_runs(records)
    assert len(warnings) == 1 and warnings[0].startswith("SAGE: 2 run(s) trained on CUDA under bf16 autocast")


def test_collect_prints_the_bf16_warning(tmp_path, capsys):
    job = tmp_path / "sweep" / "job"
    job.mkdir(parents=True)
    record = {"step": 0, "env0_in_acc": 0.5, "env0_out_acc": 0.5, "env1_in_acc": 0.5, "env1_out_acc": 0.5,
              "args": {"dataset": "Toy", "algorithm": "SAM", "test_envs": [0], "trial_seed": 0, "hparams_seed": 0,
                       "device": "cuda", "autocast": "bf16"}}  # fmt: skip
    (job / "results.jsonl").write_text(json.dumps(record) + "\n")
    assert main(["collect", str(tmp_path / "sweep")]) == 0
    assert "warning: SAM: 1 run(s) trained on CUDA under bf16 autocast" in capsys.readouterr().err
