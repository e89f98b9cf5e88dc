"""Sweeps without SLURM: planning, states, status, delete_incomplete, local launchers, disk."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sage_bench.cli import main
from sage_bench.config import load_job
from sage_bench.errors import UserError
from sage_bench.lock import job_lock
from sage_bench.records import read_records
from sage_bench.sweep import (
    Sweep,
    all_test_env_combinations,
    expand_grid,
    format_status,
    sweep_states,
)
from sage_bench.sweep import state as st
from sage_bench.sweep.disk import estimate_disk
from sage_bench.sweep.launchers import SubprocessLauncher, compose_launcher, make_launcher

REPO = Path(__file__).resolve().parents[1]
SHORT = ["steps=21", "checkpoint_freq=10", "hparams.batch_size=16"]


@pytest.fixture
def job_env(monkeypatch):
    """Job processes import this checkout and use one thread (fast on a busy machine)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sweep_args(action: str, out: Path, *extra: str) -> list[str]:
    return [
        "sweep", action, "--output-dir", str(out), "--datasets", "RotatedDigits", "--algorithms", "ERM",
        "--test-envs", "0", "1", "--n-hparams", "1", "--n-trials", "1", *SHORT, *extra,
    ]  # fmt: skip


# -- planning --------------------------------------------------------------------------------


def test_all_test_env_combinations_are_domainbeds():
    assert all_test_env_combinations(3) == [[0], [0, 1], [0, 2], [1], [1, 2], [2]]
    n = 6
    combos = all_test_env_combinations(n)
    assert len(combos) == n + n * (n - 1) // 2
    assert len({tuple(c) for c in combos}) == len(combos)


def test_grid_counts_and_order(tmp_path):
    sweep = Sweep(
        tmp_path, ["RotatedDigits", "ColoredDigits"], ["ERM"], "single", range(0, 3), range(2),
        ["hparams.lr=1e-3,3e-4", "steps=5"],
    )  # fmt: skip
    jobs = sweep.jobs()
    assert len(jobs) == (6 + 3) * 2 * 3 * 2  # test envs x lr grid x hparams seeds x trial seeds
    assert len({job.job_dir for job in jobs}) == len(jobs)
    assert all(job.job_dir.parent == tmp_path.resolve() for job in jobs)
    first = jobs[0].spec
    assert (first.dataset, first.settings.test_envs, first.hparams_seed, first.trial_seed) == (
        "RotatedDigits",
        [0],
        0,
        0,
    )
    assert first.hparams["lr"] == 1e-3 and first.settings.steps == 5
    assert "hparams.lr=0.001" in jobs[0].describe()
    all_envs = Sweep(tmp_path, ["RotatedDigits"], ["ERM"], "all", [0], [0]).jobs()
    assert [j.spec.settings.test_envs for j in all_envs] == all_test_env_combinations(6)
    assert (
        not tmp_path.joinpath("x").exists() and list(tmp_path.iterdir()) == []
    )  # planning writes nothing


def test_every_job_line_loads_to_the_same_job(tmp_path):
    jobs = Sweep(
        tmp_path, ["ColoredDigits"], ["ERM"], "all", [0, 3], [1], ["hparams.lr=1e-3,2e-3"]
    ).jobs()
    for job in jobs:
        spec = load_job(shlex.split(job.line))
        assert spec.job_dir == job.job_dir
        assert spec == job.spec


def test_output_dir_with_hydra_syntax_in_its_name(tmp_path):
    out = tmp_path / "it's a sweep, with=signs"
    [job] = Sweep(out, ["RotatedDigits"], ["ERM"], [[0]], [0], [0]).jobs()
    spec = load_job(shlex.split(job.line))
    assert spec.job_dir == job.job_dir and spec.job_dir.parent == out
    assert spec.wandb["group"] == out.name


def test_grid_expansion():
    assert expand_grid(["a=1,2", "b=x", "c=range(0,2)"]) == [
        ["a=1", "b=x", "c=0"], ["a=1", "b=x", "c=1"], ["a=2", "b=x", "c=0"], ["a=2", "b=x", "c=1"],
    ]  # fmt: skip
    assert expand_grid(["backbone.channels=[8,8,8,8]"]) == [["backbone.channels=[8,8,8,8]"]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overrides": ["test_envs=[1]"]}, "--test-envs"),
        ({"overrides": ["trial_seed=2"]}, "--n-trials"),
        ({"overrides": ["hparams.nonsense=1"]}, "unknown hyperparameter 'nonsense'"),
        ({"overrides": ["hparams.lr=interval(0,1)"]}, "list of values"),
        ({"datasets": ["MNIST"]}, "unknown dataset 'MNIST'"),
        ({"algorithms": ["Nope"]}, "unknown algorithm 'Nope'"),
        ({"test_envs": [[7]]}, "out of range"),
    ],
)
def test_a_bad_grid_stops_before_anything_is_written(tmp_path, kwargs, message):
    definition = {
        "output_dir": tmp_path / "out",
        "datasets": ["RotatedDigits"],
        "algorithms": ["ERM"],
    }
    with pytest.raises(UserError, match=message):
        Sweep(**{**definition, **kwargs}, hparams_seeds=[0], trial_seeds=[0]).jobs()
    assert not (tmp_path / "out").exists()


