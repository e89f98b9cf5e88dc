"""The Constant row: the training split's commonest class, median depth and mean normal, no step."""

from __future__ import annotations

import pytest
import torch

from sage_bench.algorithms import build_multitask_algorithm
from sage_bench.data.digit_scenes import DigitScenes
from sage_bench.models.mtan import mtan
from sage_bench.mtl import MultiTaskLoss


def _constant(data):
    torch.manual_seed(0)
    net = mtan(data.tasks, "narrow")
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    return build_multitask_algorithm("Constant", net, optimizer, MultiTaskLoss(data.tasks)), net


def _fit(algo, split, batch=16):
    for start in range(0, len(split), batch):
        algo.update(split.images[start : start + batch], {k: v[start : start + batch] for k, v in split.targets.items()})
    algo.end_epoch(0)


def test_it_predicts_the_training_splits_mode_median_and_mean_and_trains_nothing():
    data = DigitScenes(train_scenes=64, val_scenes=8)
    algo, net = _constant(data)
    before = [p.detach().clone() for p in net.parameters()]
    _fit(algo, data.train)
    targets = data.train.targets
    labels = targets["seg"][targets["seg"] >= 0]
    depth = targets["depth"][targets["depth"] != 0]
    valid = targets["normal"].abs().sum(1, keepdim=True) != 0
    mean_normal = (targets["normal"] * valid).sum(dim=(0, 2, 3)).double()
    mean_normal /= mean_normal.norm()

    out = algo.predict(data.val.images)
    assert out["seg"].shape == (8, 6, 32, 32) and torch.equal(out["seg"].argmax(1), torch.full((8, 32, 32), labels.mode().values.item()))
    frequency = torch.bincount(labels, minlength=6).double() / len(labels)
    assert torch.allclose(out["seg"][0, :, 0, 0].exp().double(), frequency, atol=1e-4)  # smoothed by one count
    assert out["depth"].unique().item() == pytest.approx(depth.median().item(), abs=1e-3)  # half a bin
    assert torch.allclose(out["normal"][0, :, 5, 5].double(), mean_normal, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert all(p.grad is None for p in net.parameters())


def test_later_epochs_read_nothing_and_the_state_resumes(tmp_path):
    data = DigitScenes(train_scenes=32, val_scenes=4)
    algo, _ = _constant(data)
    _fit(algo, data.train)
    first = algo.predict(data.val.images)
    algo.update(data.train.images[:4] * 0, {k: v[:4] * 0 + 1 for k, v in data.train.targets.items()})
    assert all(torch.equal(first[k], v) for k, v in algo.predict(data.val.images).items())
    path = tmp_path / "constant.pt"
    torch.save(algo.state_dict(), path)
    fresh, _ = _constant(data)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert all(torch.equal(first[k], v) for k, v in fresh.predict(data.val.images).items())
