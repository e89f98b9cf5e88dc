"""The domain-generalization loop of a job: DomainBed's training loop and evaluation.

One infinite, resumable loader per training environment (a batch of each per step), the
algorithm's ``update`` on the list of minibatches, and every ``checkpoint_freq`` steps a record
with the accuracy of every environment's in- and out-split (``sage_bench.run.evaluation``) and a
checkpoint. The job shell (``sage_bench.run.train``) holds the lock, the log, the signals and the
``done`` marker.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from tqdm.auto import tqdm

from sage_bench.algorithms import Algorithm, build_algorithm
from sage_bench.algorithms.perturbation import PerturbedGradient
from sage_bench.config import JobSpec
from sage_bench.data import get_dataset_class
from sage_bench.data.loaders import infinite_loader, is_worker_death
from sage_bench.data.splits import split_environments
from sage_bench.models import backbone_preprocess, build_network
from sage_bench.optim import build_optimizer
from sage_bench.precision import FIDELITY_WARNING, Precision
from sage_bench.records import RESULTS_FILE, truncate_records
from sage_bench.run import checkpoint as ckpt
from sage_bench.run.accelerate import accelerate
from sage_bench.run.alignment import HeldOutGradientProbe
from sage_bench.run.evaluation import build_evaluator
from sage_bench.run.guards import check_finite, check_finite_weights, format_row, peak_memory_gb
from sage_bench.run.job import Job
from sage_bench.seeding import seed_hash


def train(job: Job) -> Algorithm:
    """Train the domain-generalization job ``job.spec`` to its last step; return the algorithm."""
    spec, job_dir, log, stop = job.spec, job.dir, job.log, job.stop
    resume = job.begin(spec.settings.steps)  # None: start at step 0
    start_step = resume.step if resume else 0
    device = torch.device(spec.device)
    hparams = spec.hparams

    preprocess = backbone_preprocess(spec.backbone, spec.backbone_options)  # input size, normalisation
    dataset = get_dataset_class(spec.dataset)(
        str(spec.data_dir), spec.settings.test_envs, hparams, preprocess=preprocess, **spec.dataset_options
    )
    splits = split_environments(dataset, spec.settings.holdout_fraction, spec.trial_seed)
    train_envs = [i for i in range(len(dataset)) if i not in spec.settings.test_envs]
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
    evaluate = build_evaluator(spec, dataset, splits, preprocess, device, log)  # eval_splits, the cache

    network = build_network(
        spec.backbone,
        dataset.input_shape,
        dataset.num_classes,
        hparams,
        class_names=dataset.class_names,
        **spec.backbone_options,
    ).to(device)
    optimizer = build_optimizer(spec.optimizer, network.parameters(), hparams, **spec.optimizer_options)
    algorithm = build_algorithm(
        spec.algorithm,
        network,
        optimizer,
        hparams,
        family=dataset.HPARAM_FAMILY,
        num_domains=len(train_envs),
        num_classes=dataset.num_classes,
        perturbation=spec.perturbation,
        perturbation_tolerance=spec.perturbation_tolerance,
    )
    algorithm.train()
    precision = spec.resolved_precision()
    accelerate(algorithm, device, precision, compile=spec.compile)

    probe = None  # the cosine with the held-out domains' gradient (Figure 5), when asked for
    if spec.settings.test_grad_cosine_freq:
        probe = HeldOutGradientProbe([splits[i].in_split for i in spec.settings.test_envs], batch_size, spec.seed, device)

    steps_per_epoch = min(len(s.in_split) / batch_size for s in splits)
    test_env = spec.settings.test_envs[0]
    val_keys = [f"env{i}_out_acc" for i in train_envs]
    header = ["step", "epoch", "loss", "train_val", f"env{test_env}_in", "step_time"]
    log.info(format_row(header))

    interval: dict[str, list[float]] = defaultdict(list)
    fidelity_warned = False
    saved_step = start_step  # the step the last checkpoint resumes at (0: none)
    if resume:
        ckpt.restore_checkpoint(resume, algorithm, optimizer)  # the RNGs too: nothing random may follow
        interval.update(resume.interval)
        if probe is not None and resume.probe is not None:
            probe.load_state_dict(resume.probe)
        kept = truncate_records(job_dir, start_step)
        log.info(f"resumed from the checkpoint before step {start_step} ({kept} records kept)")
    else:
        (job_dir / RESULTS_FILE).unlink(missing_ok=True)  # an unfinished earlier attempt starts over
    bar = tqdm(
        range(start_step, spec.settings.steps),
        initial=start_step,
        total=spec.settings.steps,
        desc=f"{spec.algorithm} {spec.dataset} test_envs={spec.settings.test_envs}",
        disable=not spec.progress,
        dynamic_ncols=True,
        leave=False,
    )

    def save(next_step: int) -> None:  # the state at the start of ``next_step``
        probe_state = probe.state_dict() if probe is not None else None
        ckpt.save_checkpoint(
            job_dir, spec.job_id, next_step, algorithm, optimizer, interval, computation=job.computation, probe=probe_state
        )

    for step in bar:
        start = time.time()
        try:
            batches = [next(it) for it in train_iterators]
        except RuntimeError as exc:
            if stop.received is None or not is_worker_death(exc):
                raise
            if step > start_step:  # workers killed after a stop signal: stop before this step
                save(step)
            raise ckpt.JobInterrupted(stop.received, step if step > start_step else None) from exc
        minibatches = [(x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)) for x, y in batches]
        if probe is not None and step % spec.settings.test_grad_cosine_freq == 0:
            start += probe.measure(step, algorithm, minibatches)  # not part of the step's time
        last = step == spec.settings.steps - 1
        algorithm.measure_fidelity = step % spec.settings.checkpoint_freq == 0 or last
        stats = algorithm.update(minibatches)
        check_finite(stats, step, saved_step)
        interval["step_time"].append(time.time() - start)
        for key, value in stats.items():
            interval[key].append(float(value))
        if "loss" in stats:
            bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)

        if step % spec.settings.checkpoint_freq == 0 or last:
            record: dict = {"step": step, "epoch": step / steps_per_epoch}
            for key, values in interval.items():
                record[key] = float(np.mean(values))
            record.update(evaluate(algorithm, stopping=lambda: stop.received is not None))
            record["eval_time"] = evaluate.seconds
            if probe is not None:
                record.update(probe.record())
            record["mem_gb"] = peak_memory_gb(device)
            if isinstance(algorithm, PerturbedGradient):
                record.update(algorithm.perturbation_choice())  # what computes its perturbed gradients now
            record["hparams"] = hparams
            record["args"] = spec.record_args()
            job.write_record(record, step)
            interval = defaultdict(list)
            fidelity = record.get("perturbation_fidelity")
            if fidelity is not None and fidelity < FIDELITY_WARNING and not fidelity_warned:
                log.warning(_fidelity_warning(spec, precision, fidelity, step))
                fidelity_warned = True
            log.info(
                format_row(
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
        if not last and (step % spec.settings.checkpoint_freq == 0 or stop.received is not None):
            check_finite_weights(algorithm, step, saved_step)  # never checkpoint broken weights
            save(step + 1)
            saved_step = step + 1
            if stop.received is not None:
                raise ckpt.JobInterrupted(stop.received, step + 1)
    bar.close()
    return algorithm


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
