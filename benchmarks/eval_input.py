"""Evaluation input per CPU core: decoding JPEGs versus reading the evaluation cache, side by side.

Fabricates a PACS-layout folder of photo-like JPEGs (500x375 by default, like OfficeHome's and
DomainNet's photos), builds its evaluation cache (``sage-bench data cache``), then times, in this
process on one thread, the three ways a job's evaluation gets its input batches:

- ``jpeg``: decode + DomainBed's evaluation transform (resize, ToTensor, Normalize), as without
  the cache;
- ``cache -> uint8``: a batch of cached pixels, which is all the CPU does when the job runs on a
  GPU (normalisation happens there);
- ``cache -> float``: the same batch normalised on the CPU, as a CPU job does.

Each cache way runs twice: as jobs read (every image copied out of the map and checked against
its checksum, "checked") and as the cache was read before it had checksums (one gather of the
batch's rows, "unchecked"), so the ratio of the two is what the check costs a job. With
``--model NAME`` (a timm model, built without weights) each cache way also runs the model's
forward pass on its batches, as a checkpoint's evaluation does: the check's cost on a whole
cached evaluation on this machine.

All ways are timed in interleaved rounds (``--rounds``) and each reports its median, so a machine
shared with other work slows them alike and their ratios stay meaningful.

    python benchmarks/eval_input.py
    python benchmarks/eval_input.py --images 300 --width 227 --height 227
    python benchmarks/eval_input.py --model mobilenetv3_small_050.lamb_in1k
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sage_bench.data import PACS
from sage_bench.data import eval_cache as ec
from sage_bench.data.loaders import eval_loader
from sage_bench.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess


def fabricate(root: Path, n: int, width: int, height: int, quality: int = 90) -> None:
    """``n`` photo-like JPEGs (smooth gradients plus noise, so they compress like photos), dealt
    over PACS's four environment folders and seven classes."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    envs = ["art_painting", "cartoon", "photo", "sketch"]
    classes = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    for i in range(n):
        base = np.stack([np.sin(6 * x + i), np.cos(5 * y + 2 * i), x * y], axis=-1)
        pixels = np.clip(127 + 100 * base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        path = root / "PACS" / envs[i % 4] / classes[(i // 4) % 7] / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=quality)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--size", type=int, default=224, help="the backbone's input size (ViT-B/16: 224)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", help="a timm model name: also time its forward pass on the cached batches")
    args = parser.parse_args()
    torch.set_num_threads(1)
    preprocess = Preprocess(args.size, CLIP_MEAN, CLIP_STD)
    with tempfile.TemporaryDirectory() as tmp:
        fabricate(Path(tmp), args.images, args.width, args.height)
        dataset = PACS(tmp, test_envs=[0, 1, 2], hparams={}, preprocess=preprocess)  # every env deterministic
        start = time.perf_counter()
        cache = ec.build_cache(dataset, args.size, workers=1)
        build = args.images / (time.perf_counter() - start)
        cpu = torch.device("cpu")

        def cached(env: int, verify: bool):
            environment = dataset.datasets[env]
            split = cache.split(env, environment.targets, range(len(environment)), verify=verify)
            return ec.cached_loader(split, preprocess, args.batch_size, cpu)

        ways = {"jpeg": lambda env: eval_loader(dataset.datasets[env], args.batch_size)}
        for check in ("checked", "unchecked"):
            verify = check == "checked"
            ways[f"cache -> uint8, {check}"] = lambda env, verify=verify: cached(env, verify).loader
            ways[f"cache -> float, {check}"] = lambda env, verify=verify: cached(env, verify)
        model = None
        if args.model:
            import timm

            model = timm.create_model(args.model, pretrained=False).eval()
            for check in ("checked", "unchecked"):
                ways[f"evaluation, {check}"] = lambda env, verify=(check == "checked"): cached(env, verify)
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, make in ways.items():
                n = 0
                start = time.perf_counter()
                with torch.inference_mode():
                    for env in range(4):
                        for x, y in make(env):
                            if name.startswith("evaluation"):
                                model(x).argmax(1).eq(y).sum().item()
                            n += len(y)
                rates[name].append(n / (time.perf_counter() - start))
        print(f"{args.images} JPEGs of {args.width}x{args.height}, evaluated at {args.size}x{args.size}, "
              f"one thread, median of {args.rounds} interleaved rounds")  # fmt: skip
        print(f"  building the cache (decode + resize + write): {build:8.1f} images/s/core, once")
        jpeg = statistics.median(rates["jpeg"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"  {name:<26} {median:9.1f} images/s/core  ({median / jpeg:6.1f} x jpeg)")
        print("the checksum check's cost (time checked / time unchecked - 1):")
        for way in ("cache -> uint8", "cache -> float", *(["evaluation"] if model is not None else [])):
            checked, unchecked = (statistics.median(rates[f"{way}, {c}"]) for c in ("checked", "unchecked"))
            print(f"  {way:<16} {unchecked / checked - 1:+7.1%}  ({1e6 / checked - 1e6 / unchecked:+6.1f} us per image)")


if __name__ == "__main__":
    main()