def test_device_cuda_plans_on_a_machine_without_gpu(tmp_path):
    jobs = Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], ["device=cuda"]).jobs()
    assert "device=cuda" in jobs[0].overrides
    assert (
        jobs[0].job_dir
        == Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0]], [0], [0]).jobs()[0].job_dir
    )


# -- states, status, delete_incomplete -------------------------------------------------------


def _four_jobs(tmp_path):
    return Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0], [1], [2], [3]], [0], [0]).jobs()


def test_states_from_job_folders(tmp_path):
    done, failed, stopped, untouched = _four_jobs(tmp_path)
    for job in (done, failed, stopped):
        job.job_dir.mkdir(parents=True)
    (done.job_dir / "done").write_text("done")
    (failed.job_dir / "err.txt").write_text("Traceback...\nValueError: boom\n")
    states = sweep_states([done, failed, stopped, untouched])
    assert [states[j.job_dir] for j in (done, failed, stopped, untouched)] == [
        st.DONE, st.FAILED, st.INTERRUPTED, st.NOT_LAUNCHED,
    ]  # fmt: skip
    with job_lock(stopped.job_dir):
        assert st.job_state(stopped.job_dir) == st.RUNNING
    st.write_launch_record(untouched.job_dir, launcher="slurm", slurm_job_id="12_3", log="/nowhere")
    assert st.job_state(untouched.job_dir, {"12_3": "PENDING"}) == st.QUEUED
    assert st.job_state(untouched.job_dir, {"12_3": "RUNNING"}) == st.RUNNING
    assert st.job_state(untouched.job_dir, {}) == st.INTERRUPTED  # left the queue without finishing

    text = format_status(
        [done, failed, stopped, untouched], sweep_states([done, failed, stopped, untouched])
    )
    assert (
        text.splitlines()[0]
        == "4 jobs: 1 done, 3 incomplete (1 failed, 2 interrupted), 0 not launched"
    )
    assert "ValueError: boom" in text and str(failed.job_dir) in text


def test_status_and_delete_incomplete_from_the_command_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sweep"
    jobs = Sweep(out, ["RotatedDigits"], ["ERM"], [[0], [1]], [0], [0], SHORT).jobs()
    done, failed = jobs
    for job in jobs:
        job.job_dir.mkdir(parents=True)
    (done.job_dir / "done").write_text("done")
    (failed.job_dir / "err.txt").write_text("line 1\nline 2\nRuntimeError: exploded\n")
    assert main(sweep_args("status", out, "--lines", "2")) == 0
    text = capsys.readouterr().out
    assert "2 jobs: 1 done, 1 incomplete (1 failed), 0 not launched" in text
    assert "line 2" in text and "RuntimeError: exploded" in text and "line 1" not in text

    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # not a terminal: confirmation needs --yes
    assert main(sweep_args("delete_incomplete", out)) == 2
    assert failed.job_dir.exists()
    assert main(sweep_args("delete_incomplete", out, "--yes")) == 0
    assert not failed.job_dir.exists() and done.job_dir.exists()
    capsys.readouterr()
    main(sweep_args("status", out))
    assert "2 jobs: 1 done, 0 incomplete, 1 not launched" in capsys.readouterr().out


# -- launching -------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_sweep_runs_every_job_reports_failures_and_relaunch_finishes_what_is_missing(
    tmp_path, capsys, job_env
):
    out = tmp_path / "sweep"
    grid = ["hparams.lr=1e-3,2e-3", "--test-envs", "0"]
    good, bad = Sweep(
        out, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], [*SHORT, "hparams.lr=1e-3,2e-3"]
    ).jobs()
    # a results file that cannot be written: the second job fails once it runs
    (bad.job_dir / "results.jsonl").mkdir(parents=True)
    assert main(sweep_args("launch", out, *grid)) == 1
    text = capsys.readouterr().out
    assert "2 jobs: 0 done, 1 incomplete (1 interrupted), 1 not launched" in text and "disk: 2 jobs" in text
    assert "1 of 2 jobs did not finish" in text
    assert (good.job_dir / "done").exists() and not (bad.job_dir / "done").exists()
    assert [r["step"] for r in read_records(good.job_dir)] == [0, 10, 20]

    main(sweep_args("status", out, *grid))
    text = capsys.readouterr().out
    assert "2 jobs: 1 done, 1 incomplete (1 failed), 0 not launched" in text
    assert "IsADirectoryError" in text

    # the same command again runs only what is not done
    finished = (good.job_dir / "results.jsonl").read_text()
    assert main(sweep_args("launch", out, *grid)) == 1
    text = capsys.readouterr().out
    assert "launching 1 jobs (1 of them resume)" in text and "1 of 1 jobs did not finish" in text
    assert (good.job_dir / "results.jsonl").read_text() == finished
    shutil.rmtree(bad.job_dir)
    assert main(sweep_args("launch", out, "hparams.lr=1e-3", "--test-envs", "0")) == 0  # done already
    assert "nothing to launch" in capsys.readouterr().out


