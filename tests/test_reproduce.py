"""``sage-bench reproduce``: the Table 1 plan, and the quick pipeline end to end (shortened)."""

from __future__ import annotations

import io
from collections import Counter

import pandas as pd
import pytest

from sage_bench.cli import main
from sage_bench.reproduce import TABLE1_ALGORITHMS, reproduce_quick, table1_sweep


def test_table1_plan_has_every_job_in_the_papers_setting(tmp_path):
    jobs = table1_sweep(tmp_path / "sweep", data_dir=tmp_path / "data").jobs()
    per_dataset = Counter(job.spec.dataset for job in jobs)
    # algorithms x environments x 3 trials
    assert per_dataset == {"PACS": 72, "VLCS": 72, "OfficeHome": 72, "TerraIncognita": 72, "DomainNet": 108}
    assert {job.spec.algorithm for job in jobs} == set(TABLE1_ALGORITHMS)
    assert {job.spec.trial_seed for job in jobs} == {0, 1, 2}
    assert {job.spec.hparams_seed for job in jobs} == {0}
    assert all(len(job.spec.test_envs) == 1 for job in jobs)
    for job in jobs:
        spec = job.spec
        assert spec.backbone == "clip_vit_b16" and spec.optimizer == "adam"
        assert spec.hparams["lr"] == 1e-6
        assert spec.hparams["batch_size"] == 12  # per training domain (experiment=paper_domainbed)
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
    assert not (tmp_path / "s").exists()  # nothing launched


def test_table1_rejects_job_overrides(capsys):
    assert main(["reproduce", "table1", "--dry-run", "hparams.lr=1"]) == 2
    assert "launcher.<key>=<value>" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_end_to_end_shortened(tmp_path, capsys):
    overrides = ["steps=3", "checkpoint_freq=2", "hparams.batch_size=8", "device=cpu", "progress=false"]
    text = reproduce_quick(tmp_path, "ColoredDigits", overrides, workers=2)
    for name in ("table.md", "table.csv", "accuracy_by_domain.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    frame = pd.read_csv(io.StringIO((tmp_path / "table.csv").read_text()), keep_default_na=False)
    cells = frame[(frame.dataset == "ColoredDigits") & (frame.env != "Avg")]
    assert len(cells) == 6 * 3 and (cells["trials"] == "1").all()
    assert set(cells["algorithm"]) == set(TABLE1_ALGORITHMS)
    assert all(0 <= float(m) <= 100 for m in cells["mean"])
    assert "Dataset: ColoredDigits" in text
    caveat = "one trial, not converged (3 steps): a smoke test of the pipeline, not a comparison"
    assert caveat in text and caveat in (tmp_path / "table.md").read_text()
    capsys.readouterr()
    reproduce_quick(tmp_path, "ColoredDigits", overrides)  # again: nothing to run
    assert "18 jobs (18 already done)" in capsys.readouterr().out


def test_quick_caveat():
    from sage_bench.reproduce import CONVERGED_STEPS, CONVERGED_TRIALS, quick_caveat

    assert quick_caveat(200, 1).startswith("one trial, not converged (200 steps): a smoke test")
    assert quick_caveat(CONVERGED_STEPS, 2).startswith("2 trials: a smoke test")
    assert quick_caveat(CONVERGED_STEPS, CONVERGED_TRIALS) is None


@pytest.mark.slow
def test_quick_jobs_run_in_parallel_workers_and_trials_add_jobs(tmp_path, capsys):
    overrides = ["steps=2", "checkpoint_freq=1", "hparams.batch_size=8", "device=cpu", "progress=false"]
    reproduce_quick(tmp_path, "ColoredDigits", overrides, trials=2, workers=2)
    out = capsys.readouterr().out
    assert "36 jobs (0 already done)" in out and "2 at a time" in out
    frame = pd.read_csv(io.StringIO((tmp_path / "table.csv").read_text()), keep_default_na=False)
    cells = frame[(frame.dataset == "ColoredDigits") & (frame.env != "Avg")]
    assert (cells["trials"] == "2").all()
    logs = [path.read_text() for path in (tmp_path / "runs").glob("*/out.txt")]
    workers = {line.split("(pid ")[1].rstrip(")") for text in logs for line in text.splitlines() if "(pid " in line}
    assert len(logs) == 36 and len(workers) == 2  # every job ran in one of the two worker processes


def test_quick_rejects_nonsense(capsys):
    assert main(["reproduce", "quick", "--trials", "0"]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err
