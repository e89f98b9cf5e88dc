"""The configuration: from command-line overrides to a validated ``JobSpec``.

Modules, each importing only from those listed before it:

- ``schema``: the configuration's keys and Hydra composition (``compose_config``,
  ``compose_job_config``);
- ``checks``: the checks every kind of job shares (seeds, workers, device, output folder,
  optimizer, perturbation, wandb);
- ``spec``: ``JobSpec``, the common core of a job plus its kind's ``settings``;
- ``kind``: ``JobKind``, what a kind of job brings (validation, shared hyperparameters, sweep
  planning, disk estimate);
- ``dg``, ``mtl``: the two kinds (domain generalization; multi-task), each its settings and its
  ``JobKind``;
- ``kinds``: the table of kinds, keyed by the records' task value;
- ``space``: a job's hyperparameters (the kind's shared ones, the backbone's, the algorithm's);
- ``job``: validation of a composed configuration into one ``JobSpec`` (``load_job``).
"""

from sage_bench.config.checks import check_perturbation_config
from sage_bench.config.dg import EVAL_BATCH_SIZE, EVAL_CACHE_MODES, EVAL_SPLITS, DGSettings
from sage_bench.config.job import job_from_config, load_job
from sage_bench.config.kinds import JOB_KINDS, dataset_kind, job_kind
from sage_bench.config.mtl import MTL_FORMER_DEFAULTS, MultiTaskSettings
from sage_bench.config.schema import (
    CONFIG_MODULE,
    TrainSchema,
    compose_config,
    compose_job_config,
    plugin_modules,
)
from sage_bench.config.space import (
    dataset_family,
    default_hparams,
    hparam_space,
    random_hparams,
    resolve_hparams,
)
from sage_bench.config.spec import JobSpec, KindSettings
from sage_bench.errors import ConfigError

__all__ = [
    "CONFIG_MODULE", "EVAL_BATCH_SIZE", "EVAL_CACHE_MODES", "EVAL_SPLITS", "JOB_KINDS", "MTL_FORMER_DEFAULTS",
    "ConfigError", "DGSettings", "JobSpec", "KindSettings", "MultiTaskSettings", "TrainSchema",
    "check_perturbation_config", "compose_config", "compose_job_config", "dataset_family", "dataset_kind",
    "default_hparams", "hparam_space", "job_from_config", "job_kind", "load_job", "plugin_modules",
    "random_hparams", "resolve_hparams",
]  # fmt: skip
