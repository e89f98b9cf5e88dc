"""The multi-task loop of a job: the MTAN lineage's epochs (CAGrad, Nash-MTL, FAMO, FairGrad, SAMO
trainers), with a record and a checkpoint per epoch.

Per epoch ``e`` (0-based):

1. the training split in a fresh order, a permutation drawn from ``seed_hash(seed, "train_loader",
   e)`` (every row of a trial sees the same order), batches of ``hparams.batch_size``, the last
   one smaller (no ``drop_last``, as there); the split's augmentation (NYU-v2, Cityscapes: the
   lineage's scale-crop and flip) draws from ``(seed, e, index)``;
2. one ``algorithm.update(x, targets)`` per batch; then ``algorithm.end_epoch(e)`` and one step
   of the learning-rate schedule (StepLR: times ``lr_gamma`` every ``lr_step_epochs`` epochs, the
   lineage's ``scheduler.step()`` after each epoch);
3. evaluation of the val split (the lineage's "test" split) in eval mode, in batches of the
   training batch size as there: every metric (``sage_bench.mtl.MetricAccumulator``), each
   task's loss, and ``delta_m`` where the data set has a published base;
4. one record (``sage_bench.records``: ``epoch``, ``step``, ``lr``, the epoch's mean of each float
   ``update`` returned, ``test_<metric>``, ``delta_m``, ``step_time``, ``eval_time``, ``mem_gb``);
5. a checkpoint for the start of epoch ``e + 1`` (the scheduler's state in it).

A stop signal (SIGTERM, SIGUSR2, Ctrl-C) stops the job after the current step with a checkpoint
of that position in the epoch: the epoch's partial averages, the generators and the step, from
which the permutation and position follow. A resumed job writes the records an uninterrupted one
writes (``step_time``, ``eval_time`` and ``mem_gb`` measure the machine).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sage_bench.algorithms import MultiTaskAlgorithm, build_multitask_algorithm
from sage_bench.algorithms.perturbation import PerturbedGradient
from sage_bench.config import JobSpec
from sage_bench.data import get_dataset_class
from sage_bench.data.loaders import epoch_loader, eval_loader, is_worker_death
from sage_bench.data.multitask import MultiTaskDataset
from sage_bench.models.mtan import mtan
from sage_bench.mtl.delta_m import delta_m
from sage_bench.mtl.losses import MultiTaskLoss
from sage_bench.mtl.metrics import MetricAccumulator, metric_names
from sage_bench.optim import build_optimizer
from sage_bench.records import RESULTS_FILE, truncate_records
from sage_bench.run import checkpoint as ckpt
from sage_bench.run.accelerate import accelerate
from sage_bench.run.guards import check_finite, check_finite_weights, format_row, peak_memory_gb
from sage_bench.run.job import Job
from sage_bench.seeding import seed_hash

EVAL_SEED = 0  # seeds the evaluation loader's workers (no draw from the global generator)


def build_dataset(spec: JobSpec) -> MultiTaskDataset:
    """The job's data set: its folder, the training augmentation where the data set has one
    (``hparams.data_augmentation``), the job's seed for its draws, and its ``dataset.*`` options."""
    cls = get_dataset_class(spec.dataset)
    augment = bool(spec.hparams.get("data_augmentation", False))
    return cls(str(spec.data_dir), augment=augment, seed=spec.seed, **spec.dataset_options)


def evaluate(
    algorithm: MultiTaskAlgorithm,
    data: MultiTaskDataset,
    spec: JobSpec,
    device: torch.device,
) -> dict[str, float]:
    """Every metric and task loss of the val split (``MetricAccumulator.compute()``), the network
    in eval mode, in batches of the training batch size."""
    loss_fn = MultiTaskLoss(data.tasks)
    metrics = MetricAccumulator(data.tasks)
    pin = device.type == "cuda"
    loader = eval_loader(
        data.val, spec.hparams["batch_size"], spec.num_workers, pin, generator=torch.Generator().manual_seed(EVAL_SEED)
    )
    dtype = algorithm.eval_autocast_dtype
    cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    algorithm.eval()
    try:
        with torch.no_grad():
            for x, targets in loader:
                x = x.to(device, non_blocking=pin)
                targets = {k: v.to(device, non_blocking=pin) for k, v in targets.items()}
                with cast:
                    outputs = algorithm.predict(x)
                outputs = {k: v.float() for k, v in outputs.items()}
                losses = loss_fn(outputs, targets)
                metrics.update(outputs, targets, {k: v.item() for k, v in losses.items()})
    finally:
        algorithm.train()
    return metrics.compute()


def _headline(data: MultiTaskDataset) -> list[str]:
    """The first metric of each task, for the log's table."""
    return [metric_names(task)[0] for task in data.tasks]