def test_multi_gpu_launcher_gives_each_running_job_its_own_gpu(tmp_path, monkeypatch):
    """Four jobs on two GPUs: never more than two at once, each alone on its GPU."""
    from sage_bench.sweep import launchers

    jobs = _four_jobs(tmp_path)
    log = tmp_path / "log.jsonl"
    script = (
        "import json, os, sys, time\n"
        "start = time.time(); time.sleep(0.5)\n"
        "with open(sys.argv[1], 'a') as f:\n"
        "    f.write(json.dumps([os.environ['CUDA_VISIBLE_DEVICES'], start, time.time()]) + '\\n')\n"
    )
    monkeypatch.setattr(
        launchers, "train_command", lambda job: [sys.executable, "-c", script, str(log)]
    )
    launcher = make_launcher(
        compose_launcher(["launcher=multi_gpu", "launcher.gpus=[3,5]"]), tmp_path
    )
    assert launcher.concurrency == 2
    assert launcher.launch(jobs) == 0
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(runs) == 4 and {gpu for gpu, _, _ in runs} == {"3", "5"}
    for gpu in ("3", "5"):
        spans = sorted((s, e) for g, s, e in runs if g == gpu)
        assert all(
            a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)
        )  # one at a time
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="no GPU is visible"):
            make_launcher(compose_launcher(["launcher=multi_gpu"]), tmp_path)


def test_local_launcher_counts_failures(tmp_path, monkeypatch):
    from sage_bench.sweep import launchers

    codes = iter([0, 3, 0])
    monkeypatch.setattr(
        launchers,
        "train_command",
        lambda job: [sys.executable, "-c", f"raise SystemExit({next(codes)})"],
    )
    assert SubprocessLauncher([{}]).launch(_four_jobs(tmp_path)[:3]) == 1


def test_write_jobs_lists_what_launch_would_start(tmp_path, capsys):
    out = tmp_path / "sweep"
    jobs = Sweep(out, ["RotatedDigits"], ["ERM"], [[0], [1]], [0], [0], SHORT).jobs()
    jobs[0].job_dir.mkdir(parents=True)
    (jobs[0].job_dir / "done").write_text("done")
    assert main(sweep_args("launch", out, "--write-jobs", str(tmp_path / "jobs.txt"))) == 0
    lines = (tmp_path / "jobs.txt").read_text().splitlines()
    assert len(lines) == 1 and load_job(shlex.split(lines[0])).job_dir == jobs[1].job_dir
    assert "sbatch --array=0-0" in capsys.readouterr().out
    assert not jobs[1].job_dir.exists()  # nothing launched


