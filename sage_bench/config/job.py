"""From command-line overrides to a validated job: Hydra composes (``sage_bench.config.schema``),
the shared checks (``sage_bench.config.checks``) and the job's kind (``sage_bench.config.kinds``)
validate, and one ``JobSpec`` is built.

Everything that can be wrong with a job is found here, before any work starts, and reported as
a ``ConfigError`` whose message names the bad key or value and lists the valid choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from sage_bench import hparams as hp
from sage_bench import precision as prec
from sage_bench.config import checks
from sage_bench.config.kinds import dataset_kind, other_kinds
from sage_bench.config.schema import compose_job_config, refuse_added_keys
from sage_bench.config.space import resolve_hparams
from sage_bench.config.spec import JobSpec
from sage_bench.data import get_dataset_class
from sage_bench.errors import ConfigError


def check_task(algorithm: str, dataset: str, task: str) -> None:
    """A ``ConfigError`` naming both when the algorithm solves the other kind of task than the
    data set poses, listing the algorithms that fit the data set."""
    from sage_bench.algorithms.registry import algorithms
    from sage_bench.data.catalog import ALL_DATASET_NAMES, dataset_task
    from sage_bench.kinds import KINDS

    registered = algorithms()
    if algorithm not in registered or registered[algorithm].task == task:
        return  # an unknown name is reported with the valid ones when the configuration composes
    own = registered[algorithm].task
    datasets = [name for name in ALL_DATASET_NAMES if dataset_task(name) == own]
    raise ConfigError(
        f"algorithm={algorithm} is a {KINDS[own].adjective} algorithm and dataset={dataset} a "
        f"{KINDS[task].adjective} data set; algorithms for {dataset}: {', '.join(algorithms(task))} "
        f"({algorithm} runs on {', '.join(datasets)})"
    )


def _resolve_all(cfg: DictConfig) -> None:
    """Every ${...} at once: a preset's per-data-set table may lack the data set."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as exc:
        message = f"cannot resolve the configuration: {str(exc).splitlines()[0]}"
        experiment = cfg.get("experiment")
        per_dataset = next((experiment.get(k) for k in ("steps", "batch_size") if isinstance(experiment, DictConfig)
                            and isinstance(experiment.get(k), DictConfig)), None)  # fmt: skip
        if per_dataset is not None:
            covered = ", ".join(per_dataset.keys())
            message += f"; experiment={experiment.get('name')} is set for the data sets {covered}"
        raise ConfigError(message) from exc


def job_from_config(cfg: DictConfig) -> JobSpec:
    """Validate a composed configuration into a ``JobSpec`` (raises ``ConfigError``)."""
    refuse_added_keys(cfg)
    _resolve_all(cfg)
    dataset = cfg.dataset.name
    kind = dataset_kind(dataset)
    algorithm = cfg.algorithm.name
    check_task(algorithm, dataset, kind.task)
    for other in other_kinds(kind):
        checks.refuse_keys(cfg, other.own_keys, dataset, kind.kind.adjective)
    dataset_cls = get_dataset_class(dataset)
    backbone, backbone_options = kind.backbone(cfg, dataset, dataset_cls, other_kinds(kind))
    settings = kind.settings(cfg, dataset, dataset_cls)
    checks.check_seeds(cfg, kind.seed_default)
    checks.check_output_dir(Path(cfg.output_dir))
    num_workers = checks.num_workers(cfg, dataset_cls.N_WORKERS)
    dataset_options = kind.dataset_options(cfg, dataset_cls)
    precision = prec.check_precision(OmegaConf.to_container(cfg.precision, resolve=True), cfg.tf32)
    perturbation, tolerance = checks.check_perturbation_config(cfg)
    try:
        overrides = OmegaConf.to_container(cfg.hparams, resolve=True)
    except InterpolationResolutionError as exc:
        raise ConfigError(f"cannot resolve the hyperparameters: {str(exc).splitlines()[0]}") from exc
    wandb = checks.wandb_options(cfg.wandb)
    try:
        hparams = resolve_hparams(algorithm, dataset, cfg.hparams_seed, cfg.trial_seed, overrides, backbone=backbone)
    except hp.HParamError as exc:
        raise ConfigError(str(exc)) from exc
    # the overrides as the job uses them (hparams.lr=1 and hparams.lr=1.0 are one job)
    overrides = {name: hparams[name] for name in overrides}
    optimizer_options = checks.group_options(cfg, "optimizer")
    checks.check_optimizer(cfg.optimizer.name, hparams, optimizer_options)
    eval_batch_size = kind.eval_batch_size(cfg, hparams)
    return JobSpec(
        dataset=dataset,
        dataset_options=dataset_options,
        backbone=backbone,
        backbone_options=backbone_options,
        algorithm=algorithm,
        optimizer=cfg.optimizer.name,
        optimizer_options=optimizer_options,
        trial_seed=cfg.trial_seed,
        hparams_seed=cfg.hparams_seed,
        seed=cfg.seed if cfg.seed is not None else kind.default_seed(cfg, settings),
        hparams=hparams,
        hparams_overrides=overrides,
        output_dir=Path(cfg.output_dir),
        data_dir=Path(cfg.data_dir),
        device=checks.resolve_device(cfg.device),
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        progress=cfg.progress,
        settings=settings,
        precision=precision,
        tf32=cfg.tf32,
        compile=cfg.compile,
        perturbation=perturbation,
        perturbation_tolerance=tolerance,
        save_final_model=cfg.save_final_model,
        wandb=wandb,
        plugins=tuple(cfg.plugins),
    )


def load_job(overrides: Sequence[str] = ()) -> JobSpec:
    """Compose and validate: command-line overrides to a ``JobSpec``."""
    return job_from_config(compose_job_config(overrides))


__all__ = ["check_task", "job_from_config", "load_job"]
