"""Launchers: run a sweep's jobs here one after another, on every local GPU at once, or as
SLURM job arrays.

A launcher is chosen and configured through the Hydra group ``configs/launcher/``
(``launcher=slurm launcher.gres=gpu:1g.20gb:1 ...``). The local launchers start one
``sage-bench train`` process per job and wait; the SLURM launcher submits and returns.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf

from sage_bench.config import CONFIG_MODULE
from sage_bench.errors import ConfigError, UserError
from sage_bench.sweep.plan import SweepJob
from sage_bench.sweep.state import DONE, RUNNING, failure_reason, job_state, write_launch_record

# -- configuration (values and comments live in configs/launcher/*.yaml) ---------------------


@dataclass
class LocalLauncherConfig:
    name: str = "local"


@dataclass
class MultiGPULauncherConfig:
    name: str = "multi_gpu"
    gpus: list[str] | None = None


@dataclass
class SlurmLauncherConfig:
    name: str = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    timeout_min: int = MISSING
    gres: str | None = None
    cpus_per_task: int = MISSING
    mem_gb: float = MISSING
    array_parallelism: int = MISSING
    max_array_size: int = MISSING
    requeue: bool = MISSING
    signal_delay_s: int = MISSING
    max_num_timeout: int = MISSING
    constraint: str | None = None
    exclude: str | None = None
    comment: str | None = None
    job_name: str = MISSING
    setup: list[str] = field(default_factory=list)
    additional_parameters: dict[str, Any] = field(default_factory=dict)


_SCHEMAS = {
    "local": LocalLauncherConfig,
    "multi_gpu": MultiGPULauncherConfig,
    "slurm": SlurmLauncherConfig,
}
for _name, _schema in _SCHEMAS.items():
    ConfigStore.instance().store(group="launcher", name=f"{_name}_schema", node=_schema)


def is_launcher_override(override: str) -> bool:
    """Whether a command-line override configures the launcher (``launcher=...``, ``launcher.*``)."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key == "launcher" or key.startswith("launcher.")


def compose_launcher(overrides: Sequence[str] = ()) -> DictConfig:
    """The launcher's configuration: ``configs/launcher/<name>.yaml`` with ``overrides``."""
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            return compose(config_name="sweep", overrides=list(overrides)).launcher
    except MissingConfigException as exc:
        name = (exc.missing_cfg_file or "").rpartition("/")[2]
        options = ", ".join(sorted(_SCHEMAS))
        raise ConfigError(f"unknown launcher {name!r}; valid choices: {options}") from exc
    except (ConfigCompositionException, OverrideParseException) as exc:
        text = str(exc.__cause__ or exc)
        first = text.splitlines()[0]
        unknown = re.match(r"Key '([^']+)' not in", first)
        if not unknown:
            key = re.search(r"full_key: (\S+)", text)
            where = f"bad value for '{key.group(1)}'" if key else "bad launcher setting"
            raise ConfigError(f"{where}: {first}") from exc
        name = next((o.split("=", 1)[1] for o in overrides if o.startswith("launcher=")), "local")
        keys = [
            f"launcher.{f.name}"
            for f in fields(_SCHEMAS.get(name, LocalLauncherConfig))
            if f.name != "name"
        ]
        valid = f"valid keys: {', '.join(keys)}" if keys else "it has no settings"
        raise ConfigError(
            f"unknown key launcher.{unknown.group(1)} for launcher={name}; {valid}"
        ) from exc


# -- launchers -------------------------------------------------------------------------------


class Launcher(Protocol):
    concurrency: int  # most jobs running at the same time

    def launch(self, jobs: Sequence[SweepJob]) -> int:
        """Launch ``jobs``; return how many of them failed (0 for launchers that do not wait;
        a job that another process runs or ran is not a failure)."""
        ...


def train_command(job: SweepJob) -> list[str]:
    """The command that runs one job in a fresh process."""
    return [sys.executable, "-m", "sage_bench.cli", "train", *job.overrides]


