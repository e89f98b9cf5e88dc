"""DomainBed's per-environment in/out split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset, Subset

from sage_bench.seeding import seed_hash


def split_dataset(dataset: Dataset, n: int, seed: int) -> tuple[Subset, Subset]:
    """A random split into the first ``n`` examples and the rest (DomainBed's ``split_dataset``).

    The permutation is ``numpy.random.RandomState(seed).shuffle`` of ``range(len(dataset))``,
    so the same seed gives DomainBed's exact split of the same data.
    """
    if not 0 <= n <= len(dataset):
        raise ValueError(f"cannot take {n} examples from a data set of {len(dataset)}")
    keys = list(range(len(dataset)))
    np.random.RandomState(seed).shuffle(keys)
    return Subset(dataset, keys[:n]), Subset(dataset, keys[n:])


@dataclass(frozen=True)
class EnvSplit:
    """One environment's in-split (training / test accuracy) and out-split (validation)."""

    in_split: Subset
    out_split: Subset


def split_environments(environments, holdout_fraction: float, trial_seed: int) -> list[EnvSplit]:
    """Split every environment: ``int(len * holdout_fraction)`` examples go to the out-split,
    chosen with seed ``seed_hash(trial_seed, env_index)`` as DomainBed does."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    splits = []
    for index, env in enumerate(environments):
        n_out = int(len(env) * holdout_fraction)
        if holdout_fraction > 0 and n_out == 0:
            raise ValueError(
                f"holdout_fraction={holdout_fraction} leaves environment {index} ({len(env)} examples) "
                f"without an out-split: it must be at least 1/{len(env)}"
            )
        out_split, in_split = split_dataset(env, n_out, seed_hash(trial_seed, index))
        splits.append(EnvSplit(in_split=in_split, out_split=out_split))
    return splits
