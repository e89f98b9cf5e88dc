"""Hydra composition: the schema of the configuration's keys and ``compose_config`` (overrides to
a composed ``DictConfig``, not yet validated; ``sage_bench.config.job`` validates it).

A bad override is reported as a ``ConfigError`` that names the bad key or value and lists the
valid choices.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import MISSING, DictConfig

from sage_bench.config.kinds import JOB_KINDS
from sage_bench.data import get_dataset_class
from sage_bench.data.catalog import ALL_DATASET_NAMES, dataset_task
from sage_bench.errors import ConfigError
from sage_bench.kinds import KINDS
from sage_bench.models import backbone_option_defaults, backbones
from sage_bench.records import DOMAIN_GENERALIZATION

CONFIG_MODULE = "sage_bench.configs"


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


def _store_generated_configs() -> None:
    """Make every registered algorithm a choice of the ``algorithm`` config group, and every
    registered backbone and catalogued data set without a YAML file of its own (a plugin's
    backbone, say) a choice of its group with its options at their defaults: the registries are
    the one place each is named. A YAML file, where there is one, states the options with the
    reasons for their values and is what the group reads."""
    from sage_bench.algorithms.registry import algorithms

    _store_group("algorithm", {name: {"name": name} for name in algorithms()})
    _store_group("backbone", {name: _backbone_node(name) for name in backbones() if not _has_yaml("backbone", name)})
    _store_group("dataset", {name: _dataset_node(name) for name in ALL_DATASET_NAMES if not _has_yaml("dataset", name)})


def _store_group(group: str, nodes: dict[str, dict[str, Any]]) -> None:
    store = ConfigStore.instance()
    stored = store.repo.get(group, {})
    for stale in [f for f in stored if f.removesuffix(".yaml") not in nodes]:
        del stored[stale]  # unregistered since the last composition
    for name, node in nodes.items():
        store.store(group=group, name=name, node=node)


def _has_yaml(group: str, name: str) -> bool:
    return (resources.files(CONFIG_MODULE) / group / f"{name}.yaml").is_file()


def _backbone_node(name: str) -> dict[str, Any]:
    if backbones()[name].task != DOMAIN_GENERALIZATION:  # a network of the data set's tasks
        return {"name": name}
    return {"name": name, **backbone_option_defaults(name)}


def _dataset_node(name: str) -> dict[str, Any]:
    dataset_cls = get_dataset_class(name)
    names = JOB_KINDS[dataset_task(name)].dataset_option_names(dataset_cls)
    parameters = inspect.signature(dataset_cls.__init__).parameters
    defaults = {n: parameters[n].default for n in names if parameters[n].default is not inspect.Parameter.empty}
    return {"name": name, **{n: list(v) if isinstance(v, tuple) else v for n, v in defaults.items()}}


def _algorithm_choices() -> str:
    """The registered algorithm names, grouped by the kind of task they solve."""
    from sage_bench.algorithms.registry import algorithms

    return "; ".join(f"{', '.join(sorted(algorithms(task)))} ({kind.label})" for task, kind in KINDS.items())


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
    _store_generated_configs()
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


def refuse_added_keys(cfg: DictConfig) -> None:
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
