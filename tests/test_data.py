"""Embedded data sets, DomainBed's in/out splits, and the training loaders."""

from __future__ import annotations

import itertools
import os
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from sage_bench.data import ColoredDigits, RotatedDigits, get_dataset_class
from sage_bench.data.loaders import InfiniteBatchSampler, infinite_loader
from sage_bench.data.splits import split_dataset, split_environments
from sage_bench.seeding import seed_hash


def test_rotated_digits_environments():
    ds = RotatedDigits()
    assert ds.environment_names == ["0", "15", "30", "45", "60", "75"]
    assert len(ds) == 6 and ds.num_classes == 10 and ds.input_shape == (1, 16, 16)
    sizes = [len(env) for env in ds]
    assert sum(sizes) == 1797 and max(sizes) - min(sizes) <= 1
    x, y = ds[0][0]
    assert x.shape == (1, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0 and 0 <= y < 10
    # every environment holds every class
    for env in ds:
        assert set(env.tensors[1].tolist()) == set(range(10))


def test_rotation_is_what_each_environment_applies():
    from torchvision.transforms.functional import InterpolationMode, rotate

    from sage_bench.data.digits import load_digit_images

    images, _ = load_digit_images()
    ds = RotatedDigits()
    env3 = images[3::6]  # environment 3 holds every 6th image from offset 3, rotated 45 degrees
    expected = rotate(env3, 45.0, interpolation=InterpolationMode.BILINEAR, fill=[0.0])
    assert torch.allclose(ds[3].tensors[0], expected)
    assert not torch.allclose(ds[3].tensors[0], env3)


def test_colored_digits_cue_flips_across_environments():
    ds = ColoredDigits()
    assert ds.environment_names == ["+90%", "+80%", "-90%"]
    assert ds.num_classes == 2 and ds.input_shape == (2, 16, 16)
    from sage_bench.data.digits import load_digit_images

    _, digits = load_digit_images()
    agreement = []
    for i, env in enumerate(ds):
        x, y = env.tensors
        colour = (x[:, 1].sum(dim=(1, 2)) > x[:, 0].sum(dim=(1, 2))).long()
        assert torch.all(x.flatten(2).amin(dim=2).ge(0))
        assert torch.all((x[:, 0].flatten(1).sum(1) == 0) | (x[:, 1].flatten(1).sum(1) == 0))
        agreement.append((colour == y).float().mean().item())
        shape_label = (digits[i::3] < 5).long()
        noise = (shape_label != y).float().mean().item()
        assert 0.19 < noise < 0.31  # DomainBed flips 25% of labels
    assert 0.85 < agreement[0] < 0.95
    assert 0.74 < agreement[1] < 0.86
    assert 0.05 < agreement[2] < 0.15


def test_environments_are_fixed_across_instances():
    a, b = RotatedDigits(), RotatedDigits()
    assert torch.equal(a[2].tensors[0], b[2].tensors[0])
    assert get_dataset_class("ColoredDigits") is ColoredDigits


def test_split_matches_domainbed_recipe():
    data = TensorDataset(torch.arange(50))
    out, in_ = split_dataset(data, 10, seed=7)
    keys = list(range(50))
    np.random.RandomState(7).shuffle(keys)  # DomainBed's split_dataset, transcribed
    assert list(out.indices) == keys[:10] and list(in_.indices) == keys[10:]


def test_environment_splits_sizes_disjoint_and_seeded():
    ds = RotatedDigits()
    splits = split_environments(ds, holdout_fraction=0.2, trial_seed=0)
    for i, (env, s) in enumerate(zip(ds, splits, strict=True)):
        assert len(s.out_split) == int(len(env) * 0.2)
        assert len(s.in_split) == len(env) - len(s.out_split)
        assert not set(s.in_split.indices) & set(s.out_split.indices)
        assert set(s.in_split.indices) | set(s.out_split.indices) == set(range(len(env)))
        keys = list(range(len(env)))
        np.random.RandomState(seed_hash(0, i)).shuffle(keys)
        assert list(s.out_split.indices) == keys[: len(s.out_split)]
    again = split_environments(ds, 0.2, trial_seed=0)
    other = split_environments(ds, 0.2, trial_seed=1)
    assert all(list(a.out_split.indices) == list(b.out_split.indices) for a, b in zip(splits, again, strict=True))
    assert any(list(a.out_split.indices) != list(b.out_split.indices) for a, b in zip(splits, other, strict=True))


def test_infinite_sampler_is_a_function_of_seed_and_step():
    s = InfiniteBatchSampler(100, 8, seed=3)
    first = list(itertools.islice(iter(s), 20))
    resumed = list(itertools.islice(iter(InfiniteBatchSampler(100, 8, seed=3, start=12)), 8))
    assert resumed == first[12:]
    assert all(len(b) == 8 and all(0 <= i < 100 for i in b) for b in first)
    assert first != list(itertools.islice(iter(InfiniteBatchSampler(100, 8, seed=4)), 20))
    # uniform with replacement: over many batches every example is drawn
    seen = set(itertools.chain.from_iterable(itertools.islice(iter(s), 200)))
    assert seen == set(range(100))


def test_infinite_loader_yields_batches():
    data = TensorDataset(torch.arange(30).float().unsqueeze(1), torch.arange(30))
    it = infinite_loader(data, batch_size=4, seed=0)
    for _ in range(20):  # more than one pass over 30 examples
        x, y = next(it)
        assert x.shape == (4, 1) and torch.equal(x[:, 0].long(), y)


def test_a_worker_killed_while_sending_a_batch_is_reported_as_a_dead_worker(monkeypatch):
    """A worker killed mid-send breaks the socket the batch's file descriptors travel on: the
    read fails with ConnectionResetError before PyTorch notices the death. The loader reports it
    as the worker death it is (what the runner treats as one), naming the worker."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    from sage_bench.data.loaders import close_loaders, epoch_loader, is_worker_death

    data = TensorDataset(torch.arange(64, dtype=torch.float32))
    loader = iter(epoch_loader(data, 8, seed=0, num_workers=1))
    next(loader)
    worker = loader._workers[0]
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(timeout=10)

    def broken_socket(self):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "__next__", broken_socket)
    try:
        with pytest.raises(RuntimeError) as exc:
            next(loader)
        assert is_worker_death(exc.value), exc.value
        assert f"pid {worker.pid}" in str(exc.value) and "ConnectionResetError" in str(exc.value)
    finally:
        close_loaders()


def test_a_broken_socket_with_every_worker_alive_is_not_called_a_death(monkeypatch):
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    from sage_bench.data.loaders import close_loaders, epoch_loader

    data = TensorDataset(torch.arange(64, dtype=torch.float32))
    loader = iter(epoch_loader(data, 8, seed=0, num_workers=1))

    def broken_socket(self):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(_MultiProcessingDataLoaderIter, "__next__", broken_socket)
    try:
        with pytest.raises(ConnectionResetError):
            next(loader)
    finally:
        close_loaders()
