"""Values that would fail inside training are refused up front (exit code 2, no folder made),
and a job whose loss or weights become NaN or infinite stops with the step in its error."""

from __future__ import annotations

import re

import pytest
import torch

from sage_bench.cli import main
from sage_bench.config import ConfigError, load_job
from sage_bench.data.splits import split_environments
from sage_bench.records import read_records
from sage_bench.run.checkpoint import checkpoint_path, load_checkpoint
from sage_bench.sweep.plan import Sweep
from sage_bench.sweep.state import FAILED, format_status, sweep_states


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=-1", r"'seed': -1 must be in \[0, 2\*\*64\)"),
        (f"seed={2**64}", rf"'seed': {2**64} must be in \[0, 2\*\*64\)"),
        ("holdout_fraction=1e-9", r"'holdout_fraction': 1e-09 leaves the out-split of environment 0 \(0, 300 examples\) empty"),
        ("optimizer.betas=[2,0.9]", r"optimizer=adam refuses its settings \(optimizer.betas=\[2, 0.9\].*Invalid beta parameter at index 0: 2"),
        ("+optimizer.momentum=0.9", r"optimizer=adam refuses its settings \(optimizer.betas=.*optimizer.momentum=0.9.*momentum"),
        ("hparams.lr=1e38", r"refuses its settings .*hparams.lr=1e\+38.*overflow"),
    ],
)  # fmt: skip
def test_values_that_would_fail_in_training_are_refused(tmp_path, capsys, override, message):
    args = ["train", "--dry-run", "dataset=RotatedDigits", override, f"output_dir={tmp_path / 'out'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sage-bench: error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_the_largest_seed_and_the_smallest_holdout_pass(tmp_path):
    assert load_job([f"seed={2**64 - 1}", f"output_dir={tmp_path}"]).seed == 2**64 - 1
    assert load_job(["holdout_fraction=0.0034", f"output_dir={tmp_path}"]).settings.holdout_fraction == 0.0034  # 1 of 299
    # environments 0-2 hold 300 digits, 3-5 hold 299: 300 * 0.00334 >= 1 > 299 * 0.00334
    with pytest.raises(ConfigError, match=r"out-split of environment 3 \(45, 299 examples\) empty"):
        load_job(["holdout_fraction=0.00334", f"output_dir={tmp_path}"])


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("not a folder")
    assert main(["train", "--dry-run", f"output_dir={afile}"]) == 2
    assert f"'output_dir': {afile} is a file; name a folder" in capsys.readouterr().err
    assert main(["train", "--dry-run", f"output_dir={afile}/runs"]) == 2
    assert f"lies under {afile}, which is a file" in capsys.readouterr().err
    assert afile.read_text() == "not a folder"


def test_a_sweep_refuses_them_before_any_folder(tmp_path):
    sweep = Sweep(tmp_path / "sweep", ["RotatedDigits"], ["ERM"], overrides=["holdout_fraction=0.2,1e-9"],
                  hparams_seeds=[0], trial_seeds=[0])  # fmt: skip
    with pytest.raises(ConfigError, match="'holdout_fraction': 1e-09 leaves the out-split"):
        sweep.jobs()
    assert main(["sweep", "launch", "--output-dir", str(tmp_path / "s2"), "--datasets", "RotatedDigits",
                 "--algorithms", "ERM", "optimizer.betas=[2,0.9]"]) == 2  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_split_refuses_an_empty_out_split():
    envs = [list(range(10)), list(range(500))]
    with pytest.raises(ValueError, match=r"leaves environment 0 \(10 examples\) without an out-split"):
        split_environments(envs, 0.05, trial_seed=0)
    assert [len(s.out_split) for s in split_environments(envs, 0.1, trial_seed=0)] == [1, 50]


# ------------------------------------------------------------------------------ NaN and inf


@pytest.mark.slow
def test_a_diverging_job_stops_keeps_its_last_good_checkpoint_and_is_reported_failed(tmp_path, capsys):
    # plain SGD at lr 1e20: the first step gives huge but finite weights, the second a NaN loss
    overrides = ["dataset=RotatedDigits", "algorithm=ERM", "optimizer=sgd", "hparams.lr=1e20", "steps=5",
                 "checkpoint_freq=1", "progress=false", f"output_dir={tmp_path}"]  # fmt: skip
    assert main(["train", *overrides]) == 1
    err = capsys.readouterr().err
    assert "the training loss became nan at step 1; the last checkpoint (before step 1) is kept" in err
    spec = load_job(overrides)
    assert "TrainingDiverged: the training loss became nan at step 1" in (spec.job_dir / "err.txt").read_text()
    assert [r["step"] for r in read_records(spec.job_dir)] == [0]
    saved = load_checkpoint(spec.job_dir, spec.job_id, spec.settings.steps)
    assert saved.step == 1
    assert all(torch.isfinite(v).all() for v in saved.algorithm.values() if torch.is_tensor(v) and v.is_floating_point())
    sweep = Sweep(tmp_path, ["RotatedDigits"], ["ERM"], test_envs=[[0]], hparams_seeds=[0], trial_seeds=[0],
                  overrides=overrides[2:-1])  # fmt: skip
    jobs = sweep.jobs()
    assert jobs[0].job_dir == spec.job_dir
    states = sweep_states(jobs)
    assert states[spec.job_dir] == FAILED
    assert "the training loss became nan at step 1" in format_status(jobs, states)


@pytest.mark.slow
def test_weights_that_overflow_are_never_checkpointed(tmp_path, capsys):
    # lr 1e30 with weight decay 1e10 steps every weight by about -1e39 * w: past float32's largest
    # number in the first step, whose loss was finite
    overrides = ["dataset=RotatedDigits", "algorithm=ERM", "optimizer=sgd", "hparams.lr=1e30",
                 "hparams.weight_decay=1e10", "steps=5", "checkpoint_freq=1", "progress=false",
                 f"output_dir={tmp_path}"]  # fmt: skip
    assert main(["train", *overrides]) == 1
    assert "the weights became NaN or infinite at step 0; no checkpoint was saved yet" in capsys.readouterr().err
    assert not checkpoint_path(load_job(overrides).job_dir).exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+foo=1"], r"unknown config key 'foo' \(added with \+foo=...\); valid keys: algorithm, backbone"),
        (["+precision.trian=fp32"], r"unknown config key 'precision.trian'.*valid keys of precision: eval, polar, train"),
        (["+wandb.projet=x"], r"unknown config key 'wandb.projet'.*valid keys of wandb: entity, group, mode, project"),
        (["+dataset.bar=2"], r"unknown option\(s\) dataset.bar for RotatedDigits; valid options: none"),
        (["dataset=PACS", "+dataset.eval_cahce=off"], r"dataset.eval_cahce for PACS; valid options: eval_augment, eval_cache"),
    ],
)  # fmt: skip
def test_keys_added_with_plus_that_nothing_knows_are_refused(tmp_path, capsys, overrides, message):
    assert main(["train", "--dry-run", *overrides, f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sage-bench: error: ") and re.search(message, err), err
