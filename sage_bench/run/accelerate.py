"""Numerical and speed settings of a job: autocast, TF32 matrix products, ``torch.compile``."""

from __future__ import annotations

import torch

from sage_bench.algorithms.base import Algorithm
from sage_bench.algorithms.perturbation import AUTO_CANDIDATES, PerturbedGradient
from sage_bench.precision import Precision


def accelerate(algorithm: Algorithm, device: torch.device, precision: Precision, compile: bool = False) -> None:
    """Apply a job's resolved ``precision`` (``JobSpec.resolved_precision``) and ``compile``.

    Sets the algorithm's training and evaluation autocast dtypes (on any device: CPU bf16
    autocast is what ``precision.*=bf16`` asks for there), the candidates of
    ``perturbation=auto`` where the training precision follows its choice, and, for algorithms with a
    Newton-Schulz iteration, its ``polar_dtype``; on CUDA, switches TF32 matrix products and
    convolutions on or off. ``compile`` compiles the network in place (its parameters and state
    dict keep their names).
    """
    algorithm.autocast_dtype = precision.train
    algorithm.eval_autocast_dtype = precision.eval
    if isinstance(algorithm, PerturbedGradient):
        # with precision.train=auto, perturbation=auto picks the training precision too (CUDA)
        candidates = AUTO_CANDIDATES if precision.train_follows_perturbation else None
        algorithm.configure_perturbation(algorithm.perturbation, algorithm.perturbation_tolerance, candidates)
    if hasattr(algorithm, "polar_dtype"):
        algorithm.polar_dtype = precision.polar
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision.tf32
        torch.backends.cudnn.allow_tf32 = precision.tf32
    if compile:
        algorithm.network.compile()
