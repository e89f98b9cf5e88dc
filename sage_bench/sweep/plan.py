"""The jobs of a sweep: data sets x algorithms x test environments x hyperparameter seeds x
trial seeds x any grid of Hydra overrides, as DomainBed's ``sweep.py`` plans them.

Each job is the list of ``sage-bench train`` overrides that defines it, and its validated
``JobSpec``: ``sage_bench.config.load_job(job.overrides)`` gives the same spec wherever the job
runs (only ``device`` and ``data_dir`` are resolved on the machine that runs it), so its folder
is ``job.spec.job_dir`` everywhere. A bad name or value anywhere in the grid stops the planning
before anything is launched.

A multi-task data set has no test environments: each of its jobs is planned once per grid point
and seeds (``test_envs`` must be left at ``single``). A row trained as one network per task
(``MultiTaskAlgorithm.per_task_hparam``: STL's ``task``) is planned once per task of the data
set, unless the overrides set that hyperparameter.
"""

from __future__ import annotations

import copy
import itertools
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from sage_bench.config import JobSpec, compose_job_config, job_from_config
from sage_bench.data import get_dataset_class
from sage_bench.data.catalog import MULTITASK_TASKS
from sage_bench.errors import ConfigError

# Keys a sweep sets itself; the message says which option sets them instead.
_AXIS_OPTIONS = {
    "dataset": "--datasets",
    "algorithm": "--algorithms",
    "test_envs": "--test-envs",
    "hparams_seed": "--n-hparams and --n-hparams-from",
    "trial_seed": "--n-trials",
    "output_dir": "--output-dir",
}

TEST_ENV_MODES = ("single", "all")


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


