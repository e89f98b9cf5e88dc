"""Configuration errors stop before any work, with messages that name the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sage_bench.cli import main
from sage_bench.config import ConfigError, load_job


@pytest.mark.parametrize(
    "override, expected",
    [
        ("dataset=Nope", ["unknown dataset 'Nope'", "ColoredDigits", "RotatedDigits"]),
        ("algorithm=Nope", ["unknown algorithm 'Nope'", "ERM"]),
        ("backbone=nope", ["unknown backbone 'nope'", "digits_cnn"]),
        ("optimizer=nope", ["unknown optimizer 'nope'", "adam", "sgd"]),
        ("hparams.lrr=0.1", ["unknown hyperparameter 'lrr'", "lr", "batch_size"]),
        ("bogus=1", ["unknown config key 'bogus'", "test_envs"]),
        ("steps=abc", ["'steps'", "abc"]),
        ("test_envs=[0,x]", ["test_envs[1]", "'x'"]),
        ("hparams.lr=abc", ["hparams.lr must be a number", "'abc'"]),
        ("hparams.batch_size=1.5", ["hparams.batch_size must be an integer", "1.5"]),
        ("test_envs=[6]", ["test_envs [6] out of range", "5=75"]),
        ("test_envs=[]", ["at least one environment"]),
        ("test_envs=[0,0]", ["repeated"]),
        ("dataset=ColoredDigits test_envs=[0,1,2]", ["leaves no training environment"]),
        ("holdout_fraction=1.5", ["holdout_fraction"]),
        ("steps=0", ["'steps'", ">= 1"]),
        ("device=tpu", ["'device'", "auto, cpu, cuda"]),
    ],
)
def test_bad_config_is_reported(override, expected):
    with pytest.raises(ConfigError) as info:
        load_job(override.split())
    for text in expected:
        assert text in str(info.value)


def test_cli_error_exits_nonzero_and_creates_nothing(tmp_path, capsys):
    code = main(["train", "algorithm=Nope", f"output_dir={tmp_path / 'out'}"])
    assert code == 2
    assert "unknown algorithm 'Nope'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a real process: its exit code
def test_console_script_exit_code(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sage_bench.cli", "train", "hparams.nope=1", f"output_dir={out}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown hyperparameter 'nope'" in proc.stderr
    assert not out.exists()


def test_overrides_reach_the_job(tmp_path):
    spec = load_job(
        [
            "dataset=ColoredDigits",
            "test_envs=[2]",
            "trial_seed=3",
            "hparams_seed=0",
            "steps=7",
            "checkpoint_freq=3",
            "hparams.lr=0.01",
            "hparams.batch_size=16",
            f"output_dir={tmp_path}",
        ]
    )
    assert spec.dataset == "ColoredDigits" and spec.settings.test_envs == [2] and spec.trial_seed == 3
    assert spec.settings.steps == 7 and spec.settings.checkpoint_freq == 3
    assert spec.hparams["lr"] == 0.01 and isinstance(spec.hparams["lr"], float)
    assert spec.hparams["batch_size"] == 16
    assert spec.backbone == "digits_cnn"  # the data set's default
    assert spec.job_dir.parent == tmp_path


def test_dataset_defaults_for_steps_and_checkpoints():
    from sage_bench.data import RotatedDigits

    spec = load_job([])
    assert spec.settings.steps == RotatedDigits.N_STEPS
    assert spec.settings.checkpoint_freq == RotatedDigits.CHECKPOINT_FREQ


def test_job_folder_is_a_hash_of_the_arguments(tmp_path):
    a = load_job([f"output_dir={tmp_path}"])
    b = load_job([f"output_dir={tmp_path}", "device=cpu", "progress=false"])  # same job
    c = load_job([f"output_dir={tmp_path}", "trial_seed=1"])
    d = load_job([f"output_dir={tmp_path}", f"steps={a.settings.steps}"])  # the default, made explicit
    assert a.job_dir == b.job_dir == d.job_dir
    assert a.job_dir != c.job_dir
    assert len(a.job_dir.name) == 32


def test_seed_defaults_to_domainbed_sweep_formula():
    from sage_bench.seeding import seed_hash

    spec = load_job(["test_envs=[1]", "hparams_seed=2", "trial_seed=1"])
    assert spec.seed == seed_hash("RotatedDigits", "ERM", [1], 2, 1)
    assert load_job(["seed=5"]).seed == 5
