"""What a job evaluates at each checkpoint, and where the images come from.

- ``eval_splits=all`` (DomainBed): every environment's in- and out-split. ``selection``: what the
  three model-selection methods read (``sage_bench.collect.selection``): every environment's
  out-split (training-domain validation uses the training environments', the oracle the test
  environments') and the test environments' in-splits (the test accuracy, and leave-one-out's
  validation, which reads the in-split of the second test environment of a two-test-environment
  run). Only the training environments' in-splits are left out; they are only ever printed.
- A split whose evaluation is deterministic (a test environment always; a training environment
  when the data set evaluates it without augmentation, ``dataset.eval_augment=false``) reads its
  pixels from the evaluation cache (``sage_bench.data.eval_cache``) when ``dataset.eval_cache``
  is ``auto`` and a valid cache exists, or ``require`` (then a missing cache stops the job). Each
  cached image is checked against its checksum as it is read: a damaged cache stops the job
  (``DamagedCacheError``, exit 2) with the command that rebuilds it, never a wrong accuracy.

Evaluation leaves the job's random stream as DomainBed's full evaluation leaves it. Every
evaluation loader draws one number from the global generator when iterated (its base seed); a
split left out draws the same number, and a cached split goes through a ``DataLoader`` that draws
it. So training after a checkpoint is the same with ``all`` and ``selection``, with and without
the cache. One exception: an augmented evaluation decoded in this process (``num_workers=0``)
also draws the augmentation's numbers from the global generator, which a left-out split cannot
reproduce; the job logs a note, and training that draws from that generator (augmentation in this
process, dropout) then takes another, equally valid path.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import Subset

from sage_bench.algorithms.base import Algorithm
from sage_bench.config import JobSpec
from sage_bench.data.base import MultiDomainDataset
from sage_bench.data.eval_cache import (
    CacheError,
    cached_loader,
    open_cache,
    readable_indices,
    rebuild_hint,
)
from sage_bench.data.images import MultiEnvironmentImageFolder
from sage_bench.data.loaders import eval_loader, is_worker_death
from sage_bench.data.splits import EnvSplit
from sage_bench.data.transforms import Preprocess
from sage_bench.run.evaluate import accuracy


@dataclass
class Split:
    """One split a checkpoint reports: ``name`` (``env0_in``), its batches (``None``: left out by
    ``eval_splits=selection``) and where they come from (``cache``, ``files``, ``memory``)."""

    name: str
    loader: Iterable | None
    source: str
    without_workers: Callable[[], Iterable] | None = None  # the same batches, read in this process


def _draw_loader_seed() -> None:
    """What iterating an evaluation ``DataLoader`` draws from the global generator (its base seed,
    ``torch.utils.data.dataloader._BaseDataLoaderIter``)."""
    torch.empty((), dtype=torch.int64).random_()


class Evaluator:
    """The accuracies of a checkpoint: ``evaluator(algorithm)`` -> ``{"env0_in_acc": ..., ...}``."""

    def __init__(self, splits: list[Split], device: torch.device):
        self.splits = splits
        self.device = device
        self.seconds = 0.0  # spent in the last call

    def __call__(self, algorithm: Algorithm, stopping: Callable[[], bool] = lambda: False) -> dict[str, float]:
        """The accuracies; ``stopping()`` tells whether a stop signal arrived, after which data-loading
        workers killed by it (SLURM signals the whole process group) are replaced by reading in
        this process."""
        start = time.perf_counter()
        accuracies = {}
        for split in self.splits:
            if split.loader is None:
                _draw_loader_seed()
                continue
            try:
                accuracies[f"{split.name}_acc"] = accuracy(algorithm, split.loader, self.device)
            except RuntimeError as exc:
                if split.without_workers is None or not stopping() or not is_worker_death(exc):
                    raise
                accuracies[f"{split.name}_acc"] = accuracy(algorithm, split.without_workers(), self.device)
        self.seconds = time.perf_counter() - start
        return accuracies

    def describe(self) -> str:
        by_source: dict[str, list[str]] = {}
        for split in self.splits:
            by_source.setdefault(split.source if split.loader is not None else "not evaluated", []).append(split.name)
        return "; ".join(f"{source}: {', '.join(names)}" for source, names in by_source.items())


def _cache_for(spec: JobSpec, dataset: MultiEnvironmentImageFolder, preprocess: Preprocess, log: logging.Logger):
    mode = spec.dataset_options.get("eval_cache", "auto")
    if mode == "off":
        return None
    cache, why_not = open_cache(dataset, preprocess.image_size)
    if cache is not None:
        log.info(f"evaluation cache: {cache.path}")
        return cache
    hint = rebuild_hint(dataset, preprocess.image_size)
    if mode == "require":
        raise CacheError(f"dataset.eval_cache=require, but the evaluation cache is unusable: {why_not}. Make it with\n    {hint}")
    log.info(f"evaluation cache: not used ({why_not}); `{hint}` makes evaluation faster")
    return None


def _cached_split(cache, dataset: MultiEnvironmentImageFolder, env: int, subset: Subset, preprocess: Preprocess,
                  spec: JobSpec, device: torch.device, pin: bool):  # fmt: skip
    environment = dataset.evaluation_environment(env)
    unreadable = cache.unreadable(env)

    def describe(index: int, why: str):
        return environment.unreadable_error(environment.paths[index].decode(errors="replace"), why)

    indices = readable_indices(subset.indices, unreadable, len(environment), environment.on_unreadable, describe)
    for index in sorted(set(subset.indices) & set(unreadable)):
        warnings.warn(f"skipping unreadable image {environment.paths[index].decode(errors='replace')}: "
                      f"{unreadable[index]}", stacklevel=2)  # fmt: skip
    split = cache.split(env, environment.targets, indices, rebuild=rebuild_hint(dataset, preprocess.image_size) + " --force")
    return cached_loader(split, preprocess, spec.eval_batch_size, device, pin)


def build_evaluator(spec: JobSpec, dataset: MultiDomainDataset, splits: list[EnvSplit], preprocess: Preprocess | None,
                    device: torch.device, log: logging.Logger) -> Evaluator:  # fmt: skip
    """The splits a checkpoint of ``spec`` evaluates, in DomainBed's order (every in-split, then
    every out-split), each from the cache when it can (see the module docstring)."""
    pin = device.type == "cuda"
    images = isinstance(dataset, MultiEnvironmentImageFolder)
    deterministic = [not (images and dataset.eval_augmented[i]) for i in range(len(splits))]
    wanted = []
    for part in ("in", "out"):
        for i, env_split in enumerate(splits):
            keep = spec.settings.eval_splits == "all" or part == "out" or i in spec.settings.test_envs
            wanted.append((i, part, getattr(env_split, f"{part}_split"), keep))
    cache = None
    if images and any(keep and deterministic[i] for i, _, _, keep in wanted):
        cache = _cache_for(spec, dataset, preprocess, log)
    if spec.settings.eval_splits == "selection" and spec.num_workers == 0 and images and any(dataset.eval_augmented):
        log.info("note: eval_splits=selection leaves out augmented evaluations that would have drawn from the "
                 "global random generator (num_workers=0); training that draws from it differs from an "
                 "eval_splits=all run")  # fmt: skip
    out = []
    for i, part, subset, keep in wanted:
        name = f"env{i}_{part}"
        if not keep:
            out.append(Split(name, None, ""))
        elif cache is not None and deterministic[i]:
            out.append(Split(name, _cached_split(cache, dataset, i, subset, preprocess, spec, device, pin), "cache"))
        else:
            source = Subset(dataset.evaluation_environment(i), subset.indices)
            loader = eval_loader(source, spec.eval_batch_size, spec.num_workers, pin)
            in_process = None
            if spec.num_workers > 0:
                def in_process(source=source):
                    return eval_loader(source, spec.eval_batch_size, 0, pin)
            out.append(Split(name, loader, "files" if images else "memory", in_process))
    evaluator = Evaluator(out, device)
    log.info(f"evaluation: {evaluator.describe()}")
    return evaluator
