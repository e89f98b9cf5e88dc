"""Train one job into its output folder (DomainBed's ``train.py``, as a function)."""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from sage_bench import __version__
from sage_bench.algorithms import build_algorithm
from sage_bench.config import JobSpec
from sage_bench.data import get_dataset_class
from sage_bench.data.loaders import eval_loader, infinite_loader
from sage_bench.data.splits import split_environments
from sage_bench.models import backbone_preprocess, build_network
from sage_bench.optim import build_optimizer
from sage_bench.precision import FIDELITY_WARNING, Precision
from sage_bench.records import (
    ERROR_FILE,
    LOG_FILE,
    RESULTS_FILE,
    append_record,
    is_done,
    mark_done,
    truncate_records,
)
from sage_bench.run import checkpoint as ckpt
from sage_bench.run.accelerate import accelerate
from sage_bench.run.alignment import HeldOutGradientProbe
from sage_bench.run.evaluate import accuracy
from sage_bench.run.lock import job_lock
from sage_bench.run.tracking import Tracker
from sage_bench.seeding import seed_everything, seed_hash

JOB_FILE = "job.json"
MODEL_FILE = "model.pt"  # the final model, kept when save_final_model=true
_SCHEDULER_VARIABLES = (
    "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
    "CUDA_VISIBLE_DEVICES",
)  # fmt: skip


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar instead of through it; warnings and errors go
    to standard error."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the last checkpoint (all finite) is kept."""


