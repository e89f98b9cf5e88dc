"""Speed settings of a job on CUDA: bf16 autocast, TF32 matrix products, ``torch.compile``."""

from __future__ import annotations

import torch

from sage_bench.algorithms.base import Algorithm


def accelerate(
    algorithm: Algorithm, device: torch.device, autocast: str = "bf16", tf32: bool = True, compile: bool = False
) -> None:
    """Apply the job's speed settings.

    On CUDA, ``autocast="bf16"`` sets ``algorithm.autocast_dtype`` so the algorithm's forward
    passes (and evaluation) run in bf16 mixed precision, and ``tf32`` allows TF32 in matrix
    products and convolutions. On the CPU both are ignored, so CPU runs stay exact and
    reproducible. ``compile`` compiles the network in place (its parameters and state dict
    keep their names).
    """
    if device.type == "cuda":
        algorithm.autocast_dtype = torch.bfloat16 if autocast == "bf16" else None
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if compile:
        algorithm.network.compile()