def test_overrides_may_sit_between_options(tmp_path, capsys):
    args = [
        "sweep", "launch", "--dry-run", "steps=7", "--output-dir", str(tmp_path), "--datasets", "RotatedDigits",
        "hparams.lr=1e-3,2e-3", "--algorithms", "ERM", "--n-hparams", "1", "--n-trials", "1", "--test-envs", "0",
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "2 jobs: 0 done, 0 incomplete, 2 not launched" in text and "hparams.lr=0.002" in text
    with pytest.raises(SystemExit) as exited:  # argparse's usage error
        main([*args, "--no-such-option"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_bad_launcher_settings_are_named(tmp_path, capsys):
    assert main(sweep_args("launch", tmp_path, "launcher=slurm", "launcher.gpus=2")) == 2
    assert (
        "unknown key launcher.gpus for launcher=slurm; valid keys: launcher.partition"
        in capsys.readouterr().err
    )
    assert main(sweep_args("launch", tmp_path, "launcher=pbs")) == 2
    assert (
        "unknown launcher 'pbs'; valid choices: local, multi_gpu, slurm" in capsys.readouterr().err
    )


def test_slurm_parameters_map_to_sbatch_options(tmp_path):
    cfg = compose_launcher(
        ["launcher=slurm", "launcher.gres=gpu:3g.40gb:1", "launcher.partition=a100", "launcher.account=lab",
         "launcher.timeout_min=90", "launcher.mem_gb=7.5", "launcher.array_parallelism=8"]
    )  # fmt: skip
    launcher = make_launcher(cfg, tmp_path)
    params = launcher.executor_parameters()
    assert (
        params["gres"] == "gpu:3g.40gb:1"
        and params["partition"] == "a100"
        and params["account"] == "lab"
    )
    assert params["time"] == 90 and params["mem"] == "7680MB" and params["array_parallelism"] == 8
    assert params["additional_parameters"] == {"requeue": True} and params["signal_delay_s"] == 120
    assert launcher.concurrency == 8


# -- disk ------------------------------------------------------------------------------------


def test_disk_estimate_measures_weights_and_optimizer_state(tmp_path):
    from sage_bench.models import build_network

    jobs = Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0], [1], [2]], [0], [0], SHORT).jobs()
    estimate = estimate_disk(jobs, concurrency=2)
    network = build_network("digits_cnn", (1, 16, 16), 10)
    weights = sum(p.numel() * p.element_size() for p in network.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in network.parameters())
    assert estimate.checkpoint == pytest.approx(
        weights + 2 * trainable, rel=0.001
    )  # Adam: 2 moments
    # two jobs at once, each with two checkpoints while it saves one (the old stays until the new is written)
    assert estimate.needed == estimate.kept + 2 * 2 * estimate.checkpoint
    sgd = estimate_disk(
        Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], ["optimizer=sgd"]).jobs(), 1
    )
    assert sgd.checkpoint == pytest.approx(weights + trainable, rel=0.001)  # one momentum buffer
    kept_model = estimate_disk(
        Sweep(
            tmp_path, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], [*SHORT, "save_final_model=true"]
        ).jobs(),
        1,
    )
    assert kept_model.kept == pytest.approx(estimate.kept / 3 + weights, rel=0.01)


def test_disk_estimate_bounds_what_a_finished_job_keeps(tmp_path):
    from sage_bench.run import run_job

    jobs = Sweep(tmp_path, ["RotatedDigits"], ["ERM"], [[0]], [0], [0], SHORT).jobs()
    run_job(jobs[0].spec)
    kept = sum(p.stat().st_size for p in jobs[0].job_dir.iterdir())
    estimated = estimate_disk(jobs, 1).kept
    assert kept <= estimated <= 3 * kept


def test_launch_refuses_when_the_disk_is_too_small(tmp_path, capsys, monkeypatch):
    import sage_bench.sweep.disk as disk

    monkeypatch.setattr(disk, "free_bytes", lambda path: 1000)
    assert main(sweep_args("launch", tmp_path / "sweep")) == 2
    captured = capsys.readouterr()
    assert "too little free disk" in captured.err and "--skip-disk-check" in captured.err
    assert "1.0 KB free" in captured.out
    assert not (tmp_path / "sweep").exists()


def test_wait_for_lock_holder_then_run(tmp_path):
    """A second process for the same job waits briefly, then refuses; it never runs it twice."""
    from sage_bench.lock import JobAlreadyRunning

    job_dir = tmp_path / "job"
    job_dir.mkdir()
    start = time.monotonic()
    with job_lock(job_dir), pytest.raises(JobAlreadyRunning):
        with job_lock(job_dir, wait_s=0.3):
            pass
    assert time.monotonic() - start >= 0.3


def _limited_memory(limit: int):
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


@pytest.mark.slow  # a real process under a memory limit
@pytest.mark.parametrize("steps, freq", [(10**20, 5), (10**9, 1)])
def test_a_huge_steps_is_counted_not_listed_by_the_disk_estimate(tmp_path, steps, freq):
    """``sweep launch`` estimates the records of a job of 10**20 steps in a real process under
    a 4 GB address-space limit (listing every record step exhausts any memory)."""
    args = ["sweep", "launch", "--output-dir", str(tmp_path / "sweep"), "--datasets", "RotatedDigits", "--algorithms",
            "ERM", "--test-envs", "0", "--n-hparams", "1", "--n-trials", "1", "--write-jobs", str(tmp_path / "jobs.txt"),
            f"steps={steps}", f"checkpoint_freq={freq}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sage_bench.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited_memory(4 << 30))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "disk: 1 jobs keep" in done.stdout
    assert len((tmp_path / "jobs.txt").read_text().splitlines()) == 1


def test_the_record_count_is_that_of_the_steps_a_job_records():
    from sage_bench.config.dg import KIND

    for steps, freq in itertools.product(range(1, 30), range(1, 12)):
        spec = SimpleNamespace(settings=SimpleNamespace(steps=steps, checkpoint_freq=freq))
        recorded = [s for s in range(steps) if s % freq == 0 or s == steps - 1]  # as run/dg.py records
        assert KIND.record_count(spec) == len(recorded), (steps, freq)