@contextmanager
def _job_logger(job_dir: Path, console: bool = True) -> Iterator[logging.Logger]:
    logger = logging.getLogger(f"sage_bench.job.{job_dir.name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    file_handler = logging.FileHandler(job_dir / LOG_FILE, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [file_handler]
    if console:
        console_handler = _TqdmHandler()
        console_handler.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(console_handler)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield logger
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def _peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``; on CPU, the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _format_row(values: list, width: int = 12) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            v = f"{v:.4f}"
        return str(v).ljust(width)[:width]

    return "  ".join(fmt(v) for v in values)


def run_job(spec: JobSpec, console: bool = True) -> Path:
    """Train ``spec`` and write its folder ``spec.job_dir``; return that folder.

    ``console=False`` writes the log only to the job's ``out.txt``.

    A finished job (its ``done`` marker exists) is not run again; an unfinished one resumes
    from its checkpoint. SIGTERM, SIGUSR2 or Ctrl-C stop the job after the current step with
    a checkpoint saved (``JobInterrupted``). Raises ``JobAlreadyRunning`` when another process
    runs the job.
    """
    job_dir = spec.job_dir
    if is_done(job_dir):
        ckpt.discard_checkpoint(job_dir)  # left behind by a job killed as it finished
        if console:
            print(f"{job_dir}: already done")
        return job_dir
    job_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(job_dir):
        if is_done(job_dir):  # finished by another process while this one waited for the lock
            print(f"{job_dir}: already done")
            return job_dir
        with _job_logger(job_dir, console) as log, Tracker(log) as tracker, ckpt.StopSignals() as stop:
            (job_dir / ERROR_FILE).unlink(missing_ok=True)
            try:
                try:
                    _train(spec, job_dir, log, stop, tracker)
                except ckpt.UnusableCheckpoint as exc:
                    log.warning(f"{exc}; starting again from step 0")
                    ckpt.discard_checkpoint(job_dir)
                    _train(spec, job_dir, log, stop, tracker)
            except ckpt.JobInterrupted as exc:
                log.warning(f"job {exc}; running it again resumes from there")
                raise
            except BaseException as exc:
                (job_dir / ERROR_FILE).write_text("".join(traceback.format_exception(exc)))
                log.error(f"job failed: {type(exc).__name__}: {exc}")
                raise
    return job_dir


def _describe(spec: JobSpec, log: logging.Logger) -> None:
    log.info("Environment:")
    log.info(f"\tsage-bench: {__version__}")
    log.info(f"\tPython: {platform.python_version()}")
    log.info(f"\tPyTorch: {torch.__version__}")
    log.info(f"\tTorchvision: {torchvision.__version__}")
    log.info(f"\tCUDA: {torch.version.cuda}")
    log.info(f"\tNumPy: {np.__version__}")
    log.info(f"\tHost: {platform.node()} (pid {os.getpid()})")
    for variable in _SCHEDULER_VARIABLES:
        if variable in os.environ:
            log.info(f"\t{variable}: {os.environ[variable]}")
    log.info("Args:")
    for key, value in sorted(spec.record_args().items()):
        log.info(f"\t{key}: {value}")
    log.info("HParams:")
    for key, value in sorted(spec.hparams.items()):
        log.info(f"\t{key}: {value}")


def _run_name(spec: JobSpec) -> str:
    return (
        f"{spec.algorithm} {spec.dataset} test_envs={spec.test_envs} "
        f"hparams_seed={spec.hparams_seed} trial_seed={spec.trial_seed}"
    )


def _train(
    spec: JobSpec, job_dir: Path, log: logging.Logger, stop: ckpt.StopSignals, tracker: Tracker
) -> None:
    _describe(spec, log)
    (job_dir / JOB_FILE).write_text(json.dumps(spec.record_args(), indent=2, sort_keys=True))
    resume = ckpt.load_checkpoint(job_dir, spec.job_id, spec.steps)  # None: start at step 0
    start_step = resume.step if resume else 0
    tracker.start(spec.wandb, job_dir, _run_name(spec), {**spec.record_args(), "hparams": spec.hparams})

    seed_everything(spec.seed)
    device = torch.device(spec.device)
    hparams = spec.hparams

    preprocess = backbone_preprocess(spec.backbone, spec.backbone_options)  # input size, normalisation
    dataset = get_dataset_class(spec.dataset)(
        str(spec.data_dir), spec.test_envs, hparams, preprocess=preprocess, **spec.dataset_options
    )
    splits = split_environments(dataset, spec.holdout_fraction, spec.trial_seed)
    train_envs = [i for i in range(len(dataset)) if i not in spec.test_envs]
    batch_size = hparams["batch_size"]
    pin = device.type == "cuda"
    train_iterators = [
        infinite_loader(
            splits[i].in_split,
            batch_size,
            seed=seed_hash(spec.seed, "train_loader", i),
            start_step=start_step,
            num_workers=spec.num_workers,
            pin_memory=pin,
        )
        for i in train_envs
    ]
    eval_sets = [(f"env{i}_in", s.in_split) for i, s in enumerate(splits)]
    eval_sets += [(f"env{i}_out", s.out_split) for i, s in enumerate(splits)]
    eval_loaders = [
        (name, eval_loader(split, spec.eval_batch_size, spec.num_workers, pin))
        for name, split in eval_sets
    ]

    network = build_network(
        spec.backbone,
        dataset.input_shape,
        dataset.num_classes,
        hparams,
        class_names=dataset.class_names,
        **spec.backbone_options,
    ).to(device)
    optimizer = build_optimizer(spec.optimizer, network.parameters(), hparams, **spec.optimizer_options)
    algorithm = build_algorithm(spec.algorithm, network, optimizer, hparams, family=dataset.HPARAM_FAMILY)
    algorithm.train()
    precision = spec.resolved_precision()
    accelerate(algorithm, device, precision, compile=spec.compile)

    probe = None  # the cosine with the held-out domains' gradient (Figure 5), when asked for
    if spec.test_grad_cosine_freq:
        probe = HeldOutGradientProbe([splits[i].in_split for i in spec.test_envs], batch_size, spec.seed, device)

    steps_per_epoch = min(len(s.in_split) / batch_size for s in splits)
    test_env = spec.test_envs[0]
    val_keys = [f"env{i}_out_acc" for i in train_envs]
    header = ["step", "epoch", "loss", "train_val", f"env{test_env}_in", "step_time"]
    log.info(_format_row(header))

    interval: dict[str, list[float]] = defaultdict(list)
    fidelity_warned = False
    saved_step = start_step  # the step the last checkpoint resumes at (0: none)
    if resume:
        ckpt.restore_checkpoint(resume, algorithm, optimizer)  # the RNGs too: nothing random may follow
        interval.update(resume.interval)
        kept = truncate_records(job_dir, start_step)
        log.info(f"resumed from the checkpoint before step {start_step} ({kept} records kept)")
    else:
        (job_dir / RESULTS_FILE).unlink(missing_ok=True)  # an unfinished earlier attempt starts over
    bar = tqdm(
        range(start_step, spec.steps),
        initial=start_step,
        total=spec.steps,
        desc=f"{spec.algorithm} {spec.dataset} test_envs={spec.test_envs}",
        disable=not spec.progress,
        dynamic_ncols=True,
        leave=False,
    )
    for step in bar:
        start = time.time()
        minibatches = [
            (x.to(device, non_blocking=pin), y.to(device, non_blocking=pin))
            for x, y in (next(it) for it in train_iterators)
        ]
        if probe is not None and step % spec.test_grad_cosine_freq == 0:
            start += probe.measure(step, algorithm, minibatches)  # not part of the step's time
        last = step == spec.steps - 1
        algorithm.measure_fidelity = step % spec.checkpoint_freq == 0 or last
        stats = algorithm.update(minibatches)
        _check_finite(stats, step, saved_step)
        interval["step_time"].append(time.time() - start)
        for key, value in stats.items():
            interval[key].append(float(value))
        if "loss" in stats:
            bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)

        if step % spec.checkpoint_freq == 0 or last:
            record: dict = {"step": step, "epoch": step / steps_per_epoch}
            for key, values in interval.items():
                record[key] = float(np.mean(values))
            for name, loader in eval_loaders:
                record[f"{name}_acc"] = accuracy(algorithm, loader, device)
            if probe is not None:
                record.update(probe.record())
            record["mem_gb"] = _peak_memory_gb(device)
            record["hparams"] = hparams
            record["args"] = spec.record_args()
            append_record(job_dir, record)
            tracker.log({k: v for k, v in record.items() if k not in ("hparams", "args")}, step)
            interval = defaultdict(list)
            fidelity = record.get("perturbation_fidelity")
            if fidelity is not None and fidelity < FIDELITY_WARNING and not fidelity_warned:
                log.warning(_fidelity_warning(spec, precision, fidelity, step))
                fidelity_warned = True
            log.info(
                _format_row(
                    [
                        step,
                        record["epoch"],
                        record.get("loss", float("nan")),
                        float(np.mean([record[k] for k in val_keys])),
                        record[f"env{test_env}_in_acc"],
                        record["step_time"],
                    ]
                )
            )
        if not last and (step % spec.checkpoint_freq == 0 or stop.received is not None):
            _check_finite_weights(algorithm, step, saved_step)  # never checkpoint broken weights
            ckpt.save_checkpoint(job_dir, spec.job_id, step + 1, algorithm, optimizer, interval)
            saved_step = step + 1
            if stop.received is not None:
                raise ckpt.JobInterrupted(stop.received, step + 1)
    bar.close()
    if spec.save_final_model:
        model = {"algorithm": algorithm.state_dict(), "args": spec.record_args(), "hparams": hparams}
        torch.save(model, job_dir / MODEL_FILE)
    mark_done(job_dir)
    ckpt.discard_checkpoint(job_dir)
    log.info(f"done: {job_dir}")