class SubprocessLauncher:
    """Runs each job as its own ``sage-bench train`` process, one per slot at a time.

    A slot is the environment a job runs with, e.g. ``{"CUDA_VISIBLE_DEVICES": "1"}``; one
    empty slot runs the jobs one after another. Ctrl-C stops the running jobs after their
    current step, with a checkpoint saved, and then the sweep.
    """

    def __init__(self, slots: Sequence[dict[str, str]], poll_s: float = 0.2):
        if not slots:
            raise ValueError("a launcher needs at least one slot")
        self.slots = list(slots)
        self.concurrency = len(self.slots)
        self.poll_s = poll_s

    def launch(self, jobs: Sequence[SweepJob]) -> int:
        pending = list(enumerate(jobs, start=1))
        free = list(self.slots)
        running: dict[subprocess.Popen, tuple[int, SweepJob, dict[str, str]]] = {}
        failed = elsewhere = 0
        try:
            while pending or running:
                while pending and free:
                    number, job = pending.pop(0)
                    slot = free.pop(0)
                    where = " ".join(f"{k}={v}" for k, v in slot.items())
                    print(
                        f"[{number}/{len(jobs)}] {job.describe()}"
                        + (f" ({where})" if where else ""),
                        flush=True,
                    )
                    proc = subprocess.Popen(train_command(job), env={**os.environ, **slot})
                    running[proc] = (number, job, slot)
                for proc in [p for p in running if p.poll() is not None]:
                    number, job, slot = running.pop(proc)
                    free.append(slot)
                    if proc.returncode == 0:
                        continue
                    # another launch of the same sweep may run (or have run) this job
                    state = job_state(job.job_dir)
                    if state == DONE:
                        print(f"[{number}/{len(jobs)}] done by another process: {job.job_dir}", flush=True)
                    elif state == RUNNING:
                        elsewhere += 1
                        print(f"[{number}/{len(jobs)}] running in another process: {job.job_dir}", flush=True)
                    else:
                        failed += 1
                        reason = failure_reason(job.job_dir)
                        print(
                            f"[{number}/{len(jobs)}] exited with code {proc.returncode}: {job.job_dir}"
                            + (f"\n    {reason}" if reason else ""),
                            flush=True,
                        )
                if running:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            # the jobs got the Ctrl-C too: they stop after their step and save a checkpoint
            print(
                "sage-bench: waiting for the running jobs to save their checkpoints",
                file=sys.stderr,
            )
            for proc in running:
                proc.wait()
            raise
        if elsewhere:
            print(
                f"{elsewhere} of {len(jobs)} jobs are running in another process; "
                "`sage-bench sweep status` shows when they are done",
                flush=True,
            )
        return failed


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [g.strip() for g in value.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def make_launcher(cfg: DictConfig, output_dir: Path) -> Launcher:
    """The launcher ``cfg`` (from ``compose_launcher``) describes."""
    if cfg.name == "local":
        return SubprocessLauncher([{}])
    if cfg.name == "multi_gpu":
        gpus = [str(g) for g in cfg.gpus] if cfg.gpus is not None else visible_gpus()
        if not gpus:
            raise UserError(
                "launcher=multi_gpu but no GPU is visible; use launcher=local, or name them: launcher.gpus=[0,1]"
            )
        threads = os.environ.get("OMP_NUM_THREADS") or str(
            max(1, (os.cpu_count() or 1) // len(gpus))
        )
        return SubprocessLauncher(
            [{"CUDA_VISIBLE_DEVICES": g, "OMP_NUM_THREADS": threads} for g in gpus]
        )
    if cfg.name == "slurm":
        return SlurmLauncher(OmegaConf.to_object(cfg), output_dir)
    raise ConfigError(f"unknown launcher {cfg.name!r}; valid choices: {', '.join(_SCHEMAS)}")


class SlurmLauncher:
    """Submits jobs as SLURM job arrays through submitit, one array task per job.

    Each task runs ``sage_bench.sweep.slurm.SweepTask``: the job resumes from its checkpoint if
    it has one. SLURM's pre-timeout signal (SIGUSR2, ``signal_delay_s`` before the limit) makes
    the job save a checkpoint and requeue itself (up to ``max_num_timeout`` times); with
    ``requeue`` SLURM puts a preempted task back in the queue. Submission logs, pickles and task
    logs go to ``OUTPUT_DIR/slurm/``; each job folder notes its task in ``launch.json``.
    """

    def __init__(self, cfg: SlurmLauncherConfig, output_dir: Path):
        self.cfg = cfg
        self.folder = Path(output_dir).resolve() / "slurm"
        self.concurrency = cfg.array_parallelism

    def executor_parameters(self) -> dict[str, Any]:
        """The parameters of ``submitit.SlurmExecutor.update_parameters``."""
        c = self.cfg
        additional = dict(c.additional_parameters)
        if c.requeue:
            additional.setdefault("requeue", True)
        params: dict[str, Any] = {
            "job_name": c.job_name,
            "time": c.timeout_min,
            "cpus_per_task": c.cpus_per_task,
            "mem": f"{int(c.mem_gb * 1024)}MB",
            "array_parallelism": c.array_parallelism,
            "signal_delay_s": c.signal_delay_s,
            # as many CPU threads as CPUs allocated: more only slow every job on the node down
            "setup": [
                'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
                *c.setup,
            ],
            "additional_parameters": additional or None,
        }
        for key in ("partition", "account", "qos", "gres", "constraint", "exclude", "comment"):
            if getattr(c, key) is not None:
                params[key] = getattr(c, key)
        return {k: v for k, v in params.items() if v is not None}

    def launch(self, jobs: Sequence[SweepJob]) -> int:
        try:
            import submitit

            from sage_bench.sweep.slurm import SweepTask
        except ImportError as exc:
            raise UserError(
                "launcher=slurm needs submitit: pip install 'sage-bench[slurm]'"
            ) from exc
        try:
            executor = submitit.SlurmExecutor(
                folder=self.folder, max_num_timeout=self.cfg.max_num_timeout
            )
        except RuntimeError as exc:  # no srun on PATH
            raise UserError(f"launcher=slurm cannot reach SLURM here: {exc}") from exc
        try:
            executor.update_parameters(**self.executor_parameters())
        except ValueError as exc:
            raise ConfigError(f"bad SLURM parameters: {str(exc).splitlines()[0]}") from exc
        size = self.cfg.max_array_size
        arrays = []
        for start in range(0, len(jobs), size):
            chunk = jobs[start : start + size]
            for job in chunk:
                job.job_dir.mkdir(parents=True, exist_ok=True)
            try:
                submitted = executor.map_array(SweepTask(), [list(job.overrides) for job in chunk])
            except Exception as exc:  # sbatch refused: bad partition, gres, account, time...
                message = str(exc).strip().splitlines()
                raise UserError(
                    f"sbatch refused the array ({len(arrays)} array(s) submitted before): "
                    + " ".join(line.strip() for line in message[-3:])
                ) from exc
            for job, task in zip(chunk, submitted, strict=True):
                write_launch_record(
                    job.job_dir,
                    launcher="slurm",
                    slurm_job_id=task.job_id,
                    log=str(task.paths.stderr),
                )
            arrays.append(submitted[0].job_id.split("_")[0])
            print(f"submitted {len(chunk)} jobs as SLURM job {arrays[-1]}", flush=True)
        return 0
