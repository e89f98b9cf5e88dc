"""Multi-task jobs through the sweep machinery: planning (STL once per task), status, disk,
``reproduce table2 --dry-run`` and ``reproduce quick-mtl`` end to end."""

from __future__ import annotations

import re

import pytest

from sage_bench.algorithms import MULTI_TASK, algorithms
from sage_bench.cli import main
from sage_bench.errors import ConfigError
from sage_bench.reproduce import (
    QUICK_EPOCHS,
    MultiTaskCostModel,
    forward_gflop,
    quick_mtl_sweep,
    quick_mtl_window,
    reproduce_quick_mtl,
    table2_sweep,
)
from sage_bench.sweep import Sweep, format_status, sweep_states
from sage_bench.sweep.disk import estimate_disk


def test_a_multitask_sweep_plans_stl_once_per_task_and_no_test_environments(tmp_path):
    sweep = Sweep(tmp_path, ["DigitScenes", "DigitScenes2"], ["STL", "LS"], hparams_seeds=[0], trial_seeds=[0, 1])
    jobs = sweep.jobs()
    described = [job.describe() for job in jobs]
    assert described[:2] == [
        "DigitScenes STL hparams_seed=0 trial_seed=0 hparams.task=seg",
        "DigitScenes STL hparams_seed=0 trial_seed=1 hparams.task=seg",
    ]
    stl = [job.spec for job in jobs if job.spec.algorithm == "STL"]
    assert sorted({(s.dataset, s.hparams["task"]) for s in stl}) == [
        ("DigitScenes", "depth"), ("DigitScenes", "normal"), ("DigitScenes", "seg"),
        ("DigitScenes2", "depth"), ("DigitScenes2", "seg"),
    ]  # fmt: skip
    assert len(jobs) == 2 * (3 + 1) + 2 * (2 + 1)
    assert all(job.spec.task == "multi_task" and not hasattr(job.spec.settings, "test_envs") for job in jobs)
    assert not any(o.startswith("test_envs=") for job in jobs for o in job.overrides)
    given = Sweep(tmp_path, ["DigitScenes"], ["STL"], hparams_seeds=[0], trial_seeds=[0], overrides=["hparams.task=depth"])
    assert [job.spec.hparams["task"] for job in given.jobs()] == ["depth"]
    with pytest.raises(ConfigError, match="has no test environments"):
        Sweep(tmp_path, ["DigitScenes"], ["LS"], test_envs=[[0]], hparams_seeds=[0], trial_seeds=[0]).jobs()
    with pytest.raises(ConfigError, match="algorithm=ERM is a domain-generalization algorithm"):
        Sweep(tmp_path, ["DigitScenes"], ["ERM"], hparams_seeds=[0], trial_seeds=[0]).jobs()


def test_status_and_disk_of_a_multitask_sweep(tmp_path):
    jobs = Sweep(tmp_path, ["NYUv2"], ["LS"], hparams_seeds=[0], trial_seeds=[0], overrides=["experiment=paper_mtl"]).jobs()
    assert format_status(jobs, sweep_states(jobs)) == "1 jobs: 0 done, 0 incomplete, 1 not launched"
    estimate = estimate_disk(jobs, 1)
    # MTAN's 44,229,073 weights and Adam's two moments in float32, plus the BatchNorm statistics
    assert 3 * 44_229_073 * 4 < estimate.checkpoint < 3 * 44_229_073 * 4 * 1.01
    assert estimate.kept < 10**6 and not estimate.unmeasured


def test_the_cost_model_counts_passes_and_flops(tmp_path):
    assert forward_gflop("NYUv2", "paper") == pytest.approx(432.09, abs=0.01)
    assert forward_gflop("Cityscapes", "paper") == pytest.approx(96.45, abs=0.01)
    cost = MultiTaskCostModel()
    jobs = {job.spec.algorithm: job for job in table2_sweep(tmp_path, trials=1, datasets=["NYUv2"]).jobs()}
    ls, samo, sage = (cost.epoch_seconds(jobs[n]) for n in ("LS", "SAMO-LS", "SAGE-SAMO-LS"))
    per_image = 432.09 / (cost.tflops * 1e3)
    assert ls == pytest.approx((795 * 7 + 654) * per_image, rel=1e-4)  # 1 + 2K forward equivalents
    assert samo == pytest.approx((795 * 18 + 654) * per_image, rel=1e-4)  # 3 + 5K
    assert sage == pytest.approx((795 * 22 + 654) * per_image, rel=1e-4)  # 1 + 7K
    assert cost.job_hours(jobs["LS"]) == pytest.approx(200 * ls / 3600)


def test_reproduce_table2_dry_run_lists_nyu_and_cityscapes_jobs(tmp_path, capsys):
    assert main(["reproduce", "table2", "--dry-run", "--output-dir", str(tmp_path / "sweep"), "--algorithms", "LS,SAGE-LS", "STL"]) == 0
    out = capsys.readouterr().out
    for dataset, tasks in (("NYUv2", 3), ("Cityscapes", 2)):
        assert re.search(rf"^{dataset}\s+STL\s+{3 * tasks}\s+\d+$", out, re.M)
        for row in ("LS", "SAGE-LS"):
            assert re.search(rf"^{dataset}\s+{row}\s+3\s+\d+$", out, re.M)
            assert len(re.findall(rf"^not launched\s+{dataset} {row} hparams_seed=0 trial_seed=\d ", out, re.M)) == 3
    assert re.search(r"^total\s+27\s+\d+$", out, re.M)
    assert "sweep table2: 27 jobs" in out
    assert not (tmp_path / "sweep").exists()  # nothing launched


