"""IIB: Invariant Information Bottleneck (Li et al., 2022), as its authors' DomainBed fork
computes it (``Luodian/IIB`` at commit a7457e5, branch ``IIB``, class ``IIB`` in
``domainbed/algorithms.py``).

The features ``f`` go through a variational encoder: ``encoder`` (Linear-BN-ReLU-Linear-BN-ReLU;
without the BatchNorms when ``enable_bn`` is false), then ``fc3_mu`` and ``fc3_logvar``;
``z = mu + exp(logvar / 2) * eps`` with ``eps = randn_like`` (torch's global generator) in
training mode, ``z = mu`` in eval mode. The network's ``head`` predicts from ``z`` (the source's
``inv_classifier``); ``env_classifier`` predicts from ``[z, domain index]``. The loss is
``inv + env + lambda_beta * ib + lambda_inv_risks * (inv - env)^2`` with
``ib = -1/2 sum(1 + logvar - mu^2 - exp(logvar))`` (a sum over the batch, not a mean).

Readings taken here:

- The source trains one Adam over the featurizer, both classifiers, the encoder, ``fc3_mu`` and
  ``fc3_logvar``; here the runner's optimizer gets the algorithm's own modules as a second
  parameter group with the first group's settings (for Adam the same numbers). The source's
  ERM ``classifier``, built but never used, is left out.
- The domain-index column is built from each minibatch's size; the source builds it from
  ``hparams['batch_size']``, which is the same when every domain gives a full batch (and fails
  otherwise).
- ``predict`` samples ``z`` in training mode, as the source does; evaluation runs in eval mode
  and uses ``mu``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sage_bench.algorithms.base import FeatureAlgorithm, Minibatches, concat, like_network, required
from sage_bench.algorithms.registry import register_algorithm
from sage_bench.hparams import NON_NEGATIVE, HParam, SpaceContext, const


def iib_space(context: SpaceContext) -> dict[str, HParam]:
    """The IIB fork's hyperparameters (``domainbed/hparams_registry.py``), tuned there for
    ResNet-50; no source gives values for a CLIP backbone. ``lambda_beta`` is drawn as the
    source draws it, ``1e-3 ** U(-2, 2)``, i.e. log-uniformly between 1e-6 and 1e6."""
    return {
        "lambda_beta": HParam(
            1e-4, lambda r: 1e-3 ** r.uniform(-2, 2), "weight of the information bottleneck", range=NON_NEGATIVE
        ),
        "lambda_inv_risks": HParam(
            10, lambda r: int(10 ** r.uniform(0, 2)), "weight of (inv - env)^2", range=NON_NEGATIVE
        ),
        "enable_bn": HParam(True, const(True), "BatchNorm layers in the encoder"),
    }


@register_algorithm("IIB", space=iib_space)
class IIB(FeatureAlgorithm):
    """See the module docstring. Modules of its own: ``encoder``, ``fc3_mu``, ``fc3_logvar``,
    ``env_classifier``; the predicting classifier is ``network.head``."""

    def __init__(self, network, optimizer, hparams, **kwargs: Any):
        super().__init__(network, optimizer, hparams, **kwargs)
        num_classes = required("IIB", "num_classes", self.num_classes)
        d = self.n_features
        if self.hparams["enable_bn"]:
            encoder = nn.Sequential(
                nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
                nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
            )  # fmt: skip
        else:
            encoder = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d), nn.ReLU(inplace=True))
        self.encoder = like_network(encoder, network)
        self.fc3_mu = like_network(nn.Linear(d, d), network)
        self.fc3_logvar = like_network(nn.Linear(d, d), network)
        self.env_classifier = like_network(nn.Linear(d + 1, num_classes), network)
        own = [self.env_classifier, self.encoder, self.fc3_mu, self.fc3_logvar]  # the source's order
        settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.add_param_group({**settings, "params": [p for m in own for p in m.parameters()]})

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.encoder(features)
        return self.fc3_mu(latent), self.fc3_logvar(latent)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if self.training:
            std = torch.exp(logvar / 2)
            eps = torch.randn_like(std)
            return torch.add(torch.mul(std, eps), mu)
        return mu

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(self.featurizer(x))
        return self.head(self.reparameterize(mu, logvar))

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        h = self.hparams
        all_x, all_y = concat(minibatches)
        with self.autocast():
            mu, logvar = self.encode(self.featurizer(all_x))
            all_z = self.reparameterize(mu, logvar)
            domains = torch.cat(
                [torch.full((len(y), 1), k, dtype=all_z.dtype, device=all_z.device) for k, (_, y) in enumerate(minibatches)]
            )
            ib_loss = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            inv_loss = F.cross_entropy(self.head(all_z), all_y)
            env_loss = F.cross_entropy(self.env_classifier(torch.cat([all_z, domains], 1)), all_y)
        total = inv_loss + env_loss + h["lambda_beta"] * ib_loss + h["lambda_inv_risks"] * (inv_loss - env_loss) ** 2
        self.optimizer.zero_grad()
        total.backward()
        self.optimizer.step()
        return {
            "loss_ib": ib_loss.item(),
            "loss_env": env_loss.item(),
            "loss_inv": inv_loss.item(),
            "loss_all": total.item(),
        }
