"""Backbones (featurizers) and heads by name: ``build_network`` makes the classifier of a job.

Each backbone has a factory ``factory(input_shape, hparams, **options)`` returning a featurizer
with ``n_outputs``, and, for image backbones, a function ``preprocess(**options)`` that gives the
input size and normalisation the data transforms must use without building the model
(``backbone_preprocess``). Options are the keys of ``configs/backbone/<name>.yaml``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from sage_bench.data.transforms import Preprocess
from sage_bench.errors import ConfigError, UserError
from sage_bench.models.clip import CLIPImageEncoder, ZeroShotHead, build_clip, clip_preprocess
from sage_bench.models.digits_cnn import DigitsCNN
from sage_bench.models.network import Classifier
from sage_bench.models.resnet import (
    build_resnet50,
    build_timm,
    imagenet_preprocess,
    timm_preprocess,
)
from sage_bench.models.weights import WeightsNotFoundError


def _digits_cnn(input_shape: Sequence[int], hparams: dict, channels: Sequence[int] = (16, 32, 32, 32)) -> nn.Module:
    return DigitsCNN(in_channels=input_shape[0], channels=tuple(channels))


# name -> factory(input_shape, hparams, **options) returning a featurizer with ``n_outputs``
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": _digits_cnn,
    "clip_vit_b16": build_clip,  # the paper's backbone: open_clip ViT-B-16, OpenAI weights
    "clip": build_clip,  # any open_clip model and weights
    "clip_tiny": build_clip,  # a small random-init CLIP for tests and smoke runs
    "resnet50": build_resnet50,  # DomainBed's ResNet-50 (ImageNet, frozen BatchNorm)
    "timm": build_timm,  # any timm model by name
}

# name -> preprocess(**options): what the backbone's inputs look like (image backbones only)
PREPROCESSING: dict[str, Callable[..., Preprocess]] = {
    "clip_vit_b16": clip_preprocess,
    "clip": clip_preprocess,
    "clip_tiny": clip_preprocess,
    "resnet50": imagenet_preprocess,
    "timm": timm_preprocess,
}

HEADS = ("linear", "zero_shot")


class UnknownBackboneError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in BACKBONES:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; valid choices: {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[name]


def check_backbone_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` for an option the backbone does not take or an unknown head."""
    params = list(inspect.signature(_factory(name)).parameters)[2:]  # after input_shape, hparams
    valid = sorted({*params, "head"})
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
    _factory(name)
    if name not in PREPROCESSING:
        return None
    options = {k: v for k, v in (options or {}).items() if k != "head"}
    return PREPROCESSING[name](**options)


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
    "PREPROCESSING",
    "CLIPImageEncoder",
    "Classifier",
    "DigitsCNN",
    "WeightsNotFoundError",
    "ZeroShotHead",
    "backbone_preprocess",
    "build_featurizer",
    "build_network",
    "check_backbone_options",
]