@pytest.mark.slow  # plans every row, 2 data sets, 3 trials
def test_reproduce_table2_plans_every_registered_row_in_table_2s_order(tmp_path):
    jobs = table2_sweep(tmp_path, trials=3).jobs()
    rows = list(dict.fromkeys(job.spec.algorithm for job in jobs))
    assert set(rows) == set(algorithms(MULTI_TASK))
    assert rows[:3] == ["Constant", "STL", "LS"]
    some = ["MGDA", "PCGrad", "FairGrad", "SAMO-LS", "SAGE-LS", "SAGE-SAMO-LS"]  # in Table 2's order
    assert [r for r in rows if r in some] == some
    assert {job.spec.dataset for job in jobs} == {"NYUv2", "Cityscapes"}
    assert all(job.spec.settings.epochs == 200 and job.spec.backbone_options == {"width": "paper"} for job in jobs)


@pytest.mark.slow
def test_quick_mtl_end_to_end(tmp_path, capsys):
    options = {"algorithms": ["LS", "STL", "Constant"], "workers": 1, "trials": 2,
               "overrides": ["dataset.train_scenes=16", "dataset.val_scenes=16"]}  # fmt: skip
    text = reproduce_quick_mtl(tmp_path, **options)
    lines = text.splitlines()
    assert lines[0] == "-------- Table 2 layout, dataset: DigitScenes"
    assert [line.split()[0] for line in lines[3:6]] == ["Constant", "STL", "LS"]  # the floor first
    assert "Delta_m %" in lines[1] and "+0.00 ± " in lines[4]  # STL against itself, with its spread over seeds
    assert " ± " in lines[5].split("  ")[1] or " ± " in lines[5]
    assert "Note: 2 seeds, mean ± standard deviation; 6 epochs (12 steps) of a narrow MTAN" in text
    assert "each run averaged over its last 2 epochs" in text and "epochs 4-5 (the last 2 of the shortest run" in text
    assert "no better than Constant (the floor)" in (tmp_path / "table.md").read_text()
    header = (tmp_path / "table.csv").read_text().splitlines()[0]
    assert header.startswith("dataset,algorithm,runs,epochs,window_run,seg_miou") and "delta_m_std" in header
    assert len(list((tmp_path / "runs").glob("*/done"))) == 10  # (STL x 3 tasks, LS, Constant) x 2 seeds
    again = reproduce_quick_mtl(tmp_path, **options)
    assert again == text and "10 jobs (10 already done)" in capsys.readouterr().out


@pytest.mark.slow  # plans every row, 3 trials
def test_quick_mtl_runs_three_seeds_of_every_row_and_the_floor_by_default(tmp_path):
    jobs = quick_mtl_sweep(tmp_path).jobs()
    rows = list(dict.fromkeys(job.spec.algorithm for job in jobs))
    assert rows[:3] == ["Constant", "STL", "LS"] and set(rows) == set(algorithms(MULTI_TASK))
    assert {job.spec.trial_seed for job in jobs} == {0, 1, 2}
    assert all(job.spec.settings.epochs == QUICK_EPOCHS == 6 and job.spec.device == "cpu" for job in jobs)
    assert [quick_mtl_window(n) for n in (QUICK_EPOCHS, 1, 2, 4, 9)] == [2, 1, 1, 1, 3]  # the last third


def test_a_multitask_job_list_for_slurm_arrays_names_the_same_jobs(tmp_path, capsys):
    """``--write-jobs`` writes one line of overrides per job, which ``slurm/array.sbatch`` passes
    to ``sage-bench train``: each line must configure the same job (same folder)."""
    import shlex

    from sage_bench.config import load_job

    listing = tmp_path / "jobs.txt"
    assert main(["sweep", "launch", "--output-dir", str(tmp_path / "sweep"), "--datasets", "Cityscapes",
                 "--algorithms", "STL", "SAGE-SAMO-FairGrad", "--n-hparams", "1", "--n-trials", "2",
                 "experiment=paper_mtl", "--write-jobs", str(listing)]) == 0  # fmt: skip
    lines = listing.read_text().splitlines()
    assert len(lines) == 2 * 2 + 2  # STL: seg and depth
    planned = {job.job_dir for job in table2_sweep(tmp_path / "sweep", trials=2, datasets=["Cityscapes"],
                                                   algorithms=["STL", "SAGE-SAMO-FairGrad"]).jobs()}  # fmt: skip
    assert {load_job(shlex.split(line)).job_dir for line in lines} == planned


@pytest.mark.parametrize("name, what", [("Foo", "is not a registered algorithm"), ("SAM", "is a domain-generalization algorithm")])
def test_quick_mtl_lists_only_multi_task_rows_as_choices(tmp_path, capsys, name, what):
    from sage_bench.algorithms.registry import DOMAIN_GENERALIZATION, MULTI_TASK, algorithms
    from sage_bench.cli import main

    assert main(["reproduce", "quick-mtl", "--algorithms", name, "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{name!r} {what}; valid choices: " in err and "reproduce table1" in err
    choices = err.split("valid choices: ", 1)[1].split(" (multi-task rows")[0].split(", ")
    assert set(choices) == {*algorithms(MULTI_TASK), "all"}
    assert not set(choices) & set(algorithms(DOMAIN_GENERALIZATION))


def test_the_quick_mtl_commands_defaults_are_the_functions():
    import argparse

    from sage_bench.commands import reproduce
    from sage_bench.reproduce import QUICK_TRIALS

    parser = argparse.ArgumentParser()
    reproduce.add_parser(parser.add_subparsers())
    args = parser.parse_args(["reproduce", "quick-mtl"])
    assert (args.epochs, args.trials) == (QUICK_EPOCHS, QUICK_TRIALS)
