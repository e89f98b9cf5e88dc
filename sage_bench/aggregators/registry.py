"""The registry of multi-task methods: ``register_aggregator`` declares a method (its function,
hyperparameter space, the clip of each source repository and its Table 2 row) where it is
defined; ``aggregate`` calls one by name. ``sage_bench.aggregators`` re-exports all of it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from sage_bench.errors import UserError
from sage_bench.hparams import NON_NEGATIVE, HParam, const


class Aggregator(Protocol):
    def __call__(
        self, grads: torch.Tensor, losses: torch.Tensor, **hparams: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


#: The repositories behind Table 2's rows, by the data set whose row they produced; a method
#: declares the ``max_norm`` each clips its shared gradient to (see ``Method.clip``).
SOURCES = ("NYUv2", "Cityscapes")

Space = Callable[[str | None], dict[str, HParam]]


def no_hparams(dataset: str | None = None) -> dict[str, HParam]:
    """The space of a method without hyperparameters."""
    return {}


@dataclass(frozen=True)
class Row:
    """The multi-task row (``sage_bench.algorithms``) that runs a method as a
    ``GradientAggregation``: one forward, ``K`` backward passes, the aggregator, the clip.

    ``tunable_clip``: the row has a ``max_norm`` hyperparameter whose default is the clip of the
    data set's source (``Method.clip``); ``False``: no such hyperparameter, the clip is the
    source's (the same in every source) and fixed. ``doc`` becomes the row class's docstring."""

    name: str
    tunable_clip: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Method:
    """One registered method: everything about it is declared where it is defined.

    - ``fn``: the aggregator, ``(grads, losses, **hparams) -> (direction, head weights)``.
    - ``space(dataset)``: its hyperparameters (``{name: HParam}`` with defaults, samplers and
      ranges; the names are ``fn``'s keywords), as a function of the data set name.
    - ``clip``: ``{source: max_norm}`` for each of ``SOURCES``: what that repository clips the
      shared gradient to after aggregation (0.0: no clip).
    - ``row``: the Table 2 row that runs it as a ``GradientAggregation`` (``None``: none, e.g.
      the loss weightings, whose rows are their own classes).
    - ``generator``: for an ``fn`` that takes ``generator=``, what the row passes: ``"torch"`` (a
      ``torch.Generator``) or ``"python"`` (a ``random.Random``).
    - ``requires``: called when the row is built, to fail before training when an optional
      dependency is missing (Nash-MTL's cvxpy).
    """

    name: str
    fn: Aggregator
    space: Space = no_hparams
    clip: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0.0))
    row: Row | None = None
    generator: str = "torch"
    requires: Callable[[], object] | None = None

    def takes(self, keyword: str) -> bool:
        """Whether ``fn`` takes the keyword ``keyword`` (``state``, ``generator``)."""
        return keyword in inspect.signature(self.fn).parameters

    def fixed_clip(self) -> float | None:
        """The clip of a method whose sources all clip alike (``None``: no clip)."""
        values = set(self.clip.values())
        if len(values) != 1:
            raise ValueError(f"the sources of {self.name!r} clip differently ({dict(self.clip)}): the clip is a hyperparameter")
        value = values.pop()
        return value or None

    def max_norm_space(self, dataset: str | None) -> dict[str, HParam]:
        """``max_norm``: where the data set's source clips (0: no clip); NYUv2's source for
        NYUv2, Cityscapes' (FAMO's, whose policy the FairGrad and SAMO repositories share) for
        every other data set."""
        value = self.clip["NYUv2" if dataset == "NYUv2" else "Cityscapes"]
        meaning = "clip the shared gradient to this norm after aggregation (0: no clip); default: as the source repository"
        return {"max_norm": HParam(value, const(value), meaning, range=NON_NEGATIVE)}


METHODS: dict[str, Method] = {}
"""Every registered method by name, in registration order."""

AGGREGATORS: dict[str, Aggregator] = {}
"""The aggregator function of every registered method by name."""


class UnknownAggregatorError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_aggregator(
    name: str,
    *,
    space: Space = no_hparams,
    clip: Mapping[str, float] | None = None,
    row: Row | None = None,
    generator: str = "torch",
    requires: Callable[[], object] | None = None,
) -> Callable[[Aggregator], Aggregator]:
    """Register ``fn`` under ``name`` (lower case, as ``aggregate`` is called) with its
    hyperparameter ``space``, the ``clip`` of each source repository (default: none clips) and
    the ``row`` that runs it; see ``Method``."""
    clip = dict.fromkeys(SOURCES, 0.0) if clip is None else dict(clip)
    if set(clip) != set(SOURCES):
        raise ValueError(f"aggregator {name!r}: clip must give the max_norm of each of {', '.join(SOURCES)}")
    if generator not in ("torch", "python"):
        raise ValueError(f"aggregator {name!r}: generator must be 'torch' or 'python', not {generator!r}")

    def register(fn: Aggregator) -> Aggregator:
        if name in METHODS:
            raise ValueError(f"aggregator {name!r} is registered twice")
        METHODS[name] = Method(name, fn, space, {s: clip[s] for s in SOURCES}, row, generator, requires)
        AGGREGATORS[name] = fn
        for hook in _HOOKS:
            hook(METHODS[name])
        return fn

    return register


_HOOKS: list[Callable[[Method], None]] = []


def on_register(hook: Callable[[Method], None]) -> None:
    """Call ``hook(method)`` for every method registered so far and for every later one: how
    ``sage_bench.algorithms`` registers the rows of methods declared anywhere (a plugin too)
    without this layer importing it."""
    _HOOKS.append(hook)
    for method in list(METHODS.values()):
        hook(method)


def get_method(name: str) -> Method:
    """The method registered as ``name``, or an error listing the valid names."""
    if name not in METHODS:
        raise UnknownAggregatorError(
            f"unknown aggregator {name!r}; valid choices: {', '.join(sorted(METHODS))}"
        )
    return METHODS[name]


def aggregate(
    method: str, grads: torch.Tensor, losses: torch.Tensor, **hparams: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(direction, weights)`` of aggregator ``method`` for the ``K x P`` matrix ``grads``."""
    fn = get_method(method).fn
    if grads.ndim != 2:
        raise ValueError(f"grads must be a K x P matrix, got shape {tuple(grads.shape)}")
    if losses.shape != (grads.shape[0],):
        raise ValueError(f"losses must have shape ({grads.shape[0]},), got {tuple(losses.shape)}")
    return fn(grads, losses, **hparams)


def source_max_norm(method: str, dataset: str) -> float:
    """The clip norm Table 2's source used for ``method`` on ``dataset`` (0.0: none)."""
    if dataset not in SOURCES:
        raise UserError(f"no Table 2 source for data set {dataset!r}; valid choices: {', '.join(SOURCES)}")
    if method not in METHODS:
        raise UserError(f"no Table 2 source for method {method!r}; valid choices: {', '.join(METHODS)}")
    return METHODS[method].clip[dataset]


class _SourceMaxNorm(Mapping[str, Mapping[str, float]]):
    """``SOURCE_MAX_NORM[dataset][method]``: a read-only view of the methods' ``clip``."""

    def __getitem__(self, dataset: str) -> Mapping[str, float]:
        if dataset not in SOURCES:
            raise KeyError(dataset)
        return {name: method.clip[dataset] for name, method in METHODS.items()}

    def __iter__(self):
        return iter(SOURCES)

    def __len__(self) -> int:
        return len(SOURCES)


class _MethodSpaces(Mapping[str, Space]):
    """``METHOD_SPACES[method](dataset)``: a read-only view of the methods' ``space``."""

    def __getitem__(self, name: str) -> Space:
        return METHODS[name].space

    def __iter__(self):
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


SOURCE_MAX_NORM: Mapping[str, Mapping[str, float]] = _SourceMaxNorm()
METHOD_SPACES: Mapping[str, Space] = _MethodSpaces()
