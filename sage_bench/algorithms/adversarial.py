"""Domain-adversarial training: DANN (Ganin et al., 2016) and CDANN (Li et al., 2018), as
DomainBed computes them (``AbstractDANN`` in ``domainbed/algorithms.py`` at commit b93c22a).

A discriminator (DomainBed's ``MLP``) predicts the training domain from the features (CDANN:
from the features plus a learned embedding of the class). Updates alternate:
``d_steps_per_g_step`` discriminator steps, then one step of the featurizer and head against
``CE(head(z), y) - lambda * discriminator loss``. The discriminator loss carries a gradient
penalty ``grad_penalty * mean ||d CE_sum / d input||^2``.

The algorithm trains with two optimizers of its own, as the source does: ``disc_opt`` over the
discriminator and the class embeddings (``lr_d``, ``weight_decay_d``) and ``gen_opt`` over the
network (``lr_g``, ``weight_decay_g``). Both are of the runner's optimizer's type and settings,
with betas ``(beta1, 0.9)`` where the type takes betas; with ``optimizer=adam`` (DomainBed's) they
are exactly the source's. The runner's optimizer, and its ``lr`` and ``weight_decay``, are not
used. Both optimizers' states and ``update_count`` are part of the ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import autograd, nn

from sage_bench.algorithms.base import FeatureAlgorithm, Minibatches, concat, like_network, required
from sage_bench.algorithms.registry import register_algorithm
from sage_bench.hparams import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY_BELOW_ONE,
    HParam,
    Range,
    SpaceContext,
    choice,
    const,
    log_uniform,
)


def dann_space(context: SpaceContext) -> dict[str, HParam]:
    """DomainBed's hyperparameters of DANN and CDANN. DomainBed tuned them for ResNet-50; no
    source gives values for a CLIP backbone."""
    small = context.family == "small"
    lr, lr_sample = (1e-3, log_uniform(-4.5, -2.5)) if small else (5e-5, log_uniform(-5, -3.5))  # as `lr`
    return {
        "lambda": HParam(1.0, log_uniform(-2, 2), "weight of the adversarial term in the generator loss", range=NON_NEGATIVE),
        "weight_decay_d": HParam(0.0, log_uniform(-6, -2), "weight decay of the discriminator", range=NON_NEGATIVE),
        "d_steps_per_g_step": HParam(
            1, lambda r: int(2 ** r.uniform(0, 3)), "discriminator steps per generator step", range=NON_NEGATIVE
        ),
        "grad_penalty": HParam(0.0, log_uniform(-2, 1), "weight of the discriminator's gradient penalty", range=NON_NEGATIVE),
        "beta1": HParam(0.5, choice([0.0, 0.5]), "Adam's beta1 of both optimizers (beta2 is 0.9)", range=PROBABILITY_BELOW_ONE),
        "mlp_width": HParam(256, lambda r: int(2 ** r.uniform(6, 10)), "discriminator width", range=AT_LEAST_ONE),
        "mlp_depth": HParam(3, lambda r: int(r.choice([3, 4, 5])), "discriminator layers", range=Range(2)),
        "mlp_dropout": HParam(0.0, choice([0.0, 0.1, 0.5]), "discriminator dropout", range=PROBABILITY_BELOW_ONE),
        "lr_g": HParam(lr, lr_sample, "learning rate of the featurizer and head", range=POSITIVE),
        "lr_d": HParam(lr, lr_sample, "learning rate of the discriminator", range=POSITIVE),
        "weight_decay_g": HParam(
            0.0, const(0.0) if small else log_uniform(-6, -2), "weight decay of the featurizer and head", range=NON_NEGATIVE
        ),
    }


class MLP(nn.Module):
    """DomainBed's ``MLP``: ``input``, ``mlp_depth - 2`` ``hiddens``, ``output``; dropout and
    ReLU after every layer but the last."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int, depth: int, dropout: float):
        super().__init__()
        self.input = nn.Linear(n_inputs, width)
        self.dropout = nn.Dropout(dropout)
        self.hiddens = nn.ModuleList([nn.Linear(width, width) for _ in range(depth - 2)])
        self.output = nn.Linear(width, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.dropout(self.input(x)))
        for hidden in self.hiddens:
            x = F.relu(self.dropout(hidden(x)))
        return self.output(x)