def expand_grid(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the values of Hydra sweep overrides, in order.

    ``["hparams.lr=1e-4,3e-4", "steps=1000"]`` gives ``[["hparams.lr=0.0001", "steps=1000"],
    ["hparams.lr=0.0003", "steps=1000"]]``; ``choice(...)`` and ``range(...)`` work too.
    """
    parsed = _parse(overrides)
    axes: list[list[str]] = []
    for override in parsed:
        key = override.key_or_group
        if key in _AXIS_OPTIONS:
            raise ConfigError(
                f"{key!r} is set by the sweep's {_AXIS_OPTIONS[key]} option, not by an override"
            )
        if not override.is_sweep_override():
            axes.append([override.input_line])
        elif override.is_discrete_sweep():
            prefix = override.get_key_element()
            axes.append([f"{prefix}={value}" for value in override.sweep_string_iterator()])
        else:
            raise ConfigError(
                f"{override.input_line!r}: a sweep needs a list of values, not an interval"
            )
    return [list(point) for point in itertools.product(*axes)]


def hydra_string(value: str) -> str:
    """``value`` as a Hydra override value: quoted when it holds characters Hydra's grammar
    reads as syntax (a comma would make a sweep, a space or a quote would not parse) or that it
    does not accept unquoted (any non-ASCII letter, as in ``résultats``)."""
    if re.fullmatch(r"[\w./@:+-]+", value, flags=re.ASCII):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def _parse(overrides: Sequence[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot parse override: {str(exc).splitlines()[0]}") from exc


def _override_keys(overrides: Sequence[str]) -> set[str]:
    return {o.key_or_group for o in _parse(overrides)}


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: its ``sage-bench train`` overrides and its validated spec."""

    overrides: tuple[str, ...]
    spec: JobSpec
    swept: tuple[str, ...] = ()  # the overrides a grid varies, to tell jobs apart

    @property
    def job_dir(self) -> Path:
        return self.spec.job_dir

    @property
    def line(self) -> str:
        """The overrides as one shell-quoted line (the job-list format of ``--write-jobs``)."""
        return shlex.join(self.overrides)

    def describe(self) -> str:
        s = self.spec
        return " ".join(
            [
                s.dataset,
                s.algorithm,
                *([] if s.multi_task else [f"test_envs={s.test_envs}"]),
                f"hparams_seed={s.hparams_seed}",
                f"trial_seed={s.trial_seed}",
                *self.swept,
            ]
        )


@dataclass(frozen=True)
class Sweep:
    """A sweep's definition; ``jobs()`` lists its jobs."""

    output_dir: Path
    datasets: Sequence[str]
    algorithms: Sequence[str]
    test_envs: str | Sequence[Sequence[int]] = "single"
    hparams_seeds: Sequence[int] = range(0, 20)
    trial_seeds: Sequence[int] = range(0, 3)
    overrides: Sequence[str] = field(default_factory=list)
    name: str | None = None

    @property
    def group(self) -> str:
        """The sweep's name: its wandb group (default: the output folder's name)."""
        return self.name or Path(self.output_dir).resolve().name

    def jobs(self) -> list[SweepJob]:
        """Every job, in the order data set, algorithm, grid point, test environments,
        hyperparameter seed, trial seed; a job that two grid points define is listed once."""
        if not self.datasets:
            raise ConfigError("a sweep needs at least one data set (--datasets)")
        if not self.algorithms:
            raise ConfigError("a sweep needs at least one algorithm (--algorithms)")
        grid = expand_grid(self.overrides)
        swept_keys = {o.key_or_group for o in _parse(self.overrides) if o.is_sweep_override()}
        output_dir = Path(self.output_dir).resolve()
        jobs: dict[Path, SweepJob] = {}
        for dataset in self.datasets:
            multi_task = dataset in MULTITASK_TASKS
            if multi_task and self.test_envs not in TEST_ENV_MODES:
                raise ConfigError(f"{dataset} is a multi-task data set and has no test environments; leave --test-envs out")
            cls = get_dataset_class(dataset)
            env_sets = [None] if multi_task else test_env_sets(self.test_envs, len(cls.ENVIRONMENTS))
            for algorithm, point in itertools.product(self.algorithms, grid):
                swept = tuple(o for o in point if _parse([o])[0].key_or_group in swept_keys)
                for extra in self._per_task(dataset, algorithm, point) if multi_task else [[]]:
                    for job in self._jobs_of(dataset, algorithm, [*point, *extra], (*swept, *extra), env_sets, output_dir):
                        jobs.setdefault(job.job_dir, job)
        return list(jobs.values())

    @staticmethod
    def _per_task(dataset: str, algorithm: str, point: list[str]) -> list[list[str]]:
        """``[[]]``, or one ``hparams.<name>=<task>`` per task of the data set for a row trained
        as one network per task (``per_task_hparam``) whose hyperparameter the point leaves open."""
        from sage_bench.algorithms.registry import algorithms

        registered = algorithms().get(algorithm)
        name = getattr(registered.cls, "per_task_hparam", None) if registered is not None else None
        if name is None or f"hparams.{name}" in _override_keys(point):
            return [[]]
        return [[f"hparams.{name}={task}"] for task, _ in MULTITASK_TASKS[dataset]]

    def _jobs_of(
        self,
        dataset: str,
        algorithm: str,
        point: list[str],
        swept: tuple[str, ...],
        env_sets: list[list[int] | None],
        output_dir: Path,
    ) -> Iterator[SweepJob]:
        given = _override_keys(point)
        tail = [*point, f"output_dir={hydra_string(str(output_dir))}"]
        if "progress" not in given:
            tail.append("progress=false")
        if "wandb.group" not in given:
            tail.append(f"wandb.group={hydra_string(self.group)}")
        # Composing is slow (~50 ms); compose once and set the per-job keys, which is what
        # Hydra does with ``key=value`` overrides of these plain top-level keys.
        base = compose_job_config([f"dataset={dataset}", f"algorithm={algorithm}", *tail])
        if re.fullmatch(r"cuda(:\d+)?", str(base.device)):
            # validate here, without a GPU; the job resolves its device where it runs
            base.device = "cpu"
        for test_envs, hparams_seed, trial_seed in itertools.product(
            env_sets, self.hparams_seeds, self.trial_seeds
        ):
            cfg = copy.deepcopy(base)
            if test_envs is not None:  # None: a multi-task data set
                cfg.test_envs = test_envs
            cfg.hparams_seed = hparams_seed
            cfg.trial_seed = trial_seed
            overrides = (
                f"dataset={dataset}",
                f"algorithm={algorithm}",
                *([] if test_envs is None else [f"test_envs=[{','.join(map(str, test_envs))}]"]),
                f"hparams_seed={hparams_seed}",
                f"trial_seed={trial_seed}",
                *tail,
            )
            yield SweepJob(overrides, job_from_config(cfg), swept)
