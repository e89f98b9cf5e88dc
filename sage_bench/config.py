"""From command-line overrides to a validated job: Hydra composes, ``JobSpec`` checks.

Everything that can be wrong with a job is found here, before any work starts, and reported as
a ``ConfigError`` whose message names the bad key or value and lists the valid choices.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from sage_bench import hparams as hp
from sage_bench import precision as prec
from sage_bench.computation import (
    backbone_options_that_count,
    dataset_options_that_count,
    perturbation_that_counts,
)
from sage_bench.data import get_dataset_class
from sage_bench.data.catalog import ALL_DATASET_NAMES, dataset_task
from sage_bench.errors import ConfigError
from sage_bench.models import BACKBONES, check_backbone_options
from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK, job_hash
from sage_bench.seeding import seed_hash

CONFIG_MODULE = "sage_bench.configs"
EVAL_SPLITS = ("all", "selection")
EVAL_CACHE_MODES = ("auto", "off", "require")
EVAL_BATCH_SIZE = 128  # domain generalization's evaluation batch when eval_batch_size is null


# Multi-task hyperparameters whose default changed, with the former default: a job whose value
# differs from it has that value in its identity (``JobSpec._multitask_identity``). SAGE-X now
# descends as X (it descended as SAMO-X); SAMO-X and SAGE-SAMO-X on Cityscapes now follow SAMO's
# Cityscapes trainer (they followed its NYU-v2 one).
MTL_FORMER_DEFAULTS: dict[str, Any] = {"descent": "samo", "zo_mix": "raw", "accumulate_previous": False}


@dataclass
class WandbSchema:
    """``wandb.*`` keys: see ``sage_bench.run.tracking``."""

    mode: Any = "off"  # Any: YAML 1.1 reads an unquoted ``off`` as ``False``
    project: str = "sage-bench"
    entity: str | None = None
    group: str | None = None


@dataclass
class PrecisionSchema:
    """``precision.*`` keys: see ``sage_bench.precision``."""

    train: str = "auto"
    eval: str = "auto"
    polar: str = "auto"


@dataclass
class TrainSchema:
    """Types of the top-level keys of ``configs/config.yaml`` (values live in the YAML)."""

    dataset: Any = MISSING
    backbone: Any = None
    algorithm: Any = MISSING
    optimizer: Any = MISSING
    test_envs: list[int] = MISSING
    trial_seed: int = MISSING
    hparams_seed: int = MISSING
    seed: int | None = None
    steps: int | None = None
    checkpoint_freq: int | None = None
    epochs: int | None = None
    lr_step_epochs: int | None = None
    lr_gamma: float | None = None
    holdout_fraction: float = MISSING
    output_dir: str = MISSING
    data_dir: str = MISSING
    device: str = MISSING
    num_workers: int | None = None
    eval_batch_size: int | None = None
    eval_splits: str = MISSING
    progress: bool = MISSING
    precision: PrecisionSchema = field(default_factory=PrecisionSchema)
    tf32: Any = MISSING  # auto, true or false
    compile: bool = MISSING
    perturbation: Any = MISSING  # {method, tolerance}: the config group perturbation/
    test_grad_cosine_freq: int = MISSING
    experiment: Any = None
    save_final_model: bool = MISSING
    plugins: list[str] = field(default_factory=list)
    wandb: WandbSchema = field(default_factory=WandbSchema)
    hparams: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(name="train_schema", node=TrainSchema)

# Keys of the job that define its results; they name its output folder.
_IDENTITY_KEYS = (
    "dataset", "algorithm", "backbone", "optimizer", "test_envs", "trial_seed", "hparams_seed",
    "seed", "steps", "checkpoint_freq", "holdout_fraction", "hparams_overrides", "eval_splits",
)  # fmt: skip
# Keys added after jobs existed, with the value that reproduces the behaviour from before them:
# at that value a key is left out of the identity, so existing jobs keep their folders; any other
# value changes what the job computes or records, and enters it.
_LEGACY_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("dataset", "eval_augment"): True,
    ("eval_splits",): "all",
}


def _drop(values: dict[str, Any], path: tuple[str, ...], legacy: Any) -> None:
    *parents, key = path
    for parent in parents:
        values = values.get(parent)
        if not isinstance(values, dict):
            return
    if key in values and values[key] == legacy:
        del values[key]


def _as_addition(override: str) -> str:
    """``hparams.lr=0.1`` -> ``++hparams.lr=0.1``: hyperparameter names are checked by
    ``sage_bench.hparams`` (which knows them per algorithm), not by the YAML schema."""
    if re.match(r"^hparams\.[^=]+=", override):
        return "++" + override
    if re.match(r"^\+hparams\.[^=]+=", override):
        return "+" + override
    return override


def _explain_composition_error(exc: Exception) -> str:
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        options = ", ".join(sorted(exc.options or []))
        if group == "algorithm":
            options = _algorithm_choices()
        if group:
            return f"unknown {group} {name!r}; valid choices: {options}"
        return f"missing config file {exc.missing_cfg_file!r}"
    cause = exc.__cause__
    if cause is not None:
        text = str(cause)
        key = re.search(r"full_key: (\S+)", text)
        first = text.splitlines()[0]
        missing_key = re.match(r"Key '([^']+)' (?:is )?not in", first)
        if missing_key:
            where = key.group(1) if key else missing_key.group(1)
            if "." not in where:
                valid = ", ".join(sorted(f.name for f in fields(TrainSchema)))
                return f"unknown config key {where!r}; valid keys: {valid}"
            return f"unknown config key {where!r}; `sage-bench train --show-config` prints the valid keys"
        if key:
            return f"bad value for {key.group(1)!r}: {first}"
        return first
    return str(exc).splitlines()[0]


def _store_algorithm_configs() -> None:
    """Make every registered algorithm a choice of the ``algorithm`` config group: the
    registry (``sage_bench.algorithms.registry``) is the one place an algorithm is named."""
    from sage_bench.algorithms.registry import algorithms

    store = ConfigStore.instance()
    registered = algorithms()
    stored = store.repo.get("algorithm", {})
    for stale in [f for f in stored if f.removesuffix(".yaml") not in registered]:
        del stored[stale]  # unregistered since the last composition
    for name in registered:
        store.store(group="algorithm", name=name, node={"name": name})


def _algorithm_choices() -> str:
    """The registered algorithm names, grouped by the kind of task they solve."""
    from sage_bench.algorithms.registry import algorithms

    kinds = {DOMAIN_GENERALIZATION: "domain generalization", MULTI_TASK: "multi-task"}
    return "; ".join(f"{', '.join(sorted(algorithms(task)))} ({kind})" for task, kind in kinds.items())


def plugin_modules(overrides: Sequence[str]) -> list[str]:
    """The modules a ``plugins=[module, ...]`` override names (parsed as Hydra parses it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    wanted = [o for o in overrides if re.match(r"^\+{0,2}plugins=", o)]
    if not wanted:
        return []
    try:
        parsed = OverridesParser.create().parse_overrides(wanted)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse override: {str(exc).splitlines()[0]}") from exc
    modules: list[str] = []
    for override in parsed:
        value = override.value()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(
                f"bad value for 'plugins': {override.input_line!r}; give a list of module names, "
                "e.g. plugins=[my_package.algorithms]"
            )
        modules.extend(value)
    return modules


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The Hydra configuration of a job with ``overrides`` applied (no validation yet).

    The modules of a ``plugins=[...]`` override are imported first, so that the algorithms they
    register are choices of ``algorithm=``.
    """
    from sage_bench.algorithms.registry import load_plugins

    load_plugins(plugin_modules(overrides))
    _store_algorithm_configs()
    for override in overrides:
        if override.lstrip("+~").split("=", 1)[0] == "autocast":
            raise ConfigError(
                "the key 'autocast' is replaced by precision.train and precision.eval (auto, fp32, bf16), "
                "e.g. precision.train=bf16; see sage_bench/precision.py"
            )
    overrides = [_as_addition(o) for o in overrides]
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            return compose(config_name="config", overrides=overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse override: {str(exc).splitlines()[0]}") from exc
    except ConfigCompositionException as exc:
        raise ConfigError(_explain_composition_error(exc)) from exc


def _group_options(cfg: DictConfig, group: str) -> dict[str, Any]:
    node = cfg.get(group)
    if node is None:
        return {}
    options = OmegaConf.to_container(node, resolve=True)
    options.pop("name", None)
    return options


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return name
    raise ConfigError(f"bad value for 'device': {name!r}; valid choices: auto, cpu, cuda, cuda:N")


@dataclass(frozen=True)
class JobSpec:
    """One validated training job: what to train, with which seeds and hyperparameters, where.

    ``task`` is the kind of job its data set makes. A domain-generalization job has
    ``test_envs``, ``steps``, ``checkpoint_freq`` and ``holdout_fraction``; a multi-task job has
    none of them (empty and ``None``) and trains ``epochs`` epochs with the learning rate
    multiplied by ``lr_gamma`` every ``lr_step_epochs`` epochs (``sage_bench.run.mtl``).
    """

    dataset: str
    dataset_options: dict[str, Any]
    backbone: str
    backbone_options: dict[str, Any]
    algorithm: str
    optimizer: str
    optimizer_options: dict[str, Any]
    test_envs: list[int]
    trial_seed: int
    hparams_seed: int
    seed: int
    steps: int
    checkpoint_freq: int
    holdout_fraction: float
    hparams: dict[str, Any]
    hparams_overrides: dict[str, Any]
    output_dir: Path
    data_dir: Path
    device: str
    num_workers: int
    eval_batch_size: int
    progress: bool
    eval_splits: str = "all"  # all: every split at every checkpoint; selection: what model selection reads
    # what the job computes in (``sage_bench.precision``): ``precision.train``, ``.eval``, ``.polar``
    precision: dict[str, str] = field(default_factory=lambda: dict(prec.DEFAULT_PRECISION))
    tf32: bool | str = "auto"  # TF32 matrix products on CUDA: auto, True or False
    compile: bool = False  # torch.compile the network
    # how gradients at perturbed weights are computed (``sage_bench.algorithms.perturbation``)
    perturbation: str = "auto"
    perturbation_tolerance: float = 0.01
    save_final_model: bool = False
    wandb: dict[str, Any] = field(default_factory=lambda: {"mode": "off"})
    test_grad_cosine_freq: int = 0  # N > 0: log the cosine with the held-out domains' gradient every N steps
    plugins: tuple[str, ...] = ()  # modules imported for their algorithms; not part of the identity
    task: str = DOMAIN_GENERALIZATION
    epochs: int | None = None  # multi-task jobs: training epochs
    lr_step_epochs: int | None = None  # multi-task jobs: StepLR's step, in epochs
    lr_gamma: float | None = None  # multi-task jobs: StepLR's factor

    @property
    def multi_task(self) -> bool:
        return self.task == MULTI_TASK

    def identity(self) -> dict[str, Any]:
        """The arguments that define the job's results; their hash names its folder."""
        if self.multi_task:
            return self._multitask_identity()
        values = {
            # options that change no number (``sage_bench.computation``) never enter
            "dataset": {"name": self.dataset, **dataset_options_that_count(self.dataset_options)},
            "algorithm": self.algorithm,
            # ``pretrained`` is where the file of the named ``weights`` lies, not what they are
            "backbone": {"name": self.backbone, **backbone_options_that_count(self.backbone_options)},
            "optimizer": {"name": self.optimizer, **self.optimizer_options},
            "test_envs": self.test_envs,
            "trial_seed": self.trial_seed,
            "hparams_seed": self.hparams_seed,
            "seed": self.seed,
            "steps": self.steps,
            "checkpoint_freq": self.checkpoint_freq,
            "holdout_fraction": self.holdout_fraction,
            "hparams_overrides": self.hparams_overrides,
            "eval_splits": self.eval_splits,
        }
        assert tuple(values) == _IDENTITY_KEYS
        for path, legacy in _LEGACY_DEFAULTS.items():
            _drop(values, path, legacy)
        # precision, tf32 and compile change the numbers, but enter only when not at their
        # defaults: jobs at the defaults keep the folders they had before these keys existed
        values.update(prec.identity_settings(self.precision, self.tf32, self.compile, self.perturbs_weights()))
        values.update(self._perturbation_identity())
        return values

    def _perturbation_identity(self) -> dict[str, Any]:
        from sage_bench.algorithms.registry import get_algorithm

        perturbed = getattr(get_algorithm(self.algorithm).cls, "takes_perturbed_gradient", False)
        return perturbation_that_counts(
            self.perturbation, self.perturbation_tolerance, self.precision, perturbed, self.multi_task
        )

    def _multitask_identity(self) -> dict[str, Any]:
        """A multi-task job's identity: no key of it existed before multi-task jobs, so all enter.
        Two more enter where the computation changed: a generated data set's ``VERSION``, and
        the hyperparameters whose default changed (``MTL_FORMER_DEFAULTS``) where the job's value
        is not the former default, as if given on the command line (so a job that gave the new
        default explicitly before keeps its folder)."""
        values = {
            "task": self.task,
            "dataset": {"name": self.dataset, **dataset_options_that_count(self.dataset_options), **self._data_version()},
            "algorithm": self.algorithm,
            "backbone": {"name": self.backbone, **self.backbone_options},
            "optimizer": {"name": self.optimizer, **self.optimizer_options},
            "trial_seed": self.trial_seed,
            "hparams_seed": self.hparams_seed,
            "seed": self.seed,
            "epochs": self.epochs,
            "lr_step_epochs": self.lr_step_epochs,
            "lr_gamma": self.lr_gamma,
            "hparams_overrides": {**self._changed_defaults(), **self.hparams_overrides},
        }
        values.update(
            prec.identity_settings(self.precision, self.tf32, self.compile, self.perturbs_weights(), multi_task=True)
        )
        values.update(self._perturbation_identity())
        return values

    def _data_version(self) -> dict[str, int]:
        """``{"version": N}`` for a generated data set (``MultiTaskDataset.VERSION``), else nothing."""
        version = get_dataset_class(self.dataset).VERSION
        return {} if version is None else {"version": version}

    def _changed_defaults(self) -> dict[str, Any]:
        """The job's hyperparameters whose default changed and that are not at the former one."""
        return {
            name: self.hparams[name]
            for name, former in MTL_FORMER_DEFAULTS.items()
            if name in self.hparams and self.hparams[name] != former
        }

    def perturbs_weights(self) -> bool:
        """Whether the job's algorithm takes gradients at perturbed weights (the SAM family, SAGE)."""
        from sage_bench.algorithms.registry import get_algorithm

        return get_algorithm(self.algorithm).cls.perturbs_weights

    def resolved_precision(self) -> prec.Precision:
        """What this job computes in on its device (``sage_bench.precision``)."""
        return self.resolved_precision_on(torch.device(self.device).type)

    def resolved_precision_on(self, device_type: str) -> prec.Precision:
        """What this job would compute in on a device of ``device_type`` (``"cuda"``, ``"cpu"``)."""
        return prec.resolve_precision(
            self.precision, self.tf32, device_type, self.perturbs_weights(), multi_task=self.multi_task,
            perturbation=self.perturbation if self._perturbation_identity() else "difference",
        )  # fmt: skip

    @property
    def job_id(self) -> str:
        return job_hash(self.identity())

    @property
    def job_dir(self) -> Path:
        """``output_dir/<hash of the job's arguments>``."""
        return self.output_dir / self.job_id

    def record_args(self) -> dict[str, Any]:
        """``args`` of every record: DomainBed's argument names, plus sage-bench's own (a
        multi-task job's: see ``_multitask_args``)."""
        if self.multi_task:
            return self._multitask_args()
        return {
            "dataset": self.dataset,
            "algorithm": self.algorithm,
            "backbone": self.backbone,
            "optimizer": self.optimizer,
            "test_envs": list(self.test_envs),
            "trial_seed": self.trial_seed,
            "hparams_seed": self.hparams_seed,
            "seed": self.seed,
            "steps": self.steps,
            "checkpoint_freq": self.checkpoint_freq,
            "holdout_fraction": self.holdout_fraction,
            "hparams": self.hparams_overrides or None,
            "data_dir": str(self.data_dir),
            "output_dir": str(self.job_dir),
            "task": "domain_generalization",
            "device": self.device,
            "job_id": self.job_id,
            "dataset_options": self.dataset_options,
            "backbone_options": self.backbone_options,
            "optimizer_options": self.optimizer_options,
            "eval_splits": self.eval_splits,
            "precision": dict(self.precision),
            "tf32": self.tf32,
            "compile": self.compile,
            "perturbation": {"method": self.perturbation, "tolerance": self.perturbation_tolerance},
            "computed_in": self.resolved_precision().describe(),  # what precision and tf32 resolved to
            **({"plugins": list(self.plugins)} if self.plugins else {}),
        }

    def _multitask_args(self) -> dict[str, Any]:
        """A multi-task job's ``args``: no test environments, holdout fraction, steps or
        checkpoint frequency; its epochs and learning-rate schedule instead."""
        return {
            "dataset": self.dataset,
            "algorithm": self.algorithm,
            "backbone": self.backbone,
            "optimizer": self.optimizer,
            "trial_seed": self.trial_seed,
            "hparams_seed": self.hparams_seed,
            "seed": self.seed,
            "epochs": self.epochs,
            "lr_step_epochs": self.lr_step_epochs,
            "lr_gamma": self.lr_gamma,
            "hparams": self.hparams_overrides or None,
            "data_dir": str(self.data_dir),
            "output_dir": str(self.job_dir),
            "task": self.task,
            "device": self.device,
            "job_id": self.job_id,
            "dataset_options": self.dataset_options,
            **({"data_version": v} if (v := self._data_version().get("version")) is not None else {}),
            "backbone_options": self.backbone_options,
            "optimizer_options": self.optimizer_options,
            "precision": dict(self.precision),
            "tf32": self.tf32,
            "compile": self.compile,
            "perturbation": {"method": self.perturbation, "tolerance": self.perturbation_tolerance},
            "computed_in": self.resolved_precision().describe(),
            **({"plugins": list(self.plugins)} if self.plugins else {}),
        }


WANDB_MODES = ("off", "auto", "offline", "online")


def _wandb_options(node: DictConfig) -> dict[str, Any]:
    options = OmegaConf.to_container(node, resolve=True)
    mode = options["mode"]
    if isinstance(mode, bool):  # YAML 1.1: off -> False, on -> True
        mode = "auto" if mode else "off"
    if mode not in WANDB_MODES:
        raise ConfigError(f"bad value for 'wandb.mode': {mode!r}; valid choices: {', '.join(WANDB_MODES)}")
    return {**options, "mode": mode}


def _dataset_options(cfg: DictConfig) -> dict[str, Any]:
    """``dataset.*`` options (keywords of the data set's constructor after ``preprocess``), with
    the evaluation ones checked."""
    options = _group_options(cfg, "dataset")
    dataset_cls = get_dataset_class(cfg.dataset.name)
    valid = sorted(list(inspect.signature(dataset_cls.__init__).parameters)[5:])
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join('dataset.' + k for k in unknown)} for {cfg.dataset.name}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    if "eval_cache" in options:
        mode = options["eval_cache"]
        if isinstance(mode, bool):  # YAML 1.1: off -> False
            mode = "auto" if mode else "off"
        if mode not in EVAL_CACHE_MODES:
            raise ConfigError(
                f"bad value for 'dataset.eval_cache': {mode!r}; valid choices: {', '.join(EVAL_CACHE_MODES)}"
            )
        options["eval_cache"] = mode
    if "eval_augment" in options and not isinstance(options["eval_augment"], bool):
        raise ConfigError(f"bad value for 'dataset.eval_augment': {options['eval_augment']!r}; valid choices: true, false")
    return options


