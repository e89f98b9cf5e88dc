"""The multi-task half of the configuration (``sage_bench.config`` calls it): which keys belong
to which kind of job, the refusal of an algorithm of the other kind, and the validation of a
multi-task job (its data set one of ``sage_bench.data.catalog.MULTITASK_TASKS``) into a ``JobSpec``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sage_bench import hparams as hp
from sage_bench import precision as prec
from sage_bench.config import (
    JobSpec,
    _check_optimizer,
    _check_output_dir,
    _group_options,
    _resolve_device,
    _wandb_options,
    check_perturbation_config,
)
from sage_bench.data import get_dataset_class
from sage_bench.data.catalog import ALL_DATASET_NAMES, dataset_task
from sage_bench.errors import ConfigError
from sage_bench.models import MULTITASK_BACKBONES  # the backbones registered with task=MULTI_TASK
from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK

LR_GAMMA = 0.5  # StepLR's factor when lr_gamma is null (the lineage's)

# keys of one kind of job, at the value a job of the other kind must leave them (config.yaml's)
DG_ONLY: dict[str, tuple[Any, str]] = {
    "steps": (None, "multi-task jobs train for epochs: set epochs=N"),
    "checkpoint_freq": (None, "multi-task jobs record and checkpoint every epoch"),
    "test_envs": ([0], "multi-task data sets have no environments"),
    "holdout_fraction": (0.2, "multi-task data sets have their own train and val splits"),
    "eval_splits": ("all", "multi-task jobs evaluate the val split every epoch"),
    "eval_batch_size": (None, "multi-task jobs evaluate with the training batch size, as the lineage (its depth "
                        "and normal errors are means over batches, so the batch size changes them)"),
    "test_grad_cosine_freq": (0, "multi-task data sets have no held-out domain"),
}  # fmt: skip
MULTITASK_ONLY: dict[str, tuple[Any, str]] = {
    "epochs": (None, "domain-generalization jobs count steps: set steps=N"),
    "lr_step_epochs": (None, "domain-generalization jobs keep a constant learning rate"),
    "lr_gamma": (None, "domain-generalization jobs keep a constant learning rate"),
}


def refuse_other_task_keys(cfg: DictConfig, dataset: str, keys: dict[str, tuple[Any, str]]) -> None:
    """A ``ConfigError`` for a key that belongs to the other kind of job, set away from its default."""
    for key, (default, reason) in keys.items():
        value = cfg[key]
        value = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        if value != default:
            kind = "multi-task" if dataset_task(dataset) == MULTI_TASK else "domain-generalization"
            raise ConfigError(f"{key}={value} does not apply to {dataset}, a {kind} data set: {reason}")


def check_task(algorithm: str, dataset: str, task: str) -> None:
    """A ``ConfigError`` naming both when the algorithm solves the other kind of task than the
    data set poses, listing the algorithms that fit the data set."""
    from sage_bench.algorithms.registry import algorithms

    registered = algorithms()
    if algorithm not in registered or registered[algorithm].task == task:
        return  # an unknown name is reported with the valid ones when the configuration composes
    kinds = {DOMAIN_GENERALIZATION: "domain-generalization", MULTI_TASK: "multi-task"}
    own = registered[algorithm].task
    datasets = [name for name in ALL_DATASET_NAMES if dataset_task(name) == own]
    raise ConfigError(
        f"algorithm={algorithm} is a {kinds[own]} algorithm and dataset={dataset} a {kinds[task]} data set; "
        f"algorithms for {dataset}: {', '.join(algorithms(task))} "
        f"({algorithm} runs on {', '.join(datasets)})"
    )


def dataset_constructor_options(dataset_cls: type, options: dict[str, Any]) -> None:
    """A multi-task data set's options are its constructor's keywords after (root, augment, seed)."""
    valid = sorted(list(inspect.signature(dataset_cls.__init__).parameters)[4:])
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join('dataset.' + k for k in unknown)} for {dataset_cls.__name__}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    try:
        dataset_cls.check_options(**options)
    except ValueError as exc:
        raise ConfigError(f"bad dataset option for {dataset_cls.__name__}: dataset.{exc}") from exc


def multitask_job(cfg: DictConfig) -> JobSpec:
    """Validate the configuration of a multi-task job (``dataset`` a multi-task data set)."""
    from sage_bench.models.mtan import WIDTHS

    dataset = cfg.dataset.name
    dataset_cls = get_dataset_class(dataset)
    refuse_other_task_keys(cfg, dataset, DG_ONLY)
    backbone = cfg.backbone.name if cfg.backbone is not None else dataset_cls.DEFAULT_BACKBONE
    if backbone not in MULTITASK_BACKBONES:
        raise ConfigError(
            f"backbone={backbone} builds a classifier for domain generalization; {dataset} is a multi-task data "
            f"set and takes backbone={' or '.join(MULTITASK_BACKBONES)}"
        )
    backbone_options = _group_options(cfg, "backbone")
    unknown = sorted(set(backbone_options) - {"width"})
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join('backbone.' + k for k in unknown)} for backbone {backbone!r}; "
            "valid options: width"
        )
    width = backbone_options.get("width") or dataset_cls.MODEL_WIDTH
    if width not in WIDTHS:
        raise ConfigError(f"bad value for 'backbone.width': {width!r}; valid choices: {', '.join(WIDTHS)}")
    backbone_options = {"width": width}
    algorithm = cfg.algorithm.name
    for key in ("trial_seed", "hparams_seed"):
        if cfg[key] < 0:
            raise ConfigError(f"bad value for {key!r}: must be >= 0, got {cfg[key]}")
    if cfg.seed is not None and not 0 <= cfg.seed < 2**64:
        raise ConfigError(f"bad value for 'seed': {cfg.seed} must be in [0, 2**64) (null: the trial seed)")
    _check_output_dir(Path(cfg.output_dir))
    epochs = cfg.epochs if cfg.epochs is not None else dataset_cls.N_EPOCHS
    step = cfg.lr_step_epochs if cfg.lr_step_epochs is not None else dataset_cls.LR_STEP_EPOCHS
    gamma = float(cfg.lr_gamma) if cfg.lr_gamma is not None else LR_GAMMA
    for key, value in (("epochs", epochs), ("lr_step_epochs", step)):
        if value < 1:
            raise ConfigError(f"bad value for {key!r}: must be >= 1, got {value}")
    if not (0.0 < gamma <= 1.0):
        raise ConfigError(f"bad value for 'lr_gamma': must be in (0, 1], got {gamma}")
    num_workers = cfg.num_workers if cfg.num_workers is not None else dataset_cls.N_WORKERS
    if num_workers < 0:
        raise ConfigError(f"bad value for 'num_workers': must be >= 0, got {num_workers}")
    dataset_options = _group_options(cfg, "dataset")
    dataset_constructor_options(dataset_cls, dataset_options)
    precision = prec.check_precision(OmegaConf.to_container(cfg.precision, resolve=True), cfg.tf32)
    perturbation, tolerance = check_perturbation_config(cfg)
    overrides = OmegaConf.to_container(cfg.hparams, resolve=True)
    wandb = _wandb_options(cfg.wandb)
    try:
        hparams = hp.resolve_hparams(algorithm, dataset, cfg.hparams_seed, cfg.trial_seed, overrides, backbone=backbone)
    except hp.HParamError as exc:
        raise ConfigError(str(exc)) from exc
    overrides = {name: hparams[name] for name in overrides}
    optimizer_options = _group_options(cfg, "optimizer")
    _check_optimizer(cfg.optimizer.name, hparams, optimizer_options)
    return JobSpec(
        dataset=dataset,
        dataset_options=dataset_options,
        backbone=backbone,
        backbone_options=backbone_options,
        algorithm=algorithm,
        optimizer=cfg.optimizer.name,
        optimizer_options=optimizer_options,
        test_envs=[],
        trial_seed=cfg.trial_seed,
        hparams_seed=cfg.hparams_seed,
        # the lineage runs every method with --seed 0, 1, 2: a trial's rows start from the same
        # weights and see the same data order
        seed=cfg.seed if cfg.seed is not None else cfg.trial_seed,
        steps=None,
        checkpoint_freq=None,
        holdout_fraction=None,
        hparams=hparams,
        hparams_overrides=overrides,
        output_dir=Path(cfg.output_dir),
        data_dir=Path(cfg.data_dir),
        device=_resolve_device(cfg.device),
        num_workers=num_workers,
        eval_batch_size=hparams["batch_size"],
        progress=cfg.progress,
        precision=precision,
        tf32=cfg.tf32,
        compile=cfg.compile,
        perturbation=perturbation,
        perturbation_tolerance=tolerance,
        save_final_model=cfg.save_final_model,
        wandb=wandb,
        plugins=tuple(cfg.plugins),
        task=MULTI_TASK,
        epochs=epochs,
        lr_step_epochs=step,
        lr_gamma=gamma,
    )
