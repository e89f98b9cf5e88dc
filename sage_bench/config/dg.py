"""Domain-generalization jobs (DomainBed's): their settings (steps, test environments, holdout
fraction, checkpoint frequency, what is evaluated), validation, identity, record arguments,
sweep planning and disk estimate. Their training loop is ``sage_bench.run.dg``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig

from sage_bench import hparams as hp
from sage_bench.config.checks import at_least_one, group_options
from sage_bench.config.kind import TEST_ENV_MODES, JobKind
from sage_bench.errors import ConfigError
from sage_bench.kinds import KINDS
from sage_bench.models import BACKBONES, check_backbone_options
from sage_bench.records import DOMAIN_GENERALIZATION
from sage_bench.seeding import seed_hash

if TYPE_CHECKING:
    from sage_bench.config.spec import JobSpec

EVAL_SPLITS = ("all", "selection")
EVAL_CACHE_MODES = ("auto", "off", "require")
EVAL_BATCH_SIZE = 128  # domain generalization's evaluation batch when eval_batch_size is null

# keys of domain-generalization jobs, at the value a job of another kind must leave them (config.yaml's)
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

# Keys of the identity, in the order they were introduced
IDENTITY_KEYS = (
    "dataset", "algorithm", "backbone", "optimizer", "test_envs", "trial_seed", "hparams_seed",
    "seed", "steps", "checkpoint_freq", "holdout_fraction", "hparams_overrides", "eval_splits",
)  # fmt: skip
# Keys added after jobs existed, with the value that reproduces the behaviour from before them:
# at that value a key is left out of the identity, so existing jobs keep their folders; any other
# value changes what the job computes or records, and enters it.
LEGACY_DEFAULTS: dict[tuple[str, ...], Any] = {
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


@dataclass(frozen=True)
class DGSettings:
    """A domain-generalization job's own settings: it trains ``steps`` steps on every
    environment but ``test_envs``, holds ``holdout_fraction`` of each out for validation, and
    evaluates (``eval_splits``) and checkpoints every ``checkpoint_freq`` steps;
    ``test_grad_cosine_freq`` N > 0 logs the cosine with the held-out domains' gradient every N
    steps."""

    TASK: ClassVar[str] = DOMAIN_GENERALIZATION

    test_envs: list[int]
    steps: int
    checkpoint_freq: int
    holdout_fraction: float
    eval_splits: str = "all"  # all: every split at every checkpoint; selection: what model selection reads
    test_grad_cosine_freq: int = 0

    def identity(self, spec: JobSpec, core: dict[str, Any]) -> dict[str, Any]:
        values = {
            **core,
            "test_envs": self.test_envs,
            "steps": self.steps,
            "checkpoint_freq": self.checkpoint_freq,
            "holdout_fraction": self.holdout_fraction,
            "eval_splits": self.eval_splits,
        }
        assert set(values) == set(IDENTITY_KEYS)
        for path, legacy in LEGACY_DEFAULTS.items():
            _drop(values, path, legacy)
        return values

    def record_args(self, spec: JobSpec) -> dict[str, Any]:
        return {
            "test_envs": list(self.test_envs),
            "steps": self.steps,
            "checkpoint_freq": self.checkpoint_freq,
            "holdout_fraction": self.holdout_fraction,
            "eval_splits": self.eval_splits,
        }

    def describe(self) -> str:
        return f" test_envs={self.test_envs}"


def all_test_env_combinations(n_envs: int) -> list[list[int]]:
    """Every single test environment and every pair, in DomainBed's order:
    ``[0], [0, 1], [0, 2], ..., [1], [1, 2], ...``. Leave-one-domain-out model selection needs
    the pairs (it validates on the second environment of each)."""
    combinations = []
    for i in range(n_envs):
        combinations.append([i])
        combinations.extend([i, j] for j in range(i + 1, n_envs))
    return combinations


def test_env_sets(choice: str | Sequence[Sequence[int]], n_envs: int) -> list[list[int]]:
    """The test-environment lists of one data set: ``"single"`` (each environment alone),
    ``"all"`` (``all_test_env_combinations``) or the given lists."""
    if choice == "single":
        return [[i] for i in range(n_envs)]
    if choice == "all":  # a pair of a 2-environment data set would leave nothing to train on
        return [envs for envs in all_test_env_combinations(n_envs) if len(envs) < n_envs]
    if isinstance(choice, str):
        raise ConfigError(
            f"bad test environments {choice!r}; valid: {', '.join(TEST_ENV_MODES)} or lists like 0,1"
        )
    return [list(envs) for envs in choice]


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


def _test_envs(cfg: DictConfig, dataset: str, dataset_cls: type) -> list[int]:
    n_envs = len(dataset_cls.ENVIRONMENTS)
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
    return test_envs


class DomainGeneralization(JobKind):
    """DomainBed's jobs: train on some environments of a data set, test on the others."""

    kind = KINDS[DOMAIN_GENERALIZATION]
    own_keys = DG_ONLY
    seed_default = "derived from the job"

    @property
    def backbones(self) -> tuple[str, ...]:
        return tuple(sorted(BACKBONES))

    def backbone(
        self, cfg: DictConfig, dataset: str, dataset_cls: type, others: Sequence[JobKind]
    ) -> tuple[str, dict[str, Any]]:
        if cfg.backbone is None:
            raise ConfigError("no backbone chosen")  # compose_job_config fills in the data set's default
        backbone = cfg.backbone.name
        for other in others:
            if backbone in other.backbones:
                raise ConfigError(
                    f"backbone={backbone} is the network of the {other.kind.label} data sets; {dataset} takes one of "
                    f"{', '.join(sorted(BACKBONES))}"
                )
        if backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r}; valid choices: {', '.join(sorted(BACKBONES))}")
        options = group_options(cfg, "backbone")
        check_backbone_options(backbone, options)
        return backbone, options

    def settings(self, cfg: DictConfig, dataset: str, dataset_cls: type) -> DGSettings:
        test_envs = _test_envs(cfg, dataset, dataset_cls)
        if not 0.0 < cfg.holdout_fraction < 1.0:
            raise ConfigError(f"bad value for 'holdout_fraction': must be in (0, 1), got {cfg.holdout_fraction}")
        _check_holdout_fraction(dataset_cls, cfg.holdout_fraction)
        steps = at_least_one("steps", cfg.steps if cfg.steps is not None else dataset_cls.N_STEPS)
        freq = at_least_one(
            "checkpoint_freq", cfg.checkpoint_freq if cfg.checkpoint_freq is not None else dataset_cls.CHECKPOINT_FREQ
        )
        if cfg.test_grad_cosine_freq < 0:
            raise ConfigError(
                f"bad value for 'test_grad_cosine_freq': must be >= 0 (0: off), got {cfg.test_grad_cosine_freq}"
            )
        if cfg.eval_splits not in EVAL_SPLITS:
            raise ConfigError(
                f"bad value for 'eval_splits': {cfg.eval_splits!r}; valid choices: {', '.join(EVAL_SPLITS)}"
            )
        return DGSettings(
            test_envs=test_envs,
            steps=steps,
            checkpoint_freq=freq,
            holdout_fraction=cfg.holdout_fraction,
            eval_splits=cfg.eval_splits,
            test_grad_cosine_freq=cfg.test_grad_cosine_freq,
        )

    def dataset_option_names(self, dataset_cls: type) -> list[str]:
        """After ``(self, root, test_envs, hparams, preprocess)``."""
        return list(inspect.signature(dataset_cls.__init__).parameters)[5:]

    def dataset_options(self, cfg: DictConfig, dataset_cls: type) -> dict[str, Any]:
        """``dataset.*`` options (keywords of the data set's constructor after ``preprocess``),
        with the evaluation ones checked."""
        options = group_options(cfg, "dataset")
        valid = sorted(self.dataset_option_names(dataset_cls))
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
            raise ConfigError(
                f"bad value for 'dataset.eval_augment': {options['eval_augment']!r}; valid choices: true, false"
            )
        return options

    def shared_hparams(self, dataset: str) -> dict[str, hp.HParam]:
        from sage_bench.data import get_dataset_class

        return hp.common_space(get_dataset_class(dataset).HPARAM_FAMILY, dataset)

    def eval_batch_size(self, cfg: DictConfig, hparams: dict[str, Any]) -> int:
        size = cfg.eval_batch_size if cfg.eval_batch_size is not None else EVAL_BATCH_SIZE
        if size < 1:
            raise ConfigError(f"bad value for 'eval_batch_size': must be >= 1, got {size}")
        return size

    def default_seed(self, cfg: DictConfig, settings: DGSettings) -> int:
        # as DomainBed's sweep sets --seed
        return seed_hash(cfg.dataset.name, cfg.algorithm.name, settings.test_envs, cfg.hparams_seed, cfg.trial_seed)

    def sweep_variants(
        self, dataset: str, algorithm: str, point: list[str], test_envs: Any
    ) -> tuple[list[list[str]], list[dict[str, Any]]]:
        from sage_bench.data import get_dataset_class

        sets = test_env_sets(test_envs, len(get_dataset_class(dataset).ENVIRONMENTS))
        return [[]], [{"test_envs": envs} for envs in sets]

    def last_step(self, spec: JobSpec) -> int | None:
        return spec.settings.steps

    def record_count(self, spec: JobSpec) -> int:
        """A record at every step ``s`` with ``s % checkpoint_freq == 0`` and at the last step
        (counted, not listed: ``steps`` may be huge)."""
        steps, freq = spec.settings.steps, spec.settings.checkpoint_freq
        periodic = -(-steps // freq)  # 0, freq, 2 freq, ... below steps
        return periodic + ((steps - 1) % freq != 0)

    def record_values(self, spec: JobSpec) -> list[str]:
        """The accuracies of every environment's splits."""
        from sage_bench.data import get_dataset_class

        n_envs = len(get_dataset_class(spec.dataset).ENVIRONMENTS)
        return [f"env{i}_{s}_acc" for i in range(n_envs) for s in ("in", "out")]

    def meta_network(self, spec: JobSpec) -> torch.nn.Module:
        from sage_bench.data import get_dataset_class
        from sage_bench.models import build_network

        dataset = get_dataset_class(spec.dataset)(
            str(spec.data_dir), spec.settings.test_envs, spec.hparams, **spec.dataset_options
        )
        with torch.device("meta"):
            return build_network(
                spec.backbone, dataset.input_shape, dataset.num_classes, spec.hparams, **spec.backbone_options
            )


KIND = DomainGeneralization()

__all__ = [
    "DG_ONLY", "EVAL_BATCH_SIZE", "EVAL_CACHE_MODES", "EVAL_SPLITS", "KIND", "TEST_ENV_MODES", "DGSettings",
    "DomainGeneralization", "all_test_env_combinations", "test_env_sets",
]  # fmt: skip
