"""Per-domain gradients, the clean loss and the total gradient, from one pass worth of work.

``domain_gradients`` returns, for minibatches ``[(x_1, y_1), ..., (x_K, y_K)]``, each domain's
mean loss ``L_k`` and gradient ``g_k``, and the sample-weighted total ``g = sum_k (n_k / n) g_k``,
which is the gradient of the mean loss over the concatenated batch. Three ways, same numbers:

- ``"chunks"`` (default, fastest here): one forward+backward per domain over that domain's own
  examples. Together these do the arithmetic of one forward+backward over the whole batch, and
  the clean loss and total gradient come from the same passes, so nothing is computed twice.
- ``"concat"`` (the reference; Algorithm 1 as written): one forward over the concatenated batch,
  then one backward per domain loss through it. K backward passes over the whole graph.
- ``"vmap"``: ``torch.func.vmap`` of ``torch.func.grad`` over the stacked domain batches (needs
  equal domain batch sizes and a network without buffers mutated in forward).

With BatchNorm in training mode the methods differ: a chunk pass normalises each domain by its
own statistics, a concatenated pass by the whole batch's. LayerNorm, GroupNorm and BatchNorm in
eval mode (e.g. DomainBed's frozen-BN ResNet) are per example, so there all three agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]

DOMAIN_GRAD_METHODS = ("chunks", "concat", "vmap")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DomainGradients:
    """Per-domain losses and gradients and their sample-weighted totals."""

    losses: torch.Tensor  # (K,) mean loss of each domain, detached
    weights: torch.Tensor  # (K,) n_k / n
    grads: list[list[torch.Tensor]]  # grads[k][j]: gradient of L_k w.r.t. params[j] (0 if unused)
    total: list[torch.Tensor]  # sum_k weights[k] * grads[k][j]
    used: list[bool]  # whether any domain's loss depends on params[j]

    @property
    def loss(self) -> torch.Tensor:
        """The clean loss: mean loss over the concatenated batch."""
        return (self.weights * self.losses).sum()


def _weights(minibatches: Minibatches, device: torch.device) -> torch.Tensor:
    sizes = torch.tensor([len(y) for _, y in minibatches], dtype=torch.float32, device=device)
    return sizes / sizes.sum()


def _weighted_sum(grads: list[list[torch.Tensor]], weights: Sequence[float]) -> list[torch.Tensor]:
    total = torch._foreach_mul(grads[0], weights[0])
    for k in range(1, len(grads)):
        torch._foreach_add_(total, grads[k], alpha=weights[k])
    return total


def _chunks(network, params, minibatches, loss_fn, autocast):
    losses, grads = [], []
    for x, y in minibatches:
        with autocast():
            loss = loss_fn(network(x), y)
        grads.append(list(torch.autograd.grad(loss, params, allow_unused=True)))
        losses.append(loss.detach().float())
    return torch.stack(losses), grads


def grads_of_losses(
    losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor], retain_graph: bool = False
) -> list[list[torch.Tensor | None]]:
    """The gradient of each loss w.r.t. ``params``: one backward pass per loss through the graph
    they share (one forward, ``K`` backwards). ``grads[k][j]`` is ``d losses[k] / d params[j]``,
    ``None`` where ``losses[k]`` does not depend on ``params[j]``. The graph is freed after the
    last loss unless ``retain_graph``."""
    params = list(params)
    grads = []
    for k, loss in enumerate(losses):
        keep = retain_graph or k < len(losses) - 1
        grads.append(list(torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)))
    return grads


def _concat(network, params, minibatches, loss_fn, autocast):
    x = torch.cat([x for x, _ in minibatches])
    with autocast():
        logits = network(x)
    losses, start = [], 0
    for _, y in minibatches:
        with autocast():
            losses.append(loss_fn(logits[start : start + len(y)], y))
        start += len(y)
    grads = grads_of_losses(losses, params)
    return torch.stack([loss.detach().float() for loss in losses]), grads


def _vmap(network, params, minibatches, loss_fn, autocast):
    from torch.func import functional_call, grad_and_value, vmap

    sizes = {len(y) for _, y in minibatches}
    if len(sizes) != 1:
        raise ValueError("the vmap method needs equal domain batch sizes")
    names = [name for name, p in network.named_parameters() if p.requires_grad]
    if len(names) != len(params):
        raise ValueError("the vmap method differentiates all trainable parameters of the network")
    frozen = {n: p for n, p in network.named_parameters() if not p.requires_grad}
    buffers = dict(network.named_buffers())

    def domain_loss(trainable, x, y):
        with autocast():
            logits = functional_call(network, {**trainable, **frozen, **buffers}, (x,))
            return loss_fn(logits, y)

    xs = torch.stack([x for x, _ in minibatches])
    ys = torch.stack([y for _, y in minibatches])
    detached = {n: p.detach() for n, p in zip(names, params, strict=True)}
    grad_dicts, losses = vmap(grad_and_value(domain_loss), in_dims=(None, 0, 0))(detached, xs, ys)
    grads = [[grad_dicts[n][k] for n in names] for k in range(len(minibatches))]
    return losses.detach().float(), grads


_METHODS = {"chunks": _chunks, "concat": _concat, "vmap": _vmap}


def domain_gradients(
    network: nn.Module,
    params: Sequence[torch.Tensor],
    minibatches: Minibatches,
    loss_fn: LossFn = nn.functional.cross_entropy,
    method: str = "chunks",
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> DomainGradients:
    """Each domain's mean loss and gradient w.r.t. ``params``, and their weighted totals.

    ``loss_fn(logits, y)`` must be a mean over examples. ``autocast`` is a context-manager
    factory for the forward passes (default: none).
    """
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; valid choices: {', '.join(DOMAIN_GRAD_METHODS)}")
    if not minibatches:
        raise ValueError("need at least one domain")
    autocast = autocast or contextlib.nullcontext
    params = list(params)
    losses, grads = _METHODS[method](network, params, minibatches, loss_fn, autocast)
    used = [any(g[j] is not None for g in grads) for j in range(len(params))]
    grads = [
        [torch.zeros_like(p) if g is None else g for p, g in zip(params, domain, strict=True)] for domain in grads
    ]
    weights = _weights(minibatches, losses.device)
    total = _weighted_sum(grads, weights.tolist())
    return DomainGradients(losses=losses, weights=weights, grads=grads, total=total, used=used)


def mean_pairwise_cosine(grads: list[list[torch.Tensor]], eps: float = 1e-12) -> torch.Tensor:
    """``S = 2 / (K (K - 1)) sum_{i<j} cos(g_i, g_j)`` of the flattened per-domain gradients.

    With one domain there is no pair; ``S = 1`` (full agreement, so SAGE adds no noise).
    A zero gradient has cosine 0 with everything.
    """
    k = len(grads)
    if k < 2:
        return torch.ones((), device=grads[0][0].device if grads and grads[0] else None)
    # Gram matrix of the flattened gradients without materialising them: <g_i, g_j> summed per tensor
    gram = torch.zeros(k, k, dtype=torch.float64, device=grads[0][0].device)
    for j in range(len(grads[0])):
        block = torch.stack([g[j].reshape(-1).float() for g in grads])
        gram += (block @ block.T).double()
    norms = gram.diagonal().sqrt()
    cos = gram / (norms[:, None] * norms[None, :]).clamp_min(eps)
    i, j = torch.triu_indices(k, k, offset=1)
    return cos[i, j].mean().float()
