"""Seeds: DomainBed's hash-derived seeds and global RNG seeding."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def seed_hash(*args: object) -> int:
    """An integer in [0, 2**31) derived from ``args``, as DomainBed's ``misc.seed_hash``.

    The hash is of ``str(args)``, so ``seed_hash(0, 1)`` here equals DomainBed's and a sweep
    planned here draws the same hyperparameters and splits as one planned by DomainBed.
    """
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (all devices)."""
    import torch  # here, so that seed_hash (used by the collector) needs no torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
