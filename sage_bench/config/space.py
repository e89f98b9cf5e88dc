"""The hyperparameters of a job, as DomainBed's ``hparams_registry`` computes them: the shared
ones of its data set's kind (``JobKind.shared_hparams``), the backbone's
(``sage_bench.hparams.BACKBONE_SPACES``) and the algorithm's own (its registered space,
``sage_bench.algorithms.registry.algorithm_space``); the defaults (``hparams_seed=0``) or a
random draw, then the overrides. The mechanics (``HParam``, samplers, ranges, ``sample``,
``coerce``) are ``sage_bench.hparams``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sage_bench import hparams as hp
from sage_bench.algorithms.registry import algorithm_space, get_algorithm
from sage_bench.config.kinds import job_kind
from sage_bench.data import get_dataset_class
from sage_bench.data.catalog import dataset_task
from sage_bench.seeding import seed_hash


def dataset_family(dataset: str) -> str:
    """``"small"`` or ``"large"``: which DomainBed default learning rate and batch size apply."""
    return get_dataset_class(dataset).HPARAM_FAMILY


def hparam_space(algorithm: str, dataset: str, backbone: str | None = None) -> dict[str, hp.HParam]:
    """Every hyperparameter of a job: shared (per data set family, or a multi-task data set's
    protocol), per backbone, and per algorithm."""
    family = dataset_family(dataset)
    space = job_kind(dataset_task(dataset)).shared_hparams(dataset)
    if backbone is not None and backbone in hp.BACKBONE_SPACES:
        space.update(hp.BACKBONE_SPACES[backbone]())
    for name, spec in algorithm_space(algorithm, family, dataset, backbone).items():
        if name in space:
            raise hp.HParamError(
                f"algorithm {algorithm!r} ({get_algorithm(algorithm).cls.__module__}) declares a hyperparameter "
                f"{name!r}, which is a shared one ({', '.join(sorted(space))}); give it another name in "
                "its space function"
            )
        space[name] = spec
    return space


def default_hparams(algorithm: str, dataset: str, backbone: str | None = None) -> dict[str, Any]:
    """DomainBed's ``default_hparams``."""
    return hp.defaults(hparam_space(algorithm, dataset, backbone))


def random_hparams(algorithm: str, dataset: str, seed: int, backbone: str | None = None) -> dict[str, Any]:
    """DomainBed's ``random_hparams``: ``seed`` is ``seed_hash(hparams_seed, trial_seed)``."""
    return hp.sample(hparam_space(algorithm, dataset, backbone), seed)


def resolve_hparams(
    algorithm: str,
    dataset: str,
    hparams_seed: int,
    trial_seed: int,
    overrides: Mapping[str, Any] | None = None,
    backbone: str | None = None,
) -> dict[str, Any]:
    """The hyperparameters of one job, as DomainBed's ``train.py`` computes them."""
    space = hparam_space(algorithm, dataset, backbone)
    if hparams_seed == 0:
        hparams = hp.defaults(space)
    else:
        hparams = hp.sample(space, seed_hash(hparams_seed, trial_seed))
    for name, value in hparams.items():  # a default or draw outside its range is a bug of the space
        if name in (overrides or {}):
            continue  # replaced, and checked as the user's value below
        try:
            hp.coerce(name, space[name], value)
        except hp.HParamError as exc:
            what = "default" if hparams_seed == 0 else f"random draw (hparams_seed={hparams_seed})"
            own = name in algorithm_space(algorithm, dataset_family(dataset), dataset, backbone)
            owner = f"algorithm {algorithm!r} ({get_algorithm(algorithm).cls.__module__})" if own else "sage-bench"
            raise hp.HParamError(
                f"the {what} of hparams.{name} that {owner} declares is {value!r}, outside its own range "
                f"({str(exc).split(': ', 1)[-1]}): a bug of its hyperparameter space, not of this command; "
                "fix the space function" + (" or set the value with hparams." + name + "=..." if own else "")
            ) from exc
    return hp.apply_overrides(space, hparams, overrides or {})


__all__ = ["dataset_family", "default_hparams", "hparam_space", "random_hparams", "resolve_hparams"]
