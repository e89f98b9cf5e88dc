"""Backbones (featurizers) and heads by name: ``build_network`` makes the classifier of a job.

Each backbone registers itself where its builder is defined, with its preprocessing beside it
(``@register_backbone(name, preprocess=...)``, ``sage_bench.models.registry``): a
domain-generalization backbone is a factory ``factory(input_shape, hparams, **options)``
returning a featurizer with ``n_outputs`` and, for image backbones, a function
``preprocess(**options)`` that gives the input size and normalisation the data transforms must
use without building the model (``backbone_preprocess``); a multi-task backbone builds the
per-task network (``mtan``). Options are the keys of ``configs/backbone/<name>.yaml``, or, for a
backbone without that file, its builder's keywords at their defaults. Adding a backbone is its
module (plus its line in the import list below, or loaded as a plugin).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from sage_bench.data.transforms import Preprocess
from sage_bench.errors import ConfigError

# The backbones register themselves on import (one module each).
from sage_bench.models import clip, digits_cnn, mtan, resnet  # noqa: F401
from sage_bench.models.clip import CLIPImageEncoder, ZeroShotHead
from sage_bench.models.digits_cnn import DigitsCNN
from sage_bench.models.network import Classifier
from sage_bench.models.registry import (
    BACKBONES,
    PREPROCESSING,
    Backbone,
    UnknownBackboneError,
    backbones,
    get_backbone,
    multitask_backbones,
    register_backbone,
)
from sage_bench.models.weights import WeightsNotFoundError

MULTITASK_BACKBONES: tuple[str, ...] = multitask_backbones()
"""The backbones of the multi-task data sets (registered with ``task=MULTI_TASK``)."""

HEADS = ("linear", "zero_shot")


def _factory(name: str):
    return get_backbone(name).build


def _option_parameters(name: str) -> list[inspect.Parameter]:
    """The options of backbone ``name``: its builder's parameters after input_shape, hparams."""
    return list(inspect.signature(_factory(name)).parameters.values())[2:]


def backbone_option_defaults(name: str) -> dict[str, Any]:
    """The options of backbone ``name`` that have a default, at that default (what the
    ``backbone`` config group gives a backbone without a YAML file of its own)."""
    defaults = {}
    for param in _option_parameters(name):
        if param.default is not inspect.Parameter.empty:
            value = param.default
            defaults[param.name] = list(value) if isinstance(value, tuple) else value
    return defaults


def check_backbone_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` for an option the backbone does not take or an unknown head."""
    valid = sorted({*(p.name for p in _option_parameters(name)), "head"})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(f'backbone.{k}' for k in unknown)} for backbone {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    head = options.get("head", "linear")
    if head not in HEADS:
        raise ConfigError(f"bad value for 'backbone.head': {head!r}; valid choices: {', '.join(HEADS)}")


def backbone_preprocess(name: str, options: Mapping[str, Any] | None = None) -> Preprocess | None:
    """The input size and normalisation of backbone ``name`` with ``options``, without building
    it; ``None`` for backbones of non-image inputs (the embedded digits)."""
    preprocess = get_backbone(name).preprocess
    if preprocess is None:
        return None
    options = {k: v for k, v in (options or {}).items() if k != "head"}
    return preprocess(**options)


def build_featurizer(name: str, input_shape: Sequence[int], hparams: dict, **options: Any) -> nn.Module:
    """The featurizer registered under ``name``."""
    return _factory(name)(input_shape, hparams, **options)


def build_network(
    backbone: str,
    input_shape: Sequence[int],
    num_classes: int,
    hparams: dict | None = None,
    head: str = "linear",
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Classifier:
    """A ``Classifier``: the named backbone and a head with ``num_classes`` outputs.

    ``head="linear"``: a linear layer on the features; ``head="zero_shot"`` (CLIP backbones):
    initialised from the text embeddings of ``class_names`` (see ``sage_bench.models.clip``).
    """
    check_backbone_options(backbone, {**options, "head": head})
    featurizer = build_featurizer(backbone, input_shape, hparams or {}, **options)
    if head == "zero_shot":
        if not isinstance(featurizer, CLIPImageEncoder):
            raise ConfigError(f"backbone.head=zero_shot needs a CLIP backbone; {backbone!r} has no text tower")
        if class_names is None or len(class_names) != num_classes:
            raise ValueError(f"the zero_shot head needs {num_classes} class names, got {class_names!r}")
        classifier_head: nn.Module = featurizer.zero_shot_head(class_names)
    else:
        classifier_head = nn.Linear(featurizer.n_outputs, num_classes)
    if isinstance(featurizer, CLIPImageEncoder):
        featurizer.release_text_encoder()
    return Classifier(featurizer, classifier_head)


__all__ = [
    "BACKBONES",
    "HEADS",
    "MULTITASK_BACKBONES",
    "PREPROCESSING",
    "Backbone",
    "UnknownBackboneError",
    "backbones",
    "get_backbone",
    "register_backbone",
    "CLIPImageEncoder",
    "Classifier",
    "DigitsCNN",
    "WeightsNotFoundError",
    "ZeroShotHead",
    "backbone_preprocess",
    "build_featurizer",
    "build_network",
    "backbone_option_defaults",
    "check_backbone_options",
]
