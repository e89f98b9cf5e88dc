"""How well each way of computing the perturbed gradient resolves the change the perturbation
makes to the gradient, and what a step of each costs, side by side in one run.

    python benchmarks/perturbation_precision.py                 # ViT-Ti at 64 px and the narrow MTAN, CPU
    python benchmarks/perturbation_precision.py --device cuda --image-size 224 --batch 12

Part 1, for a timm ViT-Ti (random initialisation) and the narrow MTAN on DigitScenes: for SAGE's
spectral perturbation at rho 1e-6 (the paper's domain-generalization setting) and 1e-4 (its
multi-task setting) and SAM's at rho 0.05, the change ``g(w + e) - g(w)`` of the gradient of the
batch's (mean) loss relative to ``||g||``, and the relative error of that change computed by the
float32 difference, the bf16 difference, the float32 linearized product and the bf16 linearized
product (``sage_bench.geometry.linearized.ChangeProbe``) against the reference (float64 on a
CPU; float32 without TF32 on CUDA, where the float32 difference is the reference: error 0).

Part 2: one training step (three domains of ``--batch`` images) of SAGE by the float32
difference, SAGE linearized in bf16, SAGE by the bf16 difference and ERM in bf16 on the ViT, timed
round-robin (each round times every variant once, back to back; ratios are taken within a round
and their median printed), so a machine whose load drifts slows both sides of a ratio alike.
On a CPU, bf16 autocast is emulated and slower than float32: the step-time ratios there say what
the product costs in passes, not what a GPU gains from bf16 (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from sage_bench.algorithms import build_algorithm
from sage_bench.geometry import sam_perturbation, spectral_perturbation
from sage_bench.geometry.linearized import Candidate, ChangeProbe

BF16 = torch.bfloat16
CANDIDATES = (
    Candidate("difference", None),
    Candidate("difference", BF16),
    Candidate("linearized", None),
    Candidate("linearized", BF16),
)
REGIMES = (("SAGE", 1e-6), ("SAGE", 1e-4), ("SAM", 0.05))


def vit_tiny(image_size: int, classes: int = 7) -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", num_classes=classes, pretrained=False, img_size=image_size)


def vit_problem(args, device):
    torch.manual_seed(0)
    net = vit_tiny(args.image_size).to(device)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 7, (args.batch,), device=device)
    return net, lambda network: F.cross_entropy(network(x.to(next(network.parameters()).dtype)), y)


def mtan_problem(args, device):
    from sage_bench.data import DigitScenes
    from sage_bench.models.mtan import mtan
    from sage_bench.mtl import MultiTaskLoss

    torch.manual_seed(0)
    data = DigitScenes()
    net = mtan(data.tasks, "narrow").to(device)
    x = data.train.images[: args.batch].to(device)
    targets = {k: v[: args.batch].to(device) for k, v in data.train.targets.items()}
    loss_fn = MultiTaskLoss(data.tasks)

    def loss(network):
        dtype = next(network.parameters()).dtype
        losses = loss_fn(network(x.to(dtype)), {k: v.to(dtype) if v.is_floating_point() else v for k, v in targets.items()})
        return torch.stack([v.to(dtype) for v in losses.values()]).mean()

    return net, loss


def precision_table(name: str, net, loss) -> None:
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(net), params)
    probe = ChangeProbe(net, loss)
    print(f"\n{name}: relative error of the change of g (cosine with the reference in brackets)")
    header = ["perturbation", "change of g"] + [c.name.replace("_", " ") for c in CANDIDATES]
    print(" | ".join(f"{h:>22}" for h in header))
    for algorithm, rho in REGIMES:
        if algorithm == "SAGE":
            e = spectral_perturbation(params, grads, rho)
        else:
            e = sam_perturbation(grads, rho)
        reference = probe.reference(params, e)
        cells = [f"{algorithm} rho {rho:g}", f"{reference.norm() / torch.cat([g.flatten() for g in grads]).double().norm():.2e}"]
        for c in CANDIDATES:
            change = (probe.difference(net, params, e, c.dtype) if c.method == "difference"
                      else probe.linearized(params, e, c.dtype))  # fmt: skip
            error = (change - reference).norm() / reference.norm()
            cosine = change @ reference / (change.norm() * reference.norm())
            cells.append(f"{error:.2e} ({cosine:.4f})")
        print(" | ".join(f"{c:>22}" for c in cells))


VARIANTS = {
    "SAGE difference fp32": ("SAGE", "difference", None),
    "SAGE linearized bf16": ("SAGE", "linearized", BF16),
    "SAGE difference bf16": ("SAGE", "difference", BF16),
    "ERM bf16": ("ERM", "difference", BF16),
}


def step_times(args, device) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device),
         torch.randint(7, (args.batch,), generator=g).to(device))
        for _ in range(3)
    ]  # fmt: skip
    algorithms = {}
    for label, (name, method, dtype) in VARIANTS.items():
        torch.manual_seed(0)
        net = vit_tiny(args.image_size).to(device)
        hparams = {"rho": 1e-6, "gamma": 1e-6} if name == "SAGE" else {}
        algorithm = build_algorithm(name, net, torch.optim.Adam(net.parameters(), 1e-6), hparams,
                                    perturbation=method, num_domains=3)  # fmt: skip
        algorithm.autocast_dtype = dtype
        algorithm.update(batches)  # warm-up
        algorithms[label] = algorithm
    times: dict[str, list[float]] = {label: [] for label in VARIANTS}
    for _ in range(args.repeats):
        for label, algorithm in algorithms.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            algorithm.update(batches)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - start)
    base = "SAGE difference fp32"
    print(f"\nOne step, ViT-Ti at {args.image_size} px, 3 domains x {args.batch} images, {device} "
          f"({torch.get_num_threads()} threads), median of {args.repeats} rounds")  # fmt: skip
    print(f"{'variant':>24} | {'seconds':>8} | {'/ ' + base:>26} | {'/ ERM bf16':>10}")
    for label in VARIANTS:
        ratio = statistics.median(a / b for a, b in zip(times[label], times[base], strict=True))
        erm = statistics.median(a / b for a, b in zip(times[label], times["ERM bf16"], strict=True))
        print(f"{label:>24} | {statistics.median(times[label]):8.3f} | {ratio:26.2f} | {erm:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-table", action="store_true", help="only the step times")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not args.skip_table:
        precision_table(f"ViT-Ti at {args.image_size} px, batch {args.batch}", *vit_problem(args, device))
        precision_table(f"narrow MTAN on DigitScenes, batch {args.batch}", *mtan_problem(args, device))
    step_times(args, device)


if __name__ == "__main__":
    main()
