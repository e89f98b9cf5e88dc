"""Evaluation input per CPU core: decoding JPEGs versus reading the evaluation cache, side by side.

Fabricates a PACS-layout folder of photo-like JPEGs (500x375 by default, like OfficeHome's and
DomainNet's photos), builds its evaluation cache (``sage-bench data cache``), then times, in this
process on one thread, the three ways a job's evaluation gets its input batches:

- ``jpeg``: decode + DomainBed's evaluation transform (resize, ToTensor, Normalize), as without
  the cache;
- ``cache -> uint8``: a batch of cached pixels, which is all the CPU does when the job runs on a
  GPU (normalisation happens there);
- ``cache -> float``: the same batch normalised on the CPU, as a CPU job does.

The three are timed in interleaved rounds (``--rounds``) and each reports its median, so a machine
shared with other work slows them alike and their ratios stay meaningful.

    python benchmarks/eval_input.py
    python benchmarks/eval_input.py --images 300 --width 227 --height 227
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
        ways = {
            "jpeg": lambda env: eval_loader(dataset.datasets[env], args.batch_size),
            "cache -> uint8": lambda env: ec.cached_loader(
                ec.CachedSplit(cache.pixels(env), dataset.datasets[env].targets, range(len(dataset.datasets[env]))),
                preprocess, args.batch_size, cpu).loader,  # fmt: skip
            "cache -> float": lambda env: ec.cached_loader(
                ec.CachedSplit(cache.pixels(env), dataset.datasets[env].targets, range(len(dataset.datasets[env]))),
                preprocess, args.batch_size, cpu),  # fmt: skip
        }
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, make in ways.items():
                n = 0
                start = time.perf_counter()
                for env in range(4):
                    n += sum(len(y) for _, y in make(env))
                rates[name].append(n / (time.perf_counter() - start))
        print(f"{args.images} JPEGs of {args.width}x{args.height}, evaluated at {args.size}x{args.size}, "
              f"one thread, median of {args.rounds} interleaved rounds")  # fmt: skip
        print(f"  building the cache (decode + resize + write): {build:8.1f} images/s/core, once")
        jpeg = statistics.median(rates["jpeg"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"  {name:<16} {median:9.1f} images/s/core  ({median / jpeg:5.1f} x jpeg)")


if __name__ == "__main__":
    main()
