"""Multi-task jobs (the SAMO/LibMTL lineage's): their settings (epochs, the learning-rate
schedule), validation, identity, record arguments, shared hyperparameters, sweep planning and
disk estimate. Their training loop is ``sage_bench.run.mtl``; their data sets are
``sage_bench.data.catalog.MULTITASK_TASKS``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig

from sage_bench import hparams as hp
from sage_bench.computation import dataset_options_that_count
from sage_bench.config.checks import at_least_one, group_options
from sage_bench.config.kind import TEST_ENV_MODES, JobKind
from sage_bench.errors import ConfigError
from sage_bench.kinds import KINDS
from sage_bench.models import MULTITASK_BACKBONES  # the backbones registered with task=MULTI_TASK
from sage_bench.records import MULTI_TASK

if TYPE_CHECKING:
    from sage_bench.config.spec import JobSpec

LR_GAMMA = 0.5  # StepLR's factor when lr_gamma is null (the lineage's)

# keys of multi-task jobs, at the value a job of another kind must leave them (config.yaml's)
MULTITASK_ONLY: dict[str, tuple[Any, str]] = {
    "epochs": (None, "domain-generalization jobs count steps: set steps=N"),
    "lr_step_epochs": (None, "domain-generalization jobs keep a constant learning rate"),
    "lr_gamma": (None, "domain-generalization jobs keep a constant learning rate"),
}

# Multi-task hyperparameters whose default changed, with the former default: a job whose value
# differs from it has that value in its identity (``MultiTaskSettings.identity``). SAGE-X now
# descends as X (it descended as SAMO-X); SAMO-X and SAGE-SAMO-X on Cityscapes now follow SAMO's
# Cityscapes trainer (they followed its NYU-v2 one).
MTL_FORMER_DEFAULTS: dict[str, Any] = {"descent": "samo", "zo_mix": "raw", "accumulate_previous": False}


def _data_version(dataset: str) -> dict[str, int]:
    """``{"version": N}`` for a generated data set (``MultiTaskDataset.VERSION``), else nothing."""
    from sage_bench.data import get_dataset_class

    version = get_dataset_class(dataset).VERSION
    return {} if version is None else {"version": version}


@dataclass(frozen=True)
class MultiTaskSettings:
    """A multi-task job's own settings: it trains ``epochs`` epochs, the learning rate multiplied
    by ``lr_gamma`` every ``lr_step_epochs`` epochs (``sage_bench.run.mtl``)."""

    TASK: ClassVar[str] = MULTI_TASK

    epochs: int
    lr_step_epochs: int
    lr_gamma: float

    def identity(self, spec: JobSpec, core: dict[str, Any]) -> dict[str, Any]:
        """No key of it existed before multi-task jobs, so all enter. Two more enter where the
        computation changed: a generated data set's ``VERSION``, and the hyperparameters whose
        default changed (``MTL_FORMER_DEFAULTS``) where the job's value is not the former default,
        as if given on the command line (so a job that gave the new default explicitly before
        keeps its folder)."""
        changed = {
            name: spec.hparams[name]
            for name, former in MTL_FORMER_DEFAULTS.items()
            if name in spec.hparams and spec.hparams[name] != former
        }
        return {
            **core,
            "task": self.TASK,
            "dataset": {
                "name": spec.dataset, **dataset_options_that_count(spec.dataset_options), **_data_version(spec.dataset)
            },
            "epochs": self.epochs,
            "lr_step_epochs": self.lr_step_epochs,
            "lr_gamma": self.lr_gamma,
            "hparams_overrides": {**changed, **spec.hparams_overrides},
        }

    def record_args(self, spec: JobSpec) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "lr_step_epochs": self.lr_step_epochs,
            "lr_gamma": self.lr_gamma,
            **({"data_version": v} if (v := _data_version(spec.dataset).get("version")) is not None else {}),
        }

    def describe(self) -> str:
        return ""


class MultiTask(JobKind):
    """Dense prediction of several tasks from one network (MTAN), trained for epochs."""

    kind = KINDS[MULTI_TASK]
    own_keys = MULTITASK_ONLY
    seed_default = "the trial seed"

    @property
    def backbones(self) -> tuple[str, ...]:
        return MULTITASK_BACKBONES

    def backbone(
        self, cfg: DictConfig, dataset: str, dataset_cls: type, others: Sequence[JobKind]
    ) -> tuple[str, dict[str, Any]]:
        from sage_bench.models.mtan import WIDTHS

        backbone = cfg.backbone.name if cfg.backbone is not None else dataset_cls.DEFAULT_BACKBONE
        if backbone not in MULTITASK_BACKBONES:
            raise ConfigError(
                f"backbone={backbone} builds a classifier for domain generalization; {dataset} is a multi-task data "
                f"set and takes backbone={' or '.join(MULTITASK_BACKBONES)}"
            )
        options = group_options(cfg, "backbone")
        unknown = sorted(set(options) - {"width"})
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join('backbone.' + k for k in unknown)} for backbone {backbone!r}; "
                "valid options: width"
            )
        width = options.get("width") or dataset_cls.MODEL_WIDTH
        if width not in WIDTHS:
            raise ConfigError(f"bad value for 'backbone.width': {width!r}; valid choices: {', '.join(WIDTHS)}")
        return backbone, {"width": width}

    def settings(self, cfg: DictConfig, dataset: str, dataset_cls: type) -> MultiTaskSettings:
        epochs = at_least_one("epochs", cfg.epochs if cfg.epochs is not None else dataset_cls.N_EPOCHS)
        step = at_least_one(
            "lr_step_epochs", cfg.lr_step_epochs if cfg.lr_step_epochs is not None else dataset_cls.LR_STEP_EPOCHS
        )
        gamma = float(cfg.lr_gamma) if cfg.lr_gamma is not None else LR_GAMMA
        if not (0.0 < gamma <= 1.0):
            raise ConfigError(f"bad value for 'lr_gamma': must be in (0, 1], got {gamma}")
        return MultiTaskSettings(epochs=epochs, lr_step_epochs=step, lr_gamma=gamma)

    def dataset_option_names(self, dataset_cls: type) -> list[str]:
        """After ``(self, root, augment, seed)``."""
        return list(inspect.signature(dataset_cls.__init__).parameters)[4:]

    def dataset_options(self, cfg: DictConfig, dataset_cls: type) -> dict[str, Any]:
        options = group_options(cfg, "dataset")
        valid = sorted(self.dataset_option_names(dataset_cls))
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
        return options

    def shared_hparams(self, dataset: str) -> dict[str, hp.HParam]:
        """A multi-task data set's protocol: its learning rate (Adam, no weight decay) and batch
        size (training and evaluation, as the lineage), and its training augmentation where it
        has one (NYU-v2, Cityscapes)."""
        from sage_bench.data import get_dataset_class

        cls = get_dataset_class(dataset)
        exponent = math.log10(cls.LR)
        space = {
            "lr": hp.HParam(cls.LR, hp.log_uniform(exponent - 1, exponent + 0.5), "Adam learning rate", range=hp.POSITIVE),
            "weight_decay": hp.HParam(0.0, hp.const(0.0), "weight decay", range=hp.NON_NEGATIVE),
            "batch_size": hp.HParam(
                cls.BATCH_SIZE, hp.const(cls.BATCH_SIZE), "images per training step and per evaluation batch",
                range=hp.AT_LEAST_ONE,
            ),  # fmt: skip
        }
        if cls.AUGMENTATION:
            space["data_augmentation"] = hp.HParam(
                True, hp.const(True), "the lineage's random scale-crop and flip of the training split"
            )
        return space

    def eval_batch_size(self, cfg: DictConfig, hparams: dict[str, Any]) -> int:
        return hparams["batch_size"]  # the lineage evaluates with the training batch size

    def default_seed(self, cfg: DictConfig, settings: MultiTaskSettings) -> int:
        # the lineage runs every method with --seed 0, 1, 2: a trial's rows start from the same
        # weights and see the same data order
        return cfg.trial_seed

    def sweep_variants(
        self, dataset: str, algorithm: str, point: list[str], test_envs: Any
    ) -> tuple[list[list[str]], list[dict[str, Any]]]:
        """Once per grid point and seeds (no test environments: ``--test-envs`` must be left at
        ``single``); a row trained as one network per task (``MultiTaskAlgorithm.per_task_hparam``:
        STL's ``task``) once per task of the data set, unless the point sets that hyperparameter."""
        from sage_bench.algorithms.registry import algorithms
        from sage_bench.data.catalog import MULTITASK_TASKS

        if not (isinstance(test_envs, str) and test_envs in TEST_ENV_MODES):
            raise ConfigError(f"{dataset} is a multi-task data set and has no test environments; leave --test-envs out")
        registered = algorithms().get(algorithm)
        name = getattr(registered.cls, "per_task_hparam", None) if registered is not None else None
        if name is None or any(o.lstrip("+~").split("=", 1)[0] == f"hparams.{name}" for o in point):
            return [[]], [{}]
        return [[f"hparams.{name}={task}"] for task, _ in MULTITASK_TASKS[dataset]], [{}]

    def last_step(self, spec: JobSpec) -> int | None:
        return None  # an epoch's steps depend on the data set's size

    def record_count(self, spec: JobSpec) -> int:
        """One record per epoch."""
        return spec.settings.epochs

    def record_values(self, spec: JobSpec) -> list[str]:
        """The metrics and losses of every task, ``delta_m`` and the learning rate."""
        from sage_bench.data import get_dataset_class
        from sage_bench.mtl.metrics import metric_names

        tasks = get_dataset_class(spec.dataset).TASKS
        return [f"test_{k}" for t in tasks for k in [*metric_names(t), f"{t.name}_loss"]] + ["delta_m", "lr"]

    def meta_network(self, spec: JobSpec) -> torch.nn.Module:
        from sage_bench.data import get_dataset_class
        from sage_bench.models.mtan import mtan

        with torch.device("meta"):
            return mtan(get_dataset_class(spec.dataset).TASKS, spec.backbone_options["width"])


KIND = MultiTask()

__all__ = [
    "KIND", "LR_GAMMA", "MTL_FORMER_DEFAULTS", "MULTITASK_BACKBONES", "MULTITASK_ONLY", "MultiTask",
    "MultiTaskSettings",
]  # fmt: skip
