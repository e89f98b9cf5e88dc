"""The jobs of a sweep: data sets x algorithms x test environments x hyperparameter seeds x
trial seeds x any grid of Hydra overrides, as DomainBed's ``sweep.py`` plans them.

Each job is the list of ``sage-bench train`` overrides that defines it, and its validated
``JobSpec``: ``sage_bench.config.load_job(job.overrides)`` gives the same spec wherever the job
runs (only ``device`` and ``data_dir`` are resolved on the machine that runs it), so its folder
is ``job.spec.job_dir`` everywhere. A bad name or value anywhere in the grid stops the planning
before anything is launched.

How a data set's jobs multiply beyond the grid is its kind's (``JobKind.sweep_variants``,
``sage_bench.config.kinds``): a domain-generalization data set once per test-environment set; a
multi-task one, which has no test environments, once per grid point and seeds (``test_envs``
left at ``single``), and a row trained as one network per task (STL) once per task.
"""

from __future__ import annotations

import copy
import itertools
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from sage_bench.config import JobSpec, compose_job_config, dataset_kind, job_from_config
from sage_bench.config.dg import all_test_env_combinations, test_env_sets
from sage_bench.config.kind import TEST_ENV_MODES
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


def _override_value(value: Any) -> str:
    """A per-job key's value as an override: a list as ``[0,1]``."""
    if isinstance(value, (list, tuple)):
        return f"[{','.join(map(str, value))}]"
    return str(value)


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
                s.algorithm + s.settings.describe(),
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
            kind = dataset_kind(dataset)
            for algorithm, point in itertools.product(self.algorithms, grid):
                swept = tuple(o for o in point if _parse([o])[0].key_or_group in swept_keys)
                extras, per_job = kind.sweep_variants(dataset, algorithm, point, self.test_envs)
                for extra in extras:
                    for job in self._jobs_of(dataset, algorithm, [*point, *extra], (*swept, *extra), per_job, output_dir):
                        jobs.setdefault(job.job_dir, job)
        return list(jobs.values())

    def _jobs_of(
        self,
        dataset: str,
        algorithm: str,
        point: list[str],
        swept: tuple[str, ...],
        per_job: list[dict[str, Any]],
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
        for keys, hparams_seed, trial_seed in itertools.product(per_job, self.hparams_seeds, self.trial_seeds):
            cfg = copy.deepcopy(base)
            for key, value in keys.items():  # the kind's per-job keys (test_envs)
                cfg[key] = value
            cfg.hparams_seed = hparams_seed
            cfg.trial_seed = trial_seed
            overrides = (
                f"dataset={dataset}",
                f"algorithm={algorithm}",
                *(f"{key}={_override_value(value)}" for key, value in keys.items()),
                f"hparams_seed={hparams_seed}",
                f"trial_seed={trial_seed}",
                *tail,
            )
            yield SweepJob(overrides, job_from_config(cfg), swept)


__all__ = [
    "TEST_ENV_MODES", "Sweep", "SweepJob", "all_test_env_combinations", "expand_grid", "hydra_string", "test_env_sets",
]  # fmt: skip
