"""Hyperparameters: defaults and random-search distributions, with DomainBed's semantics.

Every hyperparameter has a default and a sampler. ``hparams_seed == 0`` gives the defaults;
any other ``hparams_seed`` draws every hyperparameter from its distribution, each from its
own ``numpy`` stream seeded by ``seed_hash(seed_hash(hparams_seed, trial_seed), name)``, exactly
as DomainBed's ``hparams_registry`` does. Adding a hyperparameter therefore never changes the
values drawn for the others, and a sweep over ``hparams_seed`` is a reproducible random search.

The space of a job depends on the algorithm (its own knobs), the data set family (learning
rate, batch size and weight decay differ between the small embedded data sets and real
images, as in DomainBed) and the backbone (e.g. ResNet dropout). An algorithm's own space is
registered with its class (``sage_bench.algorithms.registry.register_algorithm``); a job's whole
space is put together in ``sage_bench.config.space`` (``hparam_space``, ``resolve_hparams``),
which asks the job's kind for its shared hyperparameters. This module holds the shared
domain-generalization and per-backbone spaces and the mechanics, and imports nothing from the
layers above it.

Every hyperparameter declares what is valid (``Range`` for numbers, ``choices`` for strings);
a value outside it, or a NaN or infinite number, is refused with a message that names the
hyperparameter and its range, wherever it comes from (command line, sweep grid, random search,
``build_algorithm``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sage_bench.errors import UserError
from sage_bench.seeding import seed_hash

Sampler = Callable[[np.random.RandomState], Any]


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric hyperparameter: an interval, closed unless ``*_open``;
    ``None`` is unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def __str__(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low is None or self.low_open else "["
        right = ")" if self.high is None or self.high_open else "]"
        return f"{left}{low}, {high}{right}"


NON_NEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_open=True)
AT_LEAST_ONE = Range(1)
UNIT_INTERVAL = Range(0.0, 1.0)
PROBABILITY_BELOW_ONE = Range(0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default, how random search draws it, what it means, and what is
    valid (``range`` for numbers; ``choices`` for strings). Numbers without a ``range`` still
    must be finite."""

    default: Any
    sample: Sampler
    help: str = ""
    choices: tuple[Any, ...] | None = None
    range: Range | None = None


class HParamError(UserError, ValueError):
    """An unknown hyperparameter name, a value of the wrong type or outside its range."""


def const(value: Any) -> Sampler:
    """A sampler that always gives ``value`` (random search leaves the hyperparameter alone)."""
    return lambda r: value


def log_uniform(low_exp: float, high_exp: float) -> Sampler:
    """``10 ** U(low_exp, high_exp)``."""
    return lambda r: float(10 ** r.uniform(low_exp, high_exp))


def choice(values: list[Any]) -> Sampler:
    """One of ``values``, uniformly."""
    return lambda r: r.choice(values)


# --------------------------------------------------------------------------------------------
# Shared by every algorithm; depends on the data set family ("small" images: the embedded
# digits; "large": real 224x224 images) as DomainBed's SMALL_IMAGES switch does.


def common_space(family: str, dataset: str | None) -> dict[str, HParam]:
    """The hyperparameters every domain-generalization algorithm has on a data set of ``family``."""
    space: dict[str, HParam] = {}
    if family == "small":
        space["lr"] = HParam(1e-3, log_uniform(-4.5, -2.5), "learning rate", range=POSITIVE)
        space["weight_decay"] = HParam(0.0, const(0.0), "weight decay", range=NON_NEGATIVE)
        space["batch_size"] = HParam(
            64, lambda r: int(2 ** r.uniform(3, 9)), "examples per training domain per step", range=AT_LEAST_ONE
        )
    else:
        space["lr"] = HParam(5e-5, log_uniform(-5, -3.5), "learning rate", range=POSITIVE)
        space["weight_decay"] = HParam(0.0, log_uniform(-6, -2), "weight decay", range=NON_NEGATIVE)
        high = 5.0 if dataset == "DomainNet" else 5.5
        space["batch_size"] = HParam(
            32, lambda r: int(2 ** r.uniform(3, high)), "examples per training domain per step", range=AT_LEAST_ONE
        )
        space["data_augmentation"] = HParam(
            True, const(True), "DomainBed's training augmentation on training domains"
        )
    return space


# --------------------------------------------------------------------------------------------
# Per backbone.

BACKBONE_SPACES: dict[str, Callable[[], dict[str, HParam]]] = {
    "resnet50": lambda: {
        "resnet_dropout": HParam(
            0.0, choice([0.0, 0.1, 0.5]), "dropout on the ResNet features (DomainBed)", range=PROBABILITY_BELOW_ONE
        )
    },
}


# --------------------------------------------------------------------------------------------
# Per algorithm: registered with each class (``sage_bench.algorithms.registry``).


@dataclass(frozen=True)
class SpaceContext:
    """What an algorithm's hyperparameter space may depend on: the data set family (``"small"``
    or ``"large"``, see ``sage_bench.config.space.dataset_family``), the data set and the backbone (``None``: unknown,
    e.g. a user's own model)."""

    family: str = "large"
    dataset: str | None = None
    backbone: str | None = None


def _shared_names() -> frozenset[str]:
    names = set(common_space("small", None)) | set(common_space("large", "DomainNet"))
    for make in BACKBONE_SPACES.values():
        names |= set(make())
    return frozenset(names)


def defaults(space: Mapping[str, HParam]) -> dict[str, Any]:
    """The default value of every hyperparameter in ``space``."""
    return {name: spec.default for name, spec in space.items()}


def sample(space: Mapping[str, HParam], seed: int) -> dict[str, Any]:
    """One random draw of every hyperparameter, each from its own stream (DomainBed)."""
    drawn = {}
    for name, spec in space.items():
        value = spec.sample(np.random.RandomState(seed_hash(seed, name)))
        drawn[name] = value.item() if isinstance(value, np.generic) else value
    return drawn


def _in_range(name: str, spec: HParam, value: float) -> float:
    valid = spec.range if spec.range is not None else Range()
    if value not in valid:
        meaning = f" ({spec.help})" if spec.help else ""
        raise HParamError(f"hparams.{name}={value!r} is out of range: must be in {valid}{meaning}")
    return value


def coerce(name: str, spec: HParam, value: Any) -> Any:
    """``value`` converted to the type of ``spec.default`` and checked against its range or
    choices, or an error that says why not."""
    default = spec.default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise HParamError(f"hparams.{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise HParamError(f"hparams.{name} must be an integer, got {value!r}")
        return _in_range(name, spec, value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HParamError(f"hparams.{name} must be a number, got {value!r}")
        return _in_range(name, spec, float(value))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise HParamError(f"hparams.{name} must be a string, got {value!r}")
        if spec.choices is not None and value not in spec.choices:
            raise HParamError(
                f"hparams.{name}={value!r} is not valid; valid choices: {', '.join(spec.choices)}"
            )
        return value
    return value


def apply_overrides(
    space: Mapping[str, HParam], hparams: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """``hparams`` with ``overrides`` applied, after checking every name and type."""
    unknown = sorted(set(overrides) - set(space))
    if unknown:
        raise HParamError(
            f"unknown hyperparameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)}; valid names: {', '.join(sorted(space))}"
        )
    merged = dict(hparams)
    for name, value in overrides.items():
        merged[name] = coerce(name, space[name], value)
    return merged


SHARED_HPARAM_NAMES: frozenset[str] = _shared_names()
"""Names of the hyperparameters that are not an algorithm's own (``lr``, ``batch_size``, ...)."""