def optimizer_like(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], lr: float, weight_decay: float, beta1: float
) -> torch.optim.Optimizer:
    """An optimizer of ``optimizer``'s type and settings over ``params`` with ``lr``,
    ``weight_decay`` and, where the type takes them, betas ``(beta1, 0.9)``."""
    settings: dict[str, Any] = {**optimizer.defaults, "lr": lr, "weight_decay": weight_decay}
    if "betas" in settings:
        settings["betas"] = (beta1, 0.9)
    return type(optimizer)(params, **settings)


class AbstractDANN(FeatureAlgorithm):
    """DANN and CDANN; see the module docstring. Modules of its own: ``discriminator``
    (``input``, ``hiddens.N``, ``output``) and ``class_embeddings`` (``num_classes`` x features)."""

    conditional = False
    class_balance = False

    def __init__(self, network, optimizer, hparams, **kwargs: Any):
        super().__init__(network, optimizer, hparams, **kwargs)
        name = type(self).__name__
        num_domains = required(name, "num_domains", self.num_domains)
        num_classes = required(name, "num_classes", self.num_classes)
        h = self.hparams
        self.register_buffer("update_count", torch.tensor([0]))
        self.discriminator = like_network(
            MLP(self.n_features, num_domains, h["mlp_width"], h["mlp_depth"], h["mlp_dropout"]), network
        )
        self.class_embeddings = like_network(nn.Embedding(num_classes, self.n_features), network)
        own = [p for m in (self.discriminator, self.class_embeddings) for p in m.parameters()]
        trainable = [p for m in (self.featurizer, self.head) for p in m.parameters() if p.requires_grad]
        self.disc_opt = optimizer_like(optimizer, own, h["lr_d"], h["weight_decay_d"], h["beta1"])
        self.gen_opt = optimizer_like(optimizer, trainable, h["lr_g"], h["weight_decay_g"], h["beta1"])

    def get_extra_state(self) -> dict[str, Any]:
        return {"disc_opt": self.disc_opt.state_dict(), "gen_opt": self.gen_opt.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.disc_opt.load_state_dict(state["disc_opt"])
        self.gen_opt.load_state_dict(state["gen_opt"])

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        h = self.hparams
        self.update_count += 1
        all_x, all_y = concat(minibatches)
        with self.autocast():
            all_z = self.featurizer(all_x)
            disc_input = all_z + self.class_embeddings(all_y) if self.conditional else all_z
            disc_out = self.discriminator(disc_input)
        disc_labels = torch.cat(
            [torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device) for i, (x, _) in enumerate(minibatches)]
        )
        if self.class_balance:
            y_counts = F.one_hot(all_y).sum(dim=0)  # as many columns as the largest label + 1
            weights = 1.0 / (y_counts[all_y] * y_counts.shape[0]).float()
            disc_loss = (weights * F.cross_entropy(disc_out, disc_labels, reduction="none")).sum()
        else:
            disc_loss = F.cross_entropy(disc_out, disc_labels)
        input_grad = autograd.grad(
            F.cross_entropy(disc_out, disc_labels, reduction="sum"), [disc_input], create_graph=True
        )[0]
        grad_penalty = (input_grad**2).sum(dim=1).mean(dim=0)
        disc_loss += h["grad_penalty"] * grad_penalty

        d_steps_per_g = h["d_steps_per_g_step"]
        if self.update_count.item() % (1 + d_steps_per_g) < d_steps_per_g:
            self.disc_opt.zero_grad()
            disc_loss.backward()
            self.disc_opt.step()
            return {"disc_loss": disc_loss.item()}
        with self.autocast():
            classifier_loss = F.cross_entropy(self.head(all_z), all_y)
        gen_loss = classifier_loss + h["lambda"] * -disc_loss
        self.disc_opt.zero_grad()
        self.gen_opt.zero_grad()
        gen_loss.backward()
        self.gen_opt.step()
        return {"gen_loss": gen_loss.item()}


@register_algorithm("DANN", space=dann_space)
class DANN(AbstractDANN):
    """Domain-adversarial neural networks: the discriminator sees the features."""


@register_algorithm("CDANN", space=dann_space)
class CDANN(AbstractDANN):
    """Conditional DANN: the discriminator sees features + class embedding, and its loss is
    class-balanced: weights ``1 / (count[y] * n_columns)`` with one column per label up to the
    largest in the batch, cast to float32 by ``.float()`` as in the source (a float64 run keeps
    that rounding, as there)."""

    conditional = True
    class_balance = True
