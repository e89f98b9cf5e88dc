"""Loaders: one infinite, resumable stream of batches per training environment, the shuffled
epochs of a multi-task job, and finite loaders for evaluation.

Their worker processes (``num_workers > 0``) ignore the signals that stop a job (SIGTERM,
SIGINT, SIGUSR2). A scheduler signals the whole process group (SLURM on preemption and
``scancel``, a terminal on Ctrl-C); the main process alone then decides to stop after its step,
saves a checkpoint and shuts the workers down, instead of losing them mid-step. The signals are
blocked while workers start, so none arrives before a worker ignores it. Workers killed outright
(SIGKILL to the group) are part of the same stop: PyTorch reports their death to the read that
waits for them, never in the middle of the checkpoint being saved, and the loaders' shutdown
does not wait for them (``_WorkersIterator``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL
from torch.utils.data._utils import signal_handling as torch_signal_handling
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

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


_reads_in_progress = 0  # reads of the main thread from loaders with workers
_torch_sigchld_handler: Callable[[int, FrameType | None], Any] | None = None


def _sigchld(signum: int, frame: FrameType | None) -> None:
    """PyTorch's SIGCHLD handler (it raises when a loader worker has died), run only while the
    main thread reads from a loader. Anywhere else its exception would cut whatever runs: a
    checkpoint being written, a log line, the shutdown of the other loaders after a stop signal
    whose process group also lost its workers. The next read checks for dead workers first."""
    if _reads_in_progress and _torch_sigchld_handler is not None:
        _torch_sigchld_handler(signum, frame)


def _route_sigchld() -> None:
    """Put ``_sigchld`` in front of the SIGCHLD handler PyTorch installs with a loader's first
    workers (main thread only, where Python handles signals)."""
    global _torch_sigchld_handler
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCHLD"):
        return
    current = signal.getsignal(signal.SIGCHLD)
    if current is not _sigchld:
        _torch_sigchld_handler = current if callable(current) else None
        signal.signal(signal.SIGCHLD, _sigchld)


class _WorkersIterator(_MultiProcessingDataLoaderIter):
    """PyTorch's iterator over a loader with workers, whose shutdown cannot hang on a worker
    that was killed (SIGKILL to the process group after a stop signal, the OOM killer).

    Such a worker may have died holding a lock it shares with this process (the one of the
    event that tells workers to end, or of a queue), and PyTorch's orderly shutdown, which
    takes those locks, would then wait for it forever, also at interpreter exit. When a worker
    is dead, the others are killed instead and PyTorch's record of their pids is dropped.
    A worker's death is reported (PyTorch's ``RuntimeError``) by a read, not at any point of the
    main thread (``_sigchld``).
    """

    def __init__(self, loader: DataLoader):
        super().__init__(loader)
        _open_iterators.add(self)
        _route_sigchld()

    def _shutdown_workers(self) -> None:
        workers = getattr(self, "_workers", [])
        if getattr(self, "_shutdown", True) or all(w.is_alive() for w in workers):
            super()._shutdown_workers()
        else:
            self._drop_workers(workers)
        for w in workers:  # PyTorch's last resort is terminate(): SIGTERM, which they ignore
            if w.is_alive():
                w.kill()
                w.join(timeout=MP_STATUS_CHECK_INTERVAL)

    def _drop_workers(self, workers: list) -> None:
        """Shut down without PyTorch's handshake with the workers (see the class)."""
        self._shutdown = True
        if self._worker_pids_set:
            torch_signal_handling._remove_worker_pids(id(self))
            self._worker_pids_set = False
        for w in workers:
            if w.is_alive():
                w.kill()
        for w in workers:
            w.join(timeout=MP_STATUS_CHECK_INTERVAL)
        for queue in self._index_queues:
            queue.cancel_join_thread()
            queue.close()
        if hasattr(self, "_pin_memory_thread"):  # a daemon thread: told to end, not waited for
            self._pin_memory_thread_done_event.set()

    def __next__(self):
        global _reads_in_progress
        _reads_in_progress += 1
        try:
            if self._worker_pids_set:  # a worker that died since the last read is reported now
                torch_signal_handling._error_if_any_worker_fails()
            return super().__next__()
        except (ConnectionError, EOFError) as exc:
            # A worker killed while it sent a batch (the file descriptors of its tensors) breaks
            # the socket before PyTorch sees the death: reported as PyTorch reports a death.
            dead = [w.pid for w in getattr(self, "_workers", []) if not w.is_alive()]
            if not dead:
                raise
            raise RuntimeError(
                f"DataLoader worker (pid {dead[0]}) exited unexpectedly while sending a batch "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            _reads_in_progress -= 1


class _Loader(DataLoader):
    """A ``DataLoader`` whose workers start with the stop signals blocked and then ignore them,
    and whose iterator reports a dead worker on a read and shuts down without waiting for it."""

    def _get_iterator(self):
        if self.num_workers == 0:
            return super()._get_iterator()
        with _stop_signals_blocked():
            return _WorkersIterator(self)


_open_iterators: weakref.WeakSet[_WorkersIterator] = weakref.WeakSet()


def close_loaders() -> None:
    """End the workers of every loader iterator of this process now, rather than whenever
    garbage collection reaches them: a job calls it as it ends, however it ends. (An iterator
    kept alive by a traceback would otherwise keep workers that ignore SIGTERM until
    ``multiprocessing`` waits for them at exit, forever.)"""
    for iterator in list(_open_iterators):
        iterator._shutdown_workers()


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