def train(job: Job) -> MultiTaskAlgorithm:
    """Train the multi-task job ``job.spec`` for its epochs; return the algorithm."""
    spec, log, stop = job.spec, job.log, job.stop
    hparams = spec.hparams
    device = torch.device(spec.device)
    pin = device.type == "cuda"

    data = build_dataset(spec)
    batch_size = hparams["batch_size"]
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    total_steps = spec.settings.epochs * steps_per_epoch
    resume = job.begin(total_steps)  # None: start at step 0; seeds the global generators
    start_step = resume.step if resume else 0

    network = mtan(data.tasks, spec.backbone_options["width"], in_channels=data.input_shape[0]).to(device)
    optimizer = build_optimizer(spec.optimizer, network.parameters(), hparams, **spec.optimizer_options)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.settings.lr_step_epochs, gamma=spec.settings.lr_gamma)
    algorithm = build_multitask_algorithm(
        spec.algorithm, network, optimizer, MultiTaskLoss(data.tasks), hparams, data.HPARAM_FAMILY, dataset=spec.dataset,
        perturbation=spec.perturbation, perturbation_tolerance=spec.perturbation_tolerance,
    )  # fmt: skip
    algorithm.train()
    accelerate(algorithm, device, spec.resolved_precision(), compile=spec.compile)

    interval: dict[str, list[float]] = defaultdict(list)
    saved_step = start_step  # the step the last checkpoint resumes at (0: none)
    if resume:
        ckpt.restore_checkpoint(resume, algorithm, optimizer, scheduler)  # the RNGs too: nothing random may follow
        interval.update(resume.interval)
        kept = truncate_records(job.dir, start_step)
        epoch, batch = divmod(start_step, steps_per_epoch)
        log.info(f"resumed from the checkpoint before step {start_step} (epoch {epoch}, batch {batch}; {kept} records kept)")
    else:
        (job.dir / RESULTS_FILE).unlink(missing_ok=True)  # an unfinished earlier attempt starts over

    def save(next_step: int) -> None:  # the state at the start of ``next_step``
        ckpt.save_checkpoint(
            job.dir, spec.job_id, next_step, algorithm, optimizer, interval,
            computation=job.computation, scheduler=scheduler.state_dict(),
        )  # fmt: skip

    headline = _headline(data)
    log.info(format_row(["epoch", "loss", *[f"test_{k}" for k in headline], "delta_m", "step_time"]))
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=f"{spec.algorithm} {spec.dataset}",
        disable=not spec.progress,
        dynamic_ncols=True,
        leave=False,
    )
    start_epoch, start_batch = divmod(start_step, steps_per_epoch)
    for epoch in range(start_epoch, spec.settings.epochs):
        first = start_batch if epoch == start_epoch else 0
        data.train.set_epoch(epoch)
        loader = iter(
            epoch_loader(data.train, batch_size, seed_hash(spec.seed, "train_loader", epoch), first, spec.num_workers, pin)
        )
        lr = optimizer.param_groups[0]["lr"]
        epoch_end = (epoch + 1) * steps_per_epoch
        for step in range(epoch * steps_per_epoch + first, epoch_end):
            start = time.time()
            try:
                x, targets = next(loader)
            except RuntimeError as exc:
                if stop.received is None or not is_worker_death(exc):
                    raise
                if step > start_step:  # workers killed after a stop signal: stop before this step
                    check_finite_weights(algorithm, step, saved_step)
                    save(step)
                raise ckpt.JobInterrupted(stop.received, step if step > start_step else None) from exc
            x = x.to(device, non_blocking=pin)
            targets = {k: v.to(device, non_blocking=pin) for k, v in targets.items()}
            algorithm.measure_fidelity = step == epoch_end - 1  # perturbation=auto measures on a record's step
            stats = algorithm.update(x, targets)
            check_finite(stats, step, saved_step)
            interval["step_time"].append(time.time() - start)
            for key, value in stats.items():
                interval[key].append(float(value))
            bar.update()
            if "loss" in stats:
                bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
            if stop.received is not None and step + 1 < epoch_end:  # mid-epoch: save this position
                check_finite_weights(algorithm, step, saved_step)
                save(step + 1)
                raise ckpt.JobInterrupted(stop.received, step + 1)

        algorithm.end_epoch(epoch)
        scheduler.step()
        record = _epoch_record(epoch, epoch_end - 1, lr, interval)
        started = time.time()
        metrics = evaluate(algorithm, data, spec, device)
        record.update({f"test_{key}": value for key, value in metrics.items()})
        if data.DELTA_M is not None:
            record["delta_m"] = delta_m(metrics, data.DELTA_M)
        record["eval_time"] = time.time() - started
        record["mem_gb"] = peak_memory_gb(device)
        if isinstance(algorithm, PerturbedGradient):
            record.update(algorithm.perturbation_choice())
        record["hparams"] = hparams
        record["args"] = spec.record_args()
        job.write_record(record, epoch_end - 1)
        interval = defaultdict(list)
        log.info(
            format_row(
                [epoch, record.get("loss", float("nan")), *[metrics[k] for k in headline],
                 record.get("delta_m", float("nan")), record["step_time"]]
            )  # fmt: skip
        )
        if epoch < spec.settings.epochs - 1:
            check_finite_weights(algorithm, epoch_end - 1, saved_step)  # never checkpoint broken weights
            save(epoch_end)
            saved_step = epoch_end
            if stop.received is not None:
                raise ckpt.JobInterrupted(stop.received, epoch_end)
    bar.close()
    return algorithm


def _epoch_record(epoch: int, last_step: int, lr: float, interval: dict[str, list[float]]) -> dict[str, Any]:
    """The training part of an epoch's record: where it is, its learning rate, and the mean of
    every float the updates returned (``step_time`` included)."""
    record: dict[str, Any] = {"epoch": epoch, "step": last_step, "lr": lr}
    for key, values in interval.items():
        record[key] = float(np.mean(values))
    return record