def _refuse_added_keys(cfg: DictConfig) -> None:
    """Keys added with ``+key=value`` that no schema knows (``+foo=1``) are refused as a
    misspelt ``foo=1`` is. (Options of a group, ``+backbone.x=``, are checked by their group.)"""
    for node, schema, prefix in ((cfg, TrainSchema, ""), (cfg.get("precision"), PrecisionSchema, "precision."),
                                 (cfg.get("wandb"), WandbSchema, "wandb.")):  # fmt: skip
        if not isinstance(node, DictConfig):
            continue
        valid = sorted(f.name for f in fields(schema))
        unknown = sorted(set(node.keys()) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown config key {prefix + str(unknown[0])!r} (added with +{prefix}{unknown[0]}=...); valid "
                f"keys{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}"
            )


def job_from_config(cfg: DictConfig) -> JobSpec:
    """Validate a composed configuration into a ``JobSpec`` (raises ``ConfigError``)."""
    _refuse_added_keys(cfg)
    try:  # every ${...} at once: a preset's per-data-set table may lack the data set
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
    dataset = cfg.dataset.name
    task = dataset_task(dataset)
    if task is None:
        raise ConfigError(f"unknown dataset {dataset!r}; valid choices: {', '.join(sorted(ALL_DATASET_NAMES))}")
    from sage_bench import config_mtl  # the multi-task half, which builds on this module

    config_mtl.check_task(cfg.algorithm.name, dataset, task)
    if task == MULTI_TASK:
        return config_mtl.multitask_job(cfg)
    config_mtl.refuse_other_task_keys(cfg, dataset, config_mtl.MULTITASK_ONLY)
    dataset_cls = get_dataset_class(dataset)
    n_envs = len(dataset_cls.ENVIRONMENTS)

    if cfg.backbone is None:
        raise ConfigError("no backbone chosen")  # compose_job fills in the data set's default
    backbone = cfg.backbone.name
    if backbone in config_mtl.MULTITASK_BACKBONES:
        raise ConfigError(
            f"backbone={backbone} is the network of the multi-task data sets; {dataset} takes one of "
            f"{', '.join(sorted(BACKBONES))}"
        )
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; valid choices: {', '.join(sorted(BACKBONES))}")
    backbone_options = _group_options(cfg, "backbone")
    check_backbone_options(backbone, backbone_options)
    algorithm = cfg.algorithm.name

    test_envs = sorted(cfg.test_envs)  # [1, 0] and [0, 1] are one job
    if not test_envs:
        raise ConfigError("test_envs must name at least one environment")
    if len(set(test_envs)) != len(test_envs):
        raise ConfigError(f"test_envs has repeated entries: {test_envs}")
    bad = [e for e in test_envs if not 0 <= e < n_envs]
    if bad:
        names = ", ".join(f"{i}={name}" for i, name in enumerate(dataset_cls.ENVIRONMENTS))
        raise ConfigError(f"test_envs {bad} out of range for {dataset}; valid environments: {names}")
    if len(test_envs) >= n_envs:
        raise ConfigError(f"test_envs={test_envs} leaves no training environment in {dataset}")
    for key in ("trial_seed", "hparams_seed"):
        if cfg[key] < 0:
            raise ConfigError(f"bad value for {key!r}: must be >= 0, got {cfg[key]}")
    if not 0.0 < cfg.holdout_fraction < 1.0:
        raise ConfigError(f"bad value for 'holdout_fraction': must be in (0, 1), got {cfg.holdout_fraction}")
    _check_holdout_fraction(dataset_cls, cfg.holdout_fraction)
    if cfg.seed is not None and not 0 <= cfg.seed < 2**64:
        raise ConfigError(f"bad value for 'seed': {cfg.seed} must be in [0, 2**64) (null: derived from the job)")
    _check_output_dir(Path(cfg.output_dir))

    steps = cfg.steps if cfg.steps is not None else dataset_cls.N_STEPS
    freq = cfg.checkpoint_freq if cfg.checkpoint_freq is not None else dataset_cls.CHECKPOINT_FREQ
    if steps < 1:
        raise ConfigError(f"bad value for 'steps': must be >= 1, got {steps}")
    if freq < 1:
        raise ConfigError(f"bad value for 'checkpoint_freq': must be >= 1, got {freq}")
    num_workers = cfg.num_workers if cfg.num_workers is not None else dataset_cls.N_WORKERS
    if num_workers < 0:
        raise ConfigError(f"bad value for 'num_workers': must be >= 0, got {num_workers}")
    if cfg.test_grad_cosine_freq < 0:
        raise ConfigError(
            f"bad value for 'test_grad_cosine_freq': must be >= 0 (0: off), got {cfg.test_grad_cosine_freq}"
        )
    eval_batch_size = cfg.eval_batch_size if cfg.eval_batch_size is not None else EVAL_BATCH_SIZE
    if eval_batch_size < 1:
        raise ConfigError(f"bad value for 'eval_batch_size': must be >= 1, got {eval_batch_size}")
    if cfg.eval_splits not in EVAL_SPLITS:
        raise ConfigError(f"bad value for 'eval_splits': {cfg.eval_splits!r}; valid choices: {', '.join(EVAL_SPLITS)}")
    dataset_options = _dataset_options(cfg)

    precision = prec.check_precision(OmegaConf.to_container(cfg.precision, resolve=True), cfg.tf32)
    perturbation, tolerance = check_perturbation_config(cfg)
    try:
        overrides = OmegaConf.to_container(cfg.hparams, resolve=True)
    except InterpolationResolutionError as exc:
        raise ConfigError(f"cannot resolve the hyperparameters: {str(exc).splitlines()[0]}") from exc
    wandb = _wandb_options(cfg.wandb)
    try:
        hparams = hp.resolve_hparams(
            algorithm, dataset, cfg.hparams_seed, cfg.trial_seed, overrides, backbone=backbone
        )
    except hp.HParamError as exc:
        raise ConfigError(str(exc)) from exc
    # the overrides as the job uses them (hparams.lr=1 and hparams.lr=1.0 are one job)
    overrides = {name: hparams[name] for name in overrides}
    optimizer_options = _group_options(cfg, "optimizer")
    _check_optimizer(cfg.optimizer.name, hparams, optimizer_options)

    seed = cfg.seed
    if seed is None:  # as DomainBed's sweep sets --seed
        seed = seed_hash(dataset, algorithm, test_envs, cfg.hparams_seed, cfg.trial_seed)

    return JobSpec(
        dataset=dataset,
        dataset_options=dataset_options,
        backbone=backbone,
        backbone_options=backbone_options,
        algorithm=algorithm,
        optimizer=cfg.optimizer.name,
        optimizer_options=optimizer_options,
        test_envs=test_envs,
        trial_seed=cfg.trial_seed,
        hparams_seed=cfg.hparams_seed,
        seed=seed,
        steps=steps,
        checkpoint_freq=freq,
        holdout_fraction=cfg.holdout_fraction,
        hparams=hparams,
        hparams_overrides=overrides,
        output_dir=Path(cfg.output_dir),
        data_dir=Path(cfg.data_dir),
        device=_resolve_device(cfg.device),
        num_workers=num_workers,
        eval_batch_size=eval_batch_size,
        eval_splits=cfg.eval_splits,
        progress=cfg.progress,
        precision=precision,
        tf32=cfg.tf32,
        compile=cfg.compile,
        perturbation=perturbation,
        perturbation_tolerance=tolerance,
        save_final_model=cfg.save_final_model,
        wandb=wandb,
        test_grad_cosine_freq=cfg.test_grad_cosine_freq,
        plugins=tuple(cfg.plugins),
    )


