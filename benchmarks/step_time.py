"""Time one training step of ERM, SAM and SAGE side by side, and print the ratios.

    python benchmarks/step_time.py                  # ViT-Tiny/16 at 224px, K = 3 and 5, CPU
    python benchmarks/step_time.py --device cuda --image-size 224 --domains 3 5

SAGE is timed with each way of computing per-domain gradients (``domain_grads``: ``chunks``,
one pass per domain's own examples; ``concat``, one pass over the whole batch then K
backward passes; ``vmap``). The algorithms are timed round-robin in one process: each round
times every variant once, back to back, and a ratio is taken within the round, so a machine
whose load drifts slows both sides of a ratio alike. Printed: the median step time over
``--repeats`` rounds and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models import VisionTransformer

from sage_bench.algorithms import build_algorithm


def vit_tiny(image_size: int, classes: int) -> torch.nn.Module:
    """ViT-Ti/16: 12 blocks, width 192, 3 heads (5.5M parameters at 224px)."""
    return VisionTransformer(
        image_size=image_size, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192,
        mlp_dim=768, num_classes=classes,
    )  # fmt: skip


VARIANTS = {
    "ERM": ("ERM", {}),
    "SAM": ("SAM", {"rho": 0.05}),
    "SAGE (chunks)": ("SAGE", {"rho": 1e-3, "gamma": 1e-3, "domain_grads": "chunks"}),
    "SAGE (concat, reference)": ("SAGE", {"rho": 1e-3, "gamma": 1e-3, "domain_grads": "concat"}),
    "SAGE (vmap)": ("SAGE", {"rho": 1e-3, "gamma": 1e-3, "domain_grads": "vmap"}),
}


def measure(k: int, args) -> dict[str, list[float]]:
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device),
         torch.randint(args.classes, (args.batch,), generator=g).to(device))
        for _ in range(k)
    ]  # fmt: skip
    algorithms = {}
    for label, (name, hparams) in VARIANTS.items():
        if label == "SAGE (vmap)" and args.skip_vmap:
            continue
        torch.manual_seed(0)
        net = vit_tiny(args.image_size, args.classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)
        algo = build_algorithm(name, net, opt, hparams)
        if device.type == "cuda" and args.bf16:
            algo.autocast_dtype = torch.bfloat16
        algorithms[label] = algo

    def step(algo):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        algo.update(batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for algo in algorithms.values():  # warm-up
        for _ in range(args.warmup):
            step(algo)
    times = {label: [] for label in algorithms}
    for _ in range(args.repeats):
        for label, algo in algorithms.items():
            times[label].append(step(algo))
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--batch", type=int, default=4, help="examples per domain")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--skip-vmap", action="store_true")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"ViT-Ti/16 at {args.image_size}px, {args.batch} examples per domain")  # fmt: skip
    for k in args.domains:
        t = measure(k, args)
        print(f"\nK = {k} domains ({k * args.batch} examples per step)")
        print(f"  {'variant':<26} {'s/step':>8} {'/ERM':>6} {'/SAM':>6}")
        for label, seconds in t.items():
            print(
                f"  {label:<26} {statistics.median(seconds):8.3f} "
                f"{median_ratio(seconds, t['ERM']):6.2f} {median_ratio(seconds, t['SAM']):6.2f}"
            )


if __name__ == "__main__":
    main()
