"""``sage-bench reproduce``: the Table 1 plan, and the quick pipeline end to end (shortened)."""

from __future__ import annotations

import io
from collections import Counter

import pandas as pd
import pytest

from sage_bench.cli import main
from sage_bench.data.eval_cache import MANIFEST, cache_path
from sage_bench.reproduce import (
    TABLE1_ALGORITHMS,
    CostModel,
    cached_datasets,
    describe_plan,
    reproduce_quick,
    table1_sweep,
)


def test_table1_plan_has_every_job_in_the_papers_setting(tmp_path):
    jobs = table1_sweep(tmp_path / "sweep", data_dir=tmp_path / "data").jobs()
    per_dataset = Counter(job.spec.dataset for job in jobs)
    # algorithms x environments x 3 trials
    assert per_dataset == {"PACS": 72, "VLCS": 72, "OfficeHome": 72, "TerraIncognita": 72, "DomainNet": 108}
    assert {job.spec.algorithm for job in jobs} == set(TABLE1_ALGORITHMS)
    assert {job.spec.trial_seed for job in jobs} == {0, 1, 2}
    assert {job.spec.hparams_seed for job in jobs} == {0}
    assert all(len(job.spec.test_envs) == 1 for job in jobs)
    assert {job.spec.eval_splits for job in jobs} == {"selection"}  # the same table, less evaluation
    for job in jobs:
        spec = job.spec
        assert spec.backbone == "clip_vit_b16" and spec.optimizer == "adam"
        assert spec.hparams["lr"] == 1e-6
        assert spec.hparams["batch_size"] == (2 if spec.dataset == "DomainNet" else 4)
        assert spec.data_dir == (tmp_path / "data").resolve()
        if spec.algorithm == "SAGE":
            assert spec.hparams["rho"] == 1e-6 and spec.hparams["gamma"] == 1e-6
    assert len({job.job_dir for job in jobs}) == len(jobs)


def test_table1_dry_run_prints_counts_and_hours(tmp_path, capsys):
    assert main(["reproduce", "table1", "--dry-run", "--output-dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and line.split()[0] in
            {"PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet", "total"}}  # fmt: skip
    assert rows["DomainNet"][0] == "108" and rows["total"][0] == "396"
    assert float(rows["DomainNet"][1]) > float(rows["PACS"][1]) > 0
    # as planned (no cache here) >= every data set cached; DomainBed's full evaluation costs most
    assert float(rows["total"][3]) > float(rows["total"][1]) >= float(rows["total"][2])
    assert "sage-bench data cache PACS VLCS OfficeHome TerraIncognita DomainNet" in out
    assert not (tmp_path / "s").exists()  # nothing launched


def test_cost_model_counts_the_evaluated_splits_and_the_cache(tmp_path):
    cost = CostModel()
    jobs = table1_sweep(tmp_path, tmp_path / "data", trials=1, datasets=["PACS"]).jobs()
    (job,) = [j for j in jobs if j.spec.test_envs == [0] and j.spec.algorithm == "ERM"]
    # PACS: 2048, 2344, 1670, 3929 images; out-splits int(0.2 n) = 409, 468, 334, 785
    assert cost.checkpoint_images(job, cached=False, eval_splits="all") == (0, 9991)
    assert cost.checkpoint_images(job, cached=False) == (0, 409 + 468 + 334 + 785 + 1639)
    # training environments evaluated through augmentation (DomainBed) are never cached
    assert cost.checkpoint_images(job, cached=True) == (2048, 468 + 334 + 785)
    (plain,) = [j for j in table1_sweep(tmp_path, trials=1, datasets=["PACS"], overrides=["dataset.eval_augment=false"]).jobs()
                if j.spec.dataset == "PACS" and j.spec.test_envs == [0] and j.spec.algorithm == "ERM"
                and j.spec.trial_seed == 0]  # fmt: skip
    assert cost.checkpoint_images(plain, cached=True) == (409 + 468 + 334 + 785 + 1639, 0)
    hours = [cost.job_hours(job, eval_splits="all"), cost.job_hours(job), cost.job_hours(job, cached=True),
             cost.job_hours(plain, cached=True)]  # fmt: skip
    assert hours == sorted(hours, reverse=True) and len(set(hours)) == 4
    # 8 cores decoding 80 images/s each are the limit, not the GPU's 2000 images/s
    steps = 5001 * cost.erm_step_s
    assert (hours[0] * 3600 - steps) == pytest.approx((5001 // 300 + 1) * 9991 / 640)
    assert (hours[3] * 3600 - steps) == pytest.approx((5001 // 300 + 1) * 3635 / 2000)
    # the plan looks for a cache at the backbone's input size
    assert cached_datasets(jobs) == set()
    manifest = cache_path(tmp_path / "data", "PACS", 224) / MANIFEST
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    assert cached_datasets(jobs) == {"PACS"}
    assert "evaluation cache found for PACS" in describe_plan(jobs, cached={"PACS"})


def test_table1_rejects_job_overrides(capsys):
    assert main(["reproduce", "table1", "--dry-run", "hparams.lr=1"]) == 2
    assert "launcher.<key>=<value>" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_end_to_end_shortened(tmp_path, capsys):
    overrides = ["steps=3", "checkpoint_freq=2", "hparams.batch_size=8", "device=cpu"]
    text = reproduce_quick(tmp_path, "ColoredDigits", overrides)
    for name in ("table.md", "table.csv", "accuracy_by_domain.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    frame = pd.read_csv(io.StringIO((tmp_path / "table.csv").read_text()), keep_default_na=False)
    cells = frame[(frame.dataset == "ColoredDigits") & (frame.env != "Avg")]
    assert len(cells) == 6 * 3 and (cells["trials"] == "1").all()
    assert set(cells["algorithm"]) == set(TABLE1_ALGORITHMS)
    assert all(0 <= float(m) <= 100 for m in cells["mean"])
    assert "Dataset: ColoredDigits" in text
    capsys.readouterr()
    reproduce_quick(tmp_path, "ColoredDigits", overrides)  # again: nothing to run
    assert "18 jobs (18 already done)" in capsys.readouterr().out