def _kept(saved_step: int) -> str:
    if saved_step == 0:
        return "no checkpoint was saved yet"
    return f"the last checkpoint (before step {saved_step}) is kept; running the job again resumes from it"


def _check_finite(stats: dict[str, float], step: int, saved_step: int) -> None:
    """Stop the job when a loss the update returned is NaN or infinite."""
    for key, value in stats.items():
        if key.endswith("loss") and not np.isfinite(value):
            raise TrainingDiverged(
                f"the training {key} became {value} at step {step}; {_kept(saved_step)}. "
                "A smaller hparams.lr, or a closer look at the data, usually helps"
            )


def _check_finite_weights(algorithm: torch.nn.Module, step: int, saved_step: int) -> None:
    """Stop the job when a weight is NaN or infinite (checked before each checkpoint is saved)."""
    tensors = [p.detach() for p in algorithm.parameters() if p.is_floating_point()]
    # the largest magnitude of each tensor: finite unless an element is not (a 2-norm overflows)
    if tensors and not torch.isfinite(torch.stack(torch._foreach_norm(tensors, ord=float("inf")))).all():
        raise TrainingDiverged(f"the weights became NaN or infinite at step {step}; {_kept(saved_step)}")


def _fidelity_warning(spec: JobSpec, precision: Precision, fidelity: float, step: int) -> str:
    computed = precision.describe()
    if precision.train is not None:
        change = (
            f"precision.train={spec.precision['train']} computes in {computed['train']}: set precision.train=fp32 "
            "(or leave it at auto)"
        )
    elif precision.tf32:
        change = f"tf32={spec.tf32} rounds matrix products to TF32: set tf32=false (or leave it at auto)"
    else:
        change = "the perturbation is below float32's resolution of the weights: increase hparams.rho"
    return (
        f"warning: perturbation_fidelity {fidelity:.3f} < {FIDELITY_WARNING} at step {step}: the forward pass "
        f"computes with little of the perturbation {spec.algorithm} intends (rho={spec.hparams.get('rho')}); "
        f"{change}"
    )
