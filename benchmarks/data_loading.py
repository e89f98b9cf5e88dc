"""How many images per second one CPU core decodes and augments for training.

Fabricates a small DomainBed-layout tree of JPEGs (sizes like the real data sets: PACS and
VLCS are about 227x227, OfficeHome, TerraIncognita and DomainNet photos several hundred pixels a
side), then times the training pipeline (decode, DomainBed's augmentation, normalisation to
224x224) in this process on one thread, and the same through a ``DataLoader`` with worker
processes. The per-core number tells how many loader workers keep a GPU busy: a step of ``B``
images at ``S`` steps per second needs ``B * S / (images per second per core)`` workers.

    python benchmarks/data_loading.py --size 227 --images 400
    python benchmarks/data_loading.py --size 500 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sage_bench.data.images import ImageFolderEnvironment
from sage_bench.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    Preprocess,
    eval_transform,
    train_transform,
)


def fabricate(root: Path, n: int, size: int, quality: int = 90) -> list[tuple[str, int]]:
    """``n`` photo-like JPEGs (smooth gradients plus noise, so they compress like photos)."""
    rng = np.random.default_rng(0)
    samples = []
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = np.stack([np.sin(6 * x + i), np.cos(5 * y + 2 * i), x * y], axis=-1)
        pixels = np.clip(127 + 100 * base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        path = root / f"class{i % 7}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=quality)
        samples.append((str(path), i % 7))
    return samples


def time_in_process(dataset, repeats: int) -> float:
    """Images per second decoded and transformed in this process (one thread)."""
    for i in range(min(20, len(dataset))):  # warm up the file cache
        dataset[i]
    start = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for i in range(len(dataset)):
            dataset[i]
            count += 1
    return count / (time.perf_counter() - start)


def time_loader(dataset, workers: int, batch_size: int, repeats: int) -> float:
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=False,
        persistent_workers=True, prefetch_factor=4,
    )  # fmt: skip
    for _ in loader:  # start the workers, warm the cache
        break
    start = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for x, _ in loader:
            count += len(x)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=227, help="side of the fabricated JPEGs in pixels")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="also time a DataLoader with this many workers")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    preprocess = Preprocess(224, CLIP_MEAN, CLIP_STD)
    with tempfile.TemporaryDirectory() as tmp:
        samples = fabricate(Path(tmp), args.images, args.size)
        train = ImageFolderEnvironment(samples, train_transform(preprocess))
        evaluation = ImageFolderEnvironment(samples, eval_transform(preprocess))
        decode_only = ImageFolderEnvironment(samples, None)
        print(f"{args.images} JPEGs of {args.size}x{args.size}, output 224x224, torch threads 1")
        print(f"  decode only:                  {time_in_process(decode_only, args.repeats):7.1f} images/s/core")
        print(f"  decode + train augmentation:  {time_in_process(train, args.repeats):7.1f} images/s/core")
        print(f"  decode + eval transform:      {time_in_process(evaluation, args.repeats):7.1f} images/s/core")
        if args.workers:
            rate = time_loader(train, args.workers, args.batch_size, args.repeats)
            print(f"  DataLoader, {args.workers} workers, train:  {rate:7.1f} images/s ({rate / args.workers:.1f} per worker)")


if __name__ == "__main__":
    main()
