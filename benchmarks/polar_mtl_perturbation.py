"""Cubic (the paper's Eq. 7) vs quintic (Algorithm 1's "NewtonSchulz5") polar factor on the narrow MTAN.

    python benchmarks/polar_mtl_perturbation.py --steps 10 --repeats 20

The narrow MTAN (DigitScenes' network) trains ``--steps`` steps of LS; then, on the next batch's
mean task gradient, SAGE's spectral perturbation is computed with each polar method (``svd`` is
exact) and compared: per-call time (median of ``--repeats``, measured side by side in one run,
with the ratio to cubic), each weight's orthogonality error ``||Q^T Q - I||_F / sqrt(r)``
(mean and largest over tensors), and how far each perturbation is from the exact one
(relative norm of the difference, over all parameters). Then the time of whole SAGE-LS steps
with each method (median of ``--repeats``), ratio to cubic. One thread, float32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sage_bench.algorithms import build_multitask_algorithm
from sage_bench.data.digit_scenes import DigitScenes
from sage_bench.geometry import spectral_perturbation
from sage_bench.geometry.polar import orthogonality_error, polar_factor
from sage_bench.models.mtan import mtan
from sage_bench.mtl import MultiTaskLoss

METHODS = ("cubic", "quintic", "svd")


def _timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--ns-steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = DigitScenes(train_scenes=8 * (args.steps + 1 + args.repeats + 1))
    net = mtan(data.tasks, "narrow")
    loss = MultiTaskLoss(data.tasks)
    ls = build_multitask_algorithm("LS", net, torch.optim.Adam(net.parameters(), 5e-3), loss)
    batches = [(data.train.images[i : i + 8], {k: v[i : i + 8] for k, v in data.train.targets.items()})
               for i in range(0, len(data.train), 8)]  # fmt: skip
    for x, targets in batches[: args.steps]:
        ls.update(x, targets)
    x, targets = batches[args.steps]
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(loss(net(x), targets).values()) / len(data.tasks), params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
    params, grads = [p for p, _ in pairs], [g for _, g in pairs]
    matrices = [g.reshape(g.shape[0], -1) for g in grads if g.ndim >= 2]
    print(f"narrow MTAN after {args.steps} LS steps: {len(matrices)} weight matrices "
          f"(largest {max(m.shape for m in matrices)}), {args.ns_steps} Newton-Schulz steps, one thread")  # fmt: skip

    eps = {m: spectral_perturbation(params, grads, 1e-4, polar=m, ns_steps=args.ns_steps) for m in METHODS}
    exact = torch.cat([e.flatten() for e in eps["svd"]])
    times = {m: _timed(lambda m=m: spectral_perturbation(params, grads, 1e-4, polar=m, ns_steps=args.ns_steps), args.repeats)
             for m in METHODS}  # fmt: skip
    print(f"{'polar':<8}{'ms/call':>9}{'/cubic':>8}{'orth err mean':>15}{'max':>8}{'|e - e_svd|/|e_svd|':>22}")
    for m in METHODS:
        errors = torch.stack([orthogonality_error(polar_factor(g, m, args.ns_steps)) for g in matrices])
        flat = torch.cat([e.flatten() for e in eps[m]])
        distance = ((flat - exact).norm() / exact.norm()).item()
        print(f"{m:<8}{1e3 * times[m]:>9.2f}{times[m] / times['cubic']:>8.2f}{errors.mean().item():>15.3f}"
              f"{errors.max().item():>8.3f}{distance:>22.3f}")  # fmt: skip
    cubic, quintic = (torch.cat([e.flatten() for e in eps[m]]) for m in ("cubic", "quintic"))
    print(f"quintic vs cubic: |e_q - e_c| / |e_c| = {((quintic - cubic).norm() / cubic.norm()).item():.3f}, "
          f"cosine {torch.nn.functional.cosine_similarity(quintic, cubic, dim=0).item():.4f}")  # fmt: skip

    step_times = {}
    for m in METHODS:
        torch.manual_seed(0)
        sage_net = mtan(data.tasks, "narrow")
        sage = build_multitask_algorithm("SAGE-LS", sage_net, torch.optim.Adam(sage_net.parameters(), 5e-3), loss, {"polar": m})
        batch = iter(batches[args.steps + 1 :] * 2)
        step_times[m] = _timed(lambda s=sage, b=batch: s.update(*next(b)), args.repeats)
    print("SAGE-LS step (batch 8): " + ", ".join(
        f"{m} {1e3 * t:.0f} ms ({t / step_times['cubic']:.2f} x cubic)" for m, t in step_times.items()))  # fmt: skip


if __name__ == "__main__":
    main()
