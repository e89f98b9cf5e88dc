"""Hyperparameter registry: DomainBed's semantics for defaults and random search."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sage_bench import hparams as hp
from sage_bench.config import default_hparams, hparam_space, resolve_hparams
from sage_bench.seeding import seed_hash


def test_seed_hash_is_domainbeds():
    # DomainBed: int(md5(str(args)).hexdigest(), 16) % 2**31, transcribed independently
    expected = int(hashlib.md5(str((3, 1)).encode()).hexdigest(), 16) % (2**31)
    assert seed_hash(3, 1) == expected
    assert seed_hash(3, 1) != seed_hash(1, 3)


def test_hparams_seed_zero_gives_defaults():
    resolved = resolve_hparams("ERM", "RotatedDigits", hparams_seed=0, trial_seed=4)
    assert resolved == default_hparams("ERM", "RotatedDigits")
    assert resolved == {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 64}


def test_random_search_is_reproducible_and_varies():
    a = resolve_hparams("ERM", "RotatedDigits", hparams_seed=1, trial_seed=0)
    b = resolve_hparams("ERM", "RotatedDigits", hparams_seed=1, trial_seed=0)
    c = resolve_hparams("ERM", "RotatedDigits", hparams_seed=2, trial_seed=0)
    d = resolve_hparams("ERM", "RotatedDigits", hparams_seed=1, trial_seed=1)
    assert a == b
    assert a != c and a != d
    draws = [resolve_hparams("ERM", "RotatedDigits", s, 0) for s in range(1, 200)]
    lrs = [h["lr"] for h in draws]
    assert 10**-4.5 <= min(lrs) and max(lrs) <= 10**-2.5
    assert all(8 <= h["batch_size"] < 512 for h in draws)
    assert len(set(lrs)) == len(lrs)


def test_each_hparam_draws_from_its_own_stream():
    # The draw of "lr" is RandomState(seed_hash(seed_hash(hseed, tseed), "lr")): independent
    # of which other hyperparameters exist, as in DomainBed.
    seed = seed_hash(5, 2)
    r = np.random.RandomState(seed_hash(seed, "lr"))
    expected_lr = float(10 ** r.uniform(-4.5, -2.5))
    drawn = resolve_hparams("ERM", "RotatedDigits", hparams_seed=5, trial_seed=2)
    assert drawn["lr"] == pytest.approx(expected_lr, rel=0, abs=0)
    only_lr = hp.sample({"lr": hparam_space("ERM", "RotatedDigits")["lr"]}, seed)
    assert only_lr["lr"] == drawn["lr"]


def test_families_differ_like_domainbed():
    small = hparam_space("ERM", "RotatedDigits")
    assert small["lr"].default == 1e-3 and small["batch_size"].default == 64


def test_overrides_are_checked():
    space = hparam_space("ERM", "RotatedDigits")
    with pytest.raises(hp.HParamError, match="unknown hyperparameter 'nope'"):
        hp.apply_overrides(space, hp.defaults(space), {"nope": 1})
    with pytest.raises(hp.HParamError, match="must be an integer"):
        hp.apply_overrides(space, hp.defaults(space), {"batch_size": True})
    merged = hp.apply_overrides(space, hp.defaults(space), {"lr": 1})
    assert merged["lr"] == 1.0 and isinstance(merged["lr"], float)


def test_drawn_values_are_plain_python():
    drawn = resolve_hparams("ERM", "RotatedDigits", hparams_seed=3, trial_seed=0)
    assert all(type(v) in (int, float, bool, str) for v in drawn.values())


def test_gsam_and_sagm_alpha_follow_their_sources_per_backbone_and_data_set():
    from sage_bench.config import load_job

    # GSAM: its ViT-B/16 setting under CLIP, the DomainBed forks' value otherwise
    assert resolve_hparams("GSAM", "PACS", 0, 0, backbone="clip_vit_b16")["alpha"] == 0.4
    assert resolve_hparams("GSAM", "PACS", 0, 0, backbone="resnet50")["alpha"] == 0.001
    assert load_job(["experiment=paper_domainbed", "dataset=VLCS", "algorithm=GSAM"]).hparams["alpha"] == 0.4
    # SAGM: the authors' per-data-set values, whatever the backbone
    for dataset, alpha in [("PACS", 1e-3), ("VLCS", 1e-3), ("OfficeHome", 5e-4), ("TerraIncognita", 1e-3), ("DomainNet", 5e-4)]:
        for backbone in ("clip_vit_b16", "resnet50"):
            assert resolve_hparams("SAGM", dataset, 0, 0, backbone=backbone)["alpha"] == alpha
    # random search stays inside each family's values
    draws = {resolve_hparams("GSAM", "PACS", s, 0, backbone="clip_vit_b16")["alpha"] for s in range(1, 30)}
    assert draws <= {0.4, 0.6, 1.0} and len(draws) > 1
