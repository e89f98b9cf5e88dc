"""The interface every algorithm implements (DomainBed's ``Algorithm`` shape)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from sage_bench.errors import UserError

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]


class Algorithm(nn.Module):
    """Trains a classifier one step at a time from one minibatch per training domain.

    An algorithm wraps any ``nn.Module`` that maps inputs to logits and any torch optimizer
    over its parameters; it owns neither. ``update`` does one training step and returns floats
    to log; ``predict`` gives logits. The algorithm's ``state_dict`` holds the network's
    weights and any state of its own (e.g. a noise generator); the optimizer's state is saved
    separately by whoever made it.

    Forward passes inside ``update`` go through ``self.autocast()``, so setting
    ``autocast_dtype`` (the runner sets it from ``precision.train``, see
    ``sage_bench.precision``) runs them in mixed precision; the default ``None`` runs in the
    parameters' own precision. Evaluation uses ``eval_autocast()`` and ``eval_autocast_dtype``
    (``precision.eval``) the same way.

    ``num_domains`` (training domains, i.e. minibatches per update) and ``num_classes`` are
    known to the runner and passed to every algorithm; those that build modules of their own
    from them (DANN's discriminator, IIB's environment classifier) refuse ``None``. A subclass
    that overrides ``__init__`` takes them as keywords and passes them on.
    """

    autocast_dtype: torch.dtype | None = None
    eval_autocast_dtype: torch.dtype | None = None
    # True for algorithms that take a gradient at perturbed weights (the SAM family, SAGE):
    # their perturbation must survive the precision the forward pass computes in
    perturbs_weights: ClassVar[bool] = False
    # set by the runner before the steps whose statistics go into a record: algorithms that
    # perturb weights then also measure ``perturbation_fidelity`` (once, not on every step)
    measure_fidelity: bool = False

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        hparams: Mapping[str, Any],
        *,
        num_domains: int | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.network = network
        self.optimizer = optimizer
        self.hparams = dict(hparams)
        self.num_domains = num_domains
        self.num_classes = num_classes

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for training forward passes when ``autocast_dtype`` is set, else nothing."""
        return self._autocast(self.autocast_dtype)

    def eval_autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for evaluation when ``eval_autocast_dtype`` is set, else nothing."""
        return self._autocast(self.eval_autocast_dtype)

    def _autocast(self, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        device_type = next(self.network.parameters()).device.type
        return torch.autocast(device_type=device_type, dtype=dtype)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        """One training step on ``[(x_1, y_1), ..., (x_K, y_K)]``, one pair per training domain."""
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x``."""
        return self.network(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)


def concat(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    """All domains' inputs and labels as one batch, domain after domain."""
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])


class NetworkError(UserError, TypeError):
    """A network or setting an algorithm cannot work with; the message says what it needs."""


def featurizer_and_head(algorithm: str, network: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """``network.featurizer``, ``network.head`` and the featurizer's output size
    (``featurizer.n_outputs``), or an error saying what ``algorithm`` needs."""
    featurizer = getattr(network, "featurizer", None)
    head = getattr(network, "head", None)
    n_outputs = getattr(featurizer, "n_outputs", None)
    if not isinstance(featurizer, nn.Module) or not isinstance(head, nn.Module) or not isinstance(n_outputs, int):
        raise NetworkError(
            f"{algorithm} needs the network's featurizer and head separately: a network with "
            "submodules `featurizer` (with an int attribute `n_outputs`, its output size) and "
            "`head`, computing head(featurizer(x)), such as "
            f"sage_bench.models.Classifier(featurizer, head); got a {type(network).__name__}"
        )
    return featurizer, head, n_outputs


def required(algorithm: str, name: str, value: int | None) -> int:
    """``value``, or an error saying that ``algorithm`` needs ``name`` passed to
    ``build_algorithm``."""
    if value is None or value < 1:
        raise NetworkError(
            f"{algorithm} needs {name}: pass build_algorithm(..., {name}=N) (got {value!r})"
        )
    return value


def like_network(module: nn.Module, network: nn.Module) -> nn.Module:
    """``module`` moved to the device and floating-point type of ``network``'s parameters."""
    reference = next((p for p in network.parameters() if p.is_floating_point()), None)
    if reference is None:
        return module
    return module.to(device=reference.device, dtype=reference.dtype)


class FeatureAlgorithm(Algorithm):
    """An algorithm that uses the network's featurizer and head separately (``self.featurizer``,
    ``self.head``, ``self.n_features``); a network without them is refused when it is built."""

    def __init__(self, network: nn.Module, optimizer: torch.optim.Optimizer, hparams: Mapping[str, Any], **kwargs: Any):
        super().__init__(network, optimizer, hparams, **kwargs)
        _, _, self.n_features = featurizer_and_head(type(self).__name__, network)

    @property
    def featurizer(self) -> nn.Module:
        return self.network.featurizer

    @property
    def head(self) -> nn.Module:
        return self.network.head
