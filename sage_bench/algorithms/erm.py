"""Empirical risk minimisation."""

from __future__ import annotations

import torch.nn.functional as F

from sage_bench.algorithms.base import Algorithm, Minibatches, concat
from sage_bench.algorithms.registry import register_algorithm


@register_algorithm("ERM")
class ERM(Algorithm):
    """Mean cross-entropy over the concatenated domain batches; one optimizer step."""

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        with self.autocast():
            loss = F.cross_entropy(self.predict(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}
