"""A self-check of what a GPU computes and how fast: no data, no weights, one command.

    python benchmarks/gpu_check.py            # CUDA if present: random-init CLIP ViT-B/16 at 224 px
    python benchmarks/gpu_check.py --device cpu   # CLIP ViT-Ti/16 shape at 224 px (quicker)

At the paper's batch (12 images per domain, 3 domains) it prints, per algorithm (ERM, SAM,
SAGE):

- the step time in each training precision (float32 without TF32, float32 with TF32, bf16
  autocast; on the CPU float32 only: CPU bf16 speed says nothing about a GPU) and the ratios
  SAM/ERM and SAGE/SAM, timed round-robin so that load drifting on a shared machine slows both
  sides of a ratio alike, and which precision ``precision.train=auto`` picks;
- the peak memory of a step (CUDA: allocated; CPU: the process's resident set);
- ``perturbation_fidelity`` of SAM (rho 0.05) and SAGE (the paper's rho 1e-6) in each
  precision, from one update each (2 images per domain: the fidelity depends on the weights and
  the perturbation, not the batch);
- SAGE by the float32 difference, SAGE linearized in bf16 and ERM in bf16, side by side, and the
  errors ``perturbation=auto`` measures on this network at SAGE's and SAM's radii
  (``sage_bench.algorithms.perturbation``);
- the Newton-Schulz time of one SAGE step (its polar factors alone), float32 and bf16;
- evaluation images per second in bf16 autocast (the default on CUDA) and float32.

Exits with code 1 if the fidelity in the default precision (``precision.train=auto``) is below
0.99 for SAM or SAGE.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from contextlib import contextmanager

import torch

from sage_bench.algorithms import build_algorithm
from sage_bench.geometry import spectral_perturbation
from sage_bench.models import build_network
from sage_bench.precision import resolve_precision

DOMAINS, PER_DOMAIN, CLASSES = 3, 12, 7  # the paper's batch: 12 images per training domain
ALGORITHMS = {"ERM": {}, "SAM": {"rho": 0.05}, "SAGE": {"rho": 1e-6, "gamma": 1e-6}}
VIT_TINY = {  # ViT-Ti/16: 12 blocks of width 192, 3 heads
    "embed_dim": 192,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 192, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


def network(device: torch.device) -> torch.nn.Module:
    """A randomly initialised CLIP image tower with a linear head (ViT-B/16 on CUDA, ViT-Ti/16 on CPU)."""
    torch.manual_seed(0)
    overrides = None if device.type == "cuda" else VIT_TINY
    net = build_network("clip", (3, 224, 224), CLASSES, {}, head="linear", model="ViT-B-16", weights=None,
                        model_overrides=overrides)  # fmt: skip
    return net.to(device)


def batches(device: torch.device, per_domain: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(per_domain, 3, 224, 224, generator=g).to(device), torch.randint(CLASSES, (per_domain,), generator=g).to(device))
        for _ in range(DOMAINS)
    ]  # fmt: skip


# precision name -> (autocast dtype, TF32)
PRECISIONS = {"fp32": (None, False), "fp32+tf32": (None, True), "bf16": (torch.bfloat16, False)}


@contextmanager
def precision(algorithm, name: str):
    dtype, tf32 = PRECISIONS[name]
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    algorithm.autocast_dtype = dtype
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def auto_name(device: torch.device, perturbs: bool) -> str:
    """Which of PRECISIONS ``precision.train=auto`` (with ``tf32=auto``) picks."""
    p = resolve_precision({}, "auto", device.type, perturbs)
    return "bf16" if p.train is not None else ("fp32+tf32" if p.tf32 else "fp32")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def step_times(device: torch.device, names: list[str], steps: int) -> tuple[dict, dict]:
    """Median seconds per step of every (algorithm, precision), timed round-robin, and peak memory."""
    data = batches(device, PER_DOMAIN)
    algorithms = {}
    for name, hparams in ALGORITHMS.items():
        net = network(device)
        algorithms[name] = build_algorithm(
            name, net, torch.optim.Adam(net.parameters(), lr=1e-6), hparams, perturbation="difference"
        )
    memory = {}
    for name, algorithm in algorithms.items():  # warm-up, and each one's peak memory
        for p in names:
            with precision(algorithm, p):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                algorithm.update(data)
                memory[(name, p)] = peak_memory_gb(device)
    times = {(name, p): [] for name in algorithms for p in names}
    for _ in range(steps):
        for name, algorithm in algorithms.items():
            for p in names:
                with precision(algorithm, p):
                    times[(name, p)].append(timed(lambda a=algorithm: a.update(data), device))
    return times, memory


def fidelities(device: torch.device, names: list[str]) -> dict:
    data = batches(device, 2)
    out = {}
    for name in ("SAM", "SAGE"):
        for p in names:
            net = network(device)
            algorithm = build_algorithm(
                name, net, torch.optim.Adam(net.parameters(), lr=1e-6), ALGORITHMS[name], perturbation="difference"
            )
            algorithm.measure_fidelity = True
            with precision(algorithm, p):
                out[(name, p)] = algorithm.update(data)["perturbation_fidelity"]
    return out


def newton_schulz_seconds(device: torch.device, dtypes: list[torch.dtype | None], repeats: int) -> dict:
    """The polar factors of one SAGE step alone (spectral_perturbation on the network's gradient)."""
    net = network(device)
    loss = torch.nn.functional.cross_entropy(net(torch.cat([x for x, _ in batches(device, 2)])),
                                             torch.cat([y for _, y in batches(device, 2)]))  # fmt: skip
    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    out = {}
    for dtype in dtypes:
        run = lambda d=dtype: spectral_perturbation(params, grads, 1e-6, polar_dtype=d)  # noqa: E731
        run()
        out[dtype] = statistics.median(timed(run, device) for _ in range(repeats))
    return out


@torch.no_grad()
def eval_images_per_second(device: torch.device, dtype: torch.dtype | None, repeats: int) -> float:
    net = network(device).eval()
    x = torch.randn(128, 3, 224, 224, device=device)  # eval_batch_size 128

    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            net(x)

    forward()
    return len(x) / statistics.median(timed(forward, device) for _ in range(repeats))


PERTURBATION_ROWS = {  # (algorithm, perturbation, autocast dtype)
    "SAGE difference fp32": ("SAGE", "difference", None),
    "SAGE linearized bf16": ("SAGE", "linearized", torch.bfloat16),
    "ERM bf16": ("ERM", "difference", torch.bfloat16),
}


def perturbation_rows(device: torch.device, steps: int) -> None:
    """SAGE by the float32 difference (TF32 off), SAGE linearized in bf16 and ERM in bf16 at the
    paper's batch, timed round-robin; and what ``perturbation=auto`` measures on this network
    for SAGE (rho 1e-6) and SAM (rho 0.05) on 2 images per domain."""
    from sage_bench.algorithms.perturbation import AUTO_CANDIDATES
    from sage_bench.geometry import sam_perturbation
    from sage_bench.geometry.linearized import ChangeProbe

    data = batches(device, PER_DOMAIN)
    algorithms = {}
    for label, (name, method, dtype) in PERTURBATION_ROWS.items():
        net = network(device)
        algorithm = build_algorithm(name, net, torch.optim.Adam(net.parameters(), lr=1e-6), ALGORITHMS[name],
                                    perturbation=method)  # fmt: skip
        algorithm.autocast_dtype = dtype
        algorithms[label] = algorithm
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for algorithm in algorithms.values():
            algorithm.update(data)  # warm-up
        times = {label: [] for label in algorithms}
        for _ in range(steps):
            for label, algorithm in algorithms.items():
                times[label].append(timed(lambda a=algorithm: a.update(data), device))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    base = "SAGE difference fp32"
    print(f"\nperturbed gradients (median of {steps} round-robin rounds)")
    print(f"  {'variant':<22} {'s/step':>8} {'/ ' + base:>24} {'/ ERM bf16':>11}")
    for label in algorithms:
        to_base = statistics.median(a / b for a, b in zip(times[label], times[base], strict=True))
        to_erm = statistics.median(a / b for a, b in zip(times[label], times["ERM bf16"], strict=True))
        print(f"  {label:<22} {statistics.median(times[label]):8.3f} {to_base:24.2f} {to_erm:11.2f}")

    small = batches(device, 2)
    x = torch.cat([b[0] for b in small])
    y = torch.cat([b[1] for b in small])
    net = network(device)
    params = [p for p in net.parameters() if p.requires_grad]
    probe = ChangeProbe(net, lambda n: torch.nn.functional.cross_entropy(n(x.to(next(n.parameters()).dtype)), y))
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(net(x), y), params)
    print("  what perturbation=auto measures (relative error of the change of the gradient):")
    for label, e in (("SAGE rho 1e-6", spectral_perturbation(params, grads, 1e-6)),
                     ("SAM rho 0.05", sam_perturbation(grads, 0.05))):  # fmt: skip
        errors = probe.measure(params, e, AUTO_CANDIDATES)
        print(f"  {label:<14} change {errors['reference_change']:.2e}; " + ", ".join(
            f"{c.name} {errors[c.name + '_error']:.2e}" for c in AUTO_CANDIDATES))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--steps", type=int, help="timed rounds (default 5 on CUDA, 2 on the CPU)")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    cuda = device.type == "cuda"
    steps = args.steps or (5 if cuda else 2)
    names = list(PRECISIONS) if cuda else ["fp32"]
    what = "CLIP ViT-B/16" if cuda else "CLIP ViT-Ti/16 shape"
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"gpu_check: {where}; torch {torch.__version__}; random-init {what} at 224 px; "
          f"{DOMAINS} domains x {PER_DOMAIN} images per step")  # fmt: skip

    times, memory = step_times(device, names, steps)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nstep time, s (median of {steps} round-robin rounds); peak memory, GB")
    print(f"  {'algorithm':<6} {'precision':<10} {'s/step':>8} {'SAM/ERM':>8} {'SAGE/SAM':>9} {'memory':>7}  auto picks")
    for name in ALGORITHMS:
        for p in names:
            ratio_erm = statistics.median(s / e for s, e in zip(times[("SAM", p)], times[("ERM", p)], strict=True))
            ratio_sam = statistics.median(s / e for s, e in zip(times[("SAGE", p)], times[("SAM", p)], strict=True))
            ratios = {"SAM": f"{ratio_erm:8.2f} {'':>9}", "SAGE": f"{'':>8} {ratio_sam:9.2f}"}.get(name, f"{'':>8} {'':>9}")
            pick = "<-" if auto_name(device, name != "ERM") == p else ""
            print(f"  {name:<6} {p:<10} {median[(name, p)]:8.3f} {ratios} {memory[(name, p)]:7.2f}  {pick}")
    if cuda:
        erm_auto, sage_auto = median[("ERM", auto_name(device, False))], median[("SAGE", auto_name(device, True))]
        print(f"  with precision.train=auto: SAGE/ERM {sage_auto / erm_auto:.2f}; "
              f"SAGE fp32/bf16 {median[('SAGE', 'fp32')] / median[('SAGE', 'bf16')]:.2f}")  # fmt: skip

    measured = names if cuda else ["fp32", "bf16"]  # CPU bf16 autocast rounds as a GPU's does
    fidelity = fidelities(device, measured)
    print("\nperturbation_fidelity (cosine of the intended and the computed perturbation)")
    print(f"  {'algorithm':<6} " + " ".join(f"{p:>10}" for p in measured))
    for name in ("SAM", "SAGE"):
        print(f"  {name:<6} " + " ".join(f"{fidelity[(name, p)]:10.4f}" for p in measured))

    perturbation_rows(device, steps)

    dtypes = [None, torch.bfloat16] if cuda else [None]
    ns = newton_schulz_seconds(device, dtypes, repeats=steps)
    print("\nNewton-Schulz per SAGE step: " + ", ".join(
        f"{'float32' if d is None else 'bf16'} {ns[d] * 1000:.1f} ms" for d in dtypes))  # fmt: skip
    dtypes = [torch.bfloat16, None] if cuda else [None]
    rates = {d: eval_images_per_second(device, d, repeats=steps) for d in dtypes}
    print("evaluation, images/s: " + ", ".join(
        f"{'float32' if d is None else 'bf16'} {r:.0f}" for d, r in rates.items()))  # fmt: skip

    failed = [name for name in ("SAM", "SAGE") if fidelity[(name, auto_name(device, True))] < 0.99]
    if failed:
        print(f"\nFAIL: the default precision keeps less than 0.99 of the perturbation of {', '.join(failed)}")
        return 1
    print(f"\nOK: the default precision ({auto_name(device, True)}) keeps the perturbation (fidelity >= 0.99)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