def check_perturbation_config(cfg: DictConfig) -> tuple[str, float]:
    """``perturbation.method`` and ``.tolerance`` checked, or a ``ConfigError`` naming the bad one."""
    from sage_bench.algorithms.perturbation import check_perturbation

    node = OmegaConf.to_container(cfg.perturbation, resolve=True)
    if not isinstance(node, dict) or set(node) - {"method", "tolerance"}:
        raise ConfigError(
            f"bad value for 'perturbation': {node!r}; valid: perturbation=auto|difference|linearized "
            "and perturbation.tolerance=<number > 0>"
        )
    try:
        return check_perturbation(node.get("method"), node.get("tolerance", 0.01))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _check_holdout_fraction(dataset_cls: type, fraction: float) -> None:
    """Every environment whose size is known must keep examples in both splits."""
    sizes = dataset_cls.known_environment_sizes()
    for index, size in enumerate(sizes or []):
        n_out = int(size * fraction)
        if n_out == 0 or n_out == size:
            split = "out" if n_out == 0 else "in"
            raise ConfigError(
                f"bad value for 'holdout_fraction': {fraction} leaves the {split}-split of environment "
                f"{index} ({dataset_cls.ENVIRONMENTS[index]}, {size} examples) empty; "
                f"it must be in [1/{size}, 1 - 1/{size}]"
            )


