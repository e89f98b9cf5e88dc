"""Gradient alignment with the held-out domains during training (the paper's Figure 5).

With ``test_grad_cosine_freq = N > 0`` a job measures, every ``N`` steps and before that step's
update, the cosine between the mean of the training domains' gradients on the step's own
minibatches and the gradient on a batch from the test environments' in-splits. The measurement
never changes training:

- it runs in eval mode (no dropout draws, no BatchNorm statistics updated) and only reads the
  weights (``torch.autograd.grad``; nothing is written to ``.grad``, the optimizer is untouched);
- the test batches come from their own loader, seeded apart from the training loaders, in the
  main process;
- the global random generators (torch, NumPy, Python) are restored after it.

Each record then holds ``test_grad_cosine`` (the mean of the values measured since the previous
record) and ``test_grad_cosine_trace`` (every ``[step, cosine]`` pair since then).

The probe's state (how many test batches it drew, the pairs not yet recorded) goes into the
job's checkpoint (``state_dict``), so a resumed job records the same values as one never stopped.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from sage_bench.algorithms.base import Algorithm, Minibatches
from sage_bench.data.loaders import infinite_loader
from sage_bench.geometry import domain_gradients, mean_pairwise_cosine
from sage_bench.seeding import seed_hash


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """The global torch (all devices), NumPy and Python generators are as before after the block."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def held_out_gradient_cosine(algorithm: Algorithm, train_batches: Minibatches, test_batches: Minibatches) -> float:
    """Cosine between the mean training-domain gradient and the mean test-domain gradient.

    Each domain's gradient is that of its mean cross-entropy over its batch, w.r.t. the
    network's trainable parameters, in eval mode and the algorithm's precision.
    """
    network = algorithm.network
    params = [p for p in network.parameters() if p.requires_grad]
    was_training = algorithm.training
    algorithm.eval()
    try:
        with torch.enable_grad():
            grads = domain_gradients(network, params, [*train_batches, *test_batches], autocast=algorithm.autocast)
    finally:
        algorithm.train(was_training)
    n_train = len(train_batches)
    train_mean = _mean(grads.grads[:n_train])
    test_mean = _mean(grads.grads[n_train:])
    # with two "domains" the mean pairwise cosine is their cosine
    return float(mean_pairwise_cosine([train_mean, test_mean]))


def _mean(domains: Sequence[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack(tensors).float().mean(dim=0) for tensors in zip(*domains, strict=True)]


class HeldOutGradientProbe:
    """Measures ``held_out_gradient_cosine`` during a job and hands the values to its records."""

    def __init__(self, test_splits: Sequence[torch.utils.data.Dataset], batch_size: int, seed: int, device: torch.device):
        self.device = device
        self.test_splits = list(test_splits)
        self.batch_size = batch_size
        self.seed = seed
        self.position = 0  # test batches drawn so far: the loaders' state
        self.loaders = self._loaders()
        self.trace: list[list[float]] = []

    def _loaders(self) -> list[Iterator]:
        with preserved_random_state():  # starting a loader draws from the global generator
            return [
                infinite_loader(split, self.batch_size, seed=seed_hash(self.seed, "test_grad_cosine", i), start_step=self.position)
                for i, split in enumerate(self.test_splits)
            ]

    def state_dict(self) -> dict[str, object]:
        """What a checkpoint keeps: the loaders' position and the pairs not yet recorded."""
        return {"position": self.position, "trace": [list(pair) for pair in self.trace]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s state."""
        self.position = int(state["position"])
        self.trace = [[int(step), float(cosine)] for step, cosine in state["trace"]]
        self.loaders = self._loaders()

    def measure(self, step: int, algorithm: Algorithm, train_batches: Minibatches) -> float:
        """Measure at ``step`` (before its update); returns the seconds it took."""
        start = time.time()
        with preserved_random_state():
            test_batches = [(x.to(self.device), y.to(self.device)) for x, y in (next(it) for it in self.loaders)]
            self.position += 1
            self.trace.append([step, held_out_gradient_cosine(algorithm, train_batches, test_batches)])
        return time.time() - start

    def record(self) -> dict[str, object]:
        """The keys for the next record (none if nothing was measured since the last one)."""
        if not self.trace:
            return {}
        values = {"test_grad_cosine": float(np.mean([v for _, v in self.trace])), "test_grad_cosine_trace": self.trace}
        self.trace = []
        return values
