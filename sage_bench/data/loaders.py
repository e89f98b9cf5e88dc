"""Loaders: one infinite, resumable stream of batches per training environment, and
finite loaders for evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sage_bench.seeding import seed_hash


class InfiniteBatchSampler(Sampler[list[int]]):
    """Batches of indices drawn uniformly with replacement, forever.

    This is what DomainBed's ``InfiniteDataLoader`` draws (a ``RandomSampler`` with
    replacement), with one difference that makes runs resumable: batch ``t`` depends only on
    ``(seed, t)``. A run resumed at step ``t`` starts the sampler at ``t`` and sees exactly the
    batches an uninterrupted run would have seen, whatever the worker prefetching did.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, start: int = 0):
        if num_examples <= 0:
            raise ValueError("cannot sample batches from an empty environment")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.start = start

    def batch(self, t: int) -> list[int]:
        """The indices of batch number ``t``."""
        g = torch.Generator().manual_seed(seed_hash(self.seed, t))
        return torch.randint(self.num_examples, (self.batch_size,), generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        t = self.start
        while True:
            yield self.batch(t)
            t += 1


def infinite_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator:
    """An endless iterator of ``(x, y)`` batches from ``dataset`` (see ``InfiniteBatchSampler``).

    With ``num_workers > 0`` the workers persist and prefetch, so decoding and augmentation
    overlap with training.
    """
    sampler = InfiniteBatchSampler(len(dataset), batch_size, seed, start=start_step)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)


def eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A loader over every example of ``dataset`` once, in order.

    Its workers start at each evaluation and stop after it: a job evaluates two splits per
    environment, and persistent workers for all of them (12 loaders on DomainNet) would sit
    idle between checkpoints holding memory.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
