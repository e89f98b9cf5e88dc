"""Loaders: one infinite, resumable stream of batches per training environment, the shuffled
epochs of a multi-task job, and finite loaders for evaluation.

Their worker processes (``num_workers > 0``) ignore the signals that stop a job (SIGTERM,
SIGINT, SIGUSR2). A scheduler signals the whole process group (SLURM on preemption and
``scancel``, a terminal on Ctrl-C); the main process alone then decides to stop after its step,
saves a checkpoint and shuts the workers down, instead of losing them mid-step. The signals are
blocked while workers start, so none arrives before a worker ignores it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sage_bench.seeding import seed_hash

# the signals that stop a job (``sage_bench.run.checkpoint.STOP_SIGNALS``): the main process's
WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


def ignore_stop_signals(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: leave the stop signals to the main process."""
    for signum in WORKER_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_IGNORED_SIGNALS)


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Hold the stop signals back while workers start (they inherit the mask); a signal that
    arrives meanwhile is delivered to this process when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_IGNORED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _Loader(DataLoader):
    """A ``DataLoader`` whose workers start with the stop signals blocked and then ignore them."""

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        with _stop_signals_blocked():
            return super()._get_iterator()


def is_worker_death(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch's report that a loader worker died (e.g. killed with SIGKILL)."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker")


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
    loader = _Loader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )
    return iter(loader)


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A loader over every example of ``dataset`` once, in order.

    Its workers start at each evaluation and stop after it: a job evaluates two splits per
    environment, and persistent workers for all of them (12 loaders on DomainNet) would sit
    idle between checkpoints holding memory. ``generator`` seeds the workers (without one,
    each pass draws their base seed from torch's global generator, as PyTorch does).
    """
    return _Loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        generator=generator,
    )


class EpochBatchSampler(Sampler[list[int]]):
    """The batches of one epoch, as the lineage's shuffled training loader (no ``drop_last``:
    the last batch may be smaller): a permutation of the examples drawn from ``seed``, from
    batch ``start`` on (a job resumed mid-epoch continues the same permutation)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, start: int = 0):
        if num_examples <= 0:
            raise ValueError("cannot draw batches from an empty split")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.start = start

    def __len__(self) -> int:
        return max(0, -(-self.num_examples // self.batch_size) - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed)).tolist()
        for first in range(self.start * self.batch_size, self.num_examples, self.batch_size):
            yield order[first : first + self.batch_size]


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_batch: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The batches of one training epoch from batch ``start_batch`` on (see
    ``EpochBatchSampler``); nothing is drawn from torch's global generator (the workers' seeds
    come from ``seed`` too), so a job resumed mid-epoch sees exactly the batches and random
    state of an uninterrupted one."""
    return _Loader(
        dataset,
        batch_sampler=EpochBatchSampler(len(dataset), batch_size, seed, start_batch),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )
