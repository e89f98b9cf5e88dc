"""Backbones (featurizers) and heads by name: ``build_network`` makes the classifier of a job."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from sage_bench.errors import UserError
from sage_bench.models.digits_cnn import DigitsCNN
from sage_bench.models.network import Classifier


def _digits_cnn(input_shape: Sequence[int], hparams: dict, channels: Sequence[int] = (16, 32, 32, 32)) -> nn.Module:
    return DigitsCNN(in_channels=input_shape[0], channels=tuple(channels))


# name -> factory(input_shape, hparams, **options) returning a featurizer with ``n_outputs``
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "digits_cnn": _digits_cnn,
}

HEADS = ("linear",)


class UnknownBackboneError(UserError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def build_featurizer(name: str, input_shape: Sequence[int], hparams: dict, **options: Any) -> nn.Module:
    """The featurizer registered under ``name``."""
    if name not in BACKBONES:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; valid choices: {', '.join(sorted(BACKBONES))}"
        )
    return BACKBONES[name](input_shape, hparams, **options)


def build_network(
    backbone: str,
    input_shape: Sequence[int],
    num_classes: int,
    hparams: dict | None = None,
    head: str = "linear",
    **options: Any,
) -> Classifier:
    """A ``Classifier``: the named backbone and a head with ``num_classes`` outputs."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid choices: {', '.join(HEADS)}")
    featurizer = build_featurizer(backbone, input_shape, hparams or {}, **options)
    return Classifier(featurizer, nn.Linear(featurizer.n_outputs, num_classes))


__all__ = ["BACKBONES", "Classifier", "DigitsCNN", "build_featurizer", "build_network"]
