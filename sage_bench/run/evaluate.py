"""Accuracy of an algorithm on a loader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from sage_bench.algorithms.base import Algorithm


@torch.no_grad()
def accuracy(algorithm: Algorithm, loader: DataLoader, device: torch.device) -> float:
    """Fraction of examples whose arg-max logit is the label, in eval mode (train mode restored),
    with the algorithm's evaluation precision (``algorithm.eval_autocast()``)."""
    was_training = algorithm.training
    algorithm.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with algorithm.eval_autocast():
                logits = algorithm.predict(x)
            # counted on the device, read once per split: the CPU reads (and checks) the next
            # batch while the GPU computes this one
            correct += (logits.argmax(dim=1) == y).sum()
            total += len(y)
    finally:
        algorithm.train(was_training)
    if total == 0:
        raise ValueError("cannot compute an accuracy on an empty split")
    return int(correct.item()) / total