def _check_output_dir(output_dir: Path) -> None:
    """``output_dir`` must be a folder, or a path where one can be made."""
    for path in (output_dir, *output_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == output_dir else f"lies under {path}, which is a file"
                raise ConfigError(f"bad value for 'output_dir': {output_dir} {what}; name a folder")
            return


def _check_optimizer(name: str, hparams: dict[str, Any], options: dict[str, Any]) -> None:
    """Build the optimizer on a dummy parameter and take one step: options and learning rates
    it would refuse (``optimizer.betas=[2,0.9]``; an ``lr`` whose step overflows float32) fail
    here, not in training."""
    from sage_bench.optim import OPTIMIZERS, build_optimizer

    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    dummy = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = build_optimizer(name, [dummy], hparams, **options)
        dummy.grad = torch.ones_like(dummy)
        optimizer.step()
    except (TypeError, ValueError, RuntimeError) as exc:
        given = [f"optimizer.{k}={v}" for k, v in options.items()]
        given += [f"hparams.{k}={hparams[k]}" for k in ("lr", "weight_decay") if k in hparams]
        raise ConfigError(f"optimizer={name} refuses its settings ({' '.join(given)}): {exc}") from exc


def compose_job_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed configuration, with the data set's default backbone filled in (so
    ``backbone.<option>=...`` works without naming the backbone)."""
    backbone_options = re.compile(r"^\+{0,2}backbone\.")
    without = [o for o in overrides if not backbone_options.match(o)]
    cfg = compose_config(without)
    dataset = cfg.dataset.name
    if dataset_task(dataset) is None:
        raise ConfigError(f"unknown dataset {dataset!r}; valid choices: {', '.join(sorted(ALL_DATASET_NAMES))}")
    if cfg.backbone is None:
        default = get_dataset_class(dataset).DEFAULT_BACKBONE
        return compose_config([*overrides, f"backbone={default}"])
    return cfg if len(without) == len(overrides) else compose_config(overrides)


def load_job(overrides: Sequence[str] = ()) -> JobSpec:
    """Compose and validate: command-line overrides to a ``JobSpec``."""
    return job_from_config(compose_job_config(overrides))
