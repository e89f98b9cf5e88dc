"""The backbone registry: each backbone is registered once, where its builder is defined, with
the function that says what its inputs look like (timm's ``@register_model`` shape)::

    @register_backbone("resnet50", preprocess=imagenet_preprocess)
    def build_resnet50(input_shape, hparams, pretrained=True, weights=None): ...

A domain-generalization backbone (``task=DOMAIN_GENERALIZATION``, the default) is a featurizer
factory ``build(input_shape, hparams, **options) -> nn.Module`` with ``n_outputs``; its options
are the keys of ``configs/backbone/<name>.yaml`` (without that file: the factory's keywords
at their defaults) and are checked against the factory's signature. ``preprocess(**options) -> Preprocess`` gives the input size and normalisation the
data transforms (and ``sage-bench data cache``) must use, without building the model; backbones
of non-image inputs (the embedded digits) have none. A multi-task backbone
(``task=MULTI_TASK``) builds the whole per-task network from the data set's tasks
(``build(tasks, **options)``, e.g. ``sage_bench.models.mtan.mtan``); its inputs are the data
set's, so it has no preprocessing of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sage_bench.data.transforms import Preprocess
from sage_bench.errors import UserError
from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK, TASKS

Builder = Callable[..., Any]
PreprocessFn = Callable[..., Preprocess]


@dataclass(frozen=True)
class Backbone:
    """One registered backbone: its name, builder, preprocessing (``None``: no image inputs of
    its own) and the kind of job it serves."""

    name: str
    build: Builder
    preprocess: PreprocessFn | None = None
    task: str = DOMAIN_GENERALIZATION


_REGISTRY: dict[str, Backbone] = {}


class UnknownBackboneError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_backbone(
    name: str, *, preprocess: PreprocessFn | None = None, task: str = DOMAIN_GENERALIZATION
) -> Callable[[Builder], Builder]:
    """Decorator: register the builder it decorates as backbone ``name`` with its
    ``preprocess`` for jobs of kind ``task``. One builder may be registered under several
    names (stack the decorators)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")

    def register(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = Backbone(name, build, preprocess, task)
        return build

    return register


def backbones(task: str | None = None) -> dict[str, Backbone]:
    """Every registered backbone (for one ``task`` kind, or all), by name, in registration order."""
    return {n: b for n, b in _REGISTRY.items() if task is None or b.task == task}


def get_backbone(name: str, task: str = DOMAIN_GENERALIZATION) -> Backbone:
    """The backbone ``name`` registered for ``task``, or an error listing the valid names."""
    registered = backbones(task)
    if name not in registered:
        raise UnknownBackboneError(f"unknown backbone {name!r}; valid choices: {', '.join(sorted(registered))}")
    return registered[name]


class _View(Mapping[str, Any]):
    """A read-only ``name -> attribute`` view of the domain-generalization backbones that have it."""

    def __init__(self, attribute: str):
        self.attribute = attribute

    def _items(self) -> dict[str, Any]:
        return {
            n: getattr(b, self.attribute)
            for n, b in backbones(DOMAIN_GENERALIZATION).items()
            if getattr(b, self.attribute) is not None
        }

    def __getitem__(self, name: str) -> Any:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


BACKBONES: Mapping[str, Builder] = _View("build")
"""Featurizer factory of every domain-generalization backbone by name (a live view)."""

PREPROCESSING: Mapping[str, PreprocessFn] = _View("preprocess")
"""``preprocess(**options)`` of every image backbone by name (a live view)."""


def multitask_backbones() -> tuple[str, ...]:
    """The names of the multi-task backbones (the networks of the multi-task data sets)."""
    return tuple(backbones(MULTI_TASK))
