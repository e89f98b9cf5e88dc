"""Every one of Table 1's other baselines trains a short job on RotatedDigits from the command
line and writes DomainBed's records, with what its update returns; and updates under bf16
autocast."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sage_bench.algorithms import build_algorithm, gradient_agreement
from sage_bench.cli import main
from sage_bench.records import read_records
from tests.helpers.nets import domains, small_cnn

# name: what its update returns (averaged into the records)
NEW_ALGORITHMS = {
    "IRM": {"loss", "nll", "penalty"},
    "VREx": {"loss", "nll", "penalty"},
    "GroupDRO": {"loss"},
    "Mixup": {"loss"},
    "MMD": {"loss", "penalty"},
    "CORAL": {"loss", "penalty"},
    "RSC": {"loss"},
    "Fish": {"loss"},
    "DANN": {"disc_loss", "gen_loss"},
    "CDANN": {"disc_loss", "gen_loss"},
    "IIB": {"loss_ib", "loss_env", "loss_inv", "loss_all"},
    "GAM": {"loss", "perturbed_loss", "cosine"},
    "GGA": {"loss", "min_cosine_before", "min_cosine", "accepted"},
    "GGA-L": {"loss", "S"},
}
EXTRA = {"GGA": ["hparams.start_step=1", "hparams.end_step=1"]}  # one update searches


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NEW_ALGORITHMS))
def test_trains_on_rotated_digits_from_the_cli(name, tmp_path, capsys, monkeypatch, one_thread):
    # GGA's 250 search iterations are checked against its source elsewhere; here 10 show the path
    monkeypatch.setattr(gradient_agreement, "SEARCH_STEPS", 10)
    code = main([
        "train", "dataset=RotatedDigits", f"algorithm={name}", "test_envs=[0]", "steps=4", "checkpoint_freq=3",
        "progress=false", "hparams.batch_size=4", f"output_dir={tmp_path}", *EXTRA.get(name, []),
    ])  # fmt: skip
    assert code == 0
    job_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (job_dir / "done").exists()
    records = read_records(job_dir)
    assert [r["step"] for r in records] == [0, 3]
    assert records[-1]["args"]["algorithm"] == name
    returned = set().union(*(set(r) for r in records)) & NEW_ALGORITHMS[name]
    assert returned == NEW_ALGORITHMS[name]
    for r in records:
        assert all(math.isfinite(r[k]) for k in returned if k in r)
        assert all(0.0 <= r[f"env{i}_{s}_acc"] <= 1.0 for i in range(6) for s in ("in", "out"))


@pytest.mark.parametrize("name", list(NEW_ALGORITHMS))
def test_updates_under_bf16_autocast(name, monkeypatch, one_thread):
    """The runner's mixed precision on CUDA (``autocast_dtype = bfloat16``), here on the CPU:
    the updates run, their numbers are finite, and prediction works in eval mode."""
    monkeypatch.setattr(gradient_agreement, "SEARCH_STEPS", 3)
    net = small_cnn()
    hparams = {"start_step": 0, "end_step": 0} if name == "GGA" else {}
    algo = build_algorithm(name, net, torch.optim.Adam(net.parameters(), lr=1e-3), hparams, num_domains=3, num_classes=10)
    algo.autocast_dtype = torch.bfloat16
    for seed in range(2):
        stats = algo.update(domains((1, 16, 16), 10, k=3, n=4, seed=seed))
        assert all(math.isfinite(v) for v in stats.values())
    algo.eval()
    with algo.autocast():
        assert algo.predict(torch.randn(2, 1, 16, 16)).shape == (2, 10)
