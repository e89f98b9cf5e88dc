"""The numerical precision a job computes in: what ``precision.*`` and ``tf32`` resolve to.

Algorithms of the SAM family and SAGE take a gradient at perturbed weights ``w + e``. The
perturbation is tiny next to the weights (SAGE at the paper's ``rho = 1e-6``: about ``5e-7``
per element of a ViT-B/16 weight of size ``2e-2``), so it survives only if the forward pass
multiplies with ``w + e`` in float32. Under bf16 autocast the pass multiplies with
``bf16(w + e)``, which for most elements is ``bf16(w)``: the network sees another perturbation
than the one intended (cosine 0.08 for SAGE at ``rho = 1e-6``); TF32 matrix products round the
operands to 10 mantissa bits and lose most of it as well. Hence the defaults:

- ``precision.train``: ``auto`` runs algorithms that perturb weights
  (``Algorithm.perturbs_weights``) in float32 with TF32 off and the others (ERM) in bf16
  autocast, on CUDA; on the CPU everything runs in float32. ``fp32`` and ``bf16`` are applied
  as given, on the CPU too (CPU bf16 autocast), which makes the GPU's rounding testable here.
- ``precision.eval``: evaluation perturbs nothing: ``auto`` is bf16 autocast on CUDA and
  float32 on the CPU; ``fp32`` and ``bf16`` apply on any device.
- ``precision.polar``: the Newton-Schulz iteration of SAGE's perturbation only needs a
  direction and may run in bf16 (``auto``: bf16 on CUDA, float32 on the CPU); the perturbation
  it gives is added to the weights in float32 whatever this setting.
- ``tf32``: TF32 matrix products and convolutions on CUDA; ``auto`` is off for algorithms that
  perturb weights and on for the others; ``true``/``false`` as given (no effect on the CPU).

A kind of job may resolve ``auto`` to float32 whatever the algorithm (``float32_auto``, declared
by the kind in ``sage_bench.kinds``). Multi-task jobs (``sage_bench.run.mtl``) do: they resolve ``auto`` to float32 for training and
evaluation and TF32 off, on every device and for every row: the lineage's trainers use no
autocast; the solvers (MGDA's min-norm point, FairGrad's least squares, Nash-MTL's convex
program) work on the Gram matrix of task gradients whose entries bf16 would round to three
digits; SAMO's and SAGE's perturbations are lost as above; and the reported metrics are small
differences (Cityscapes' depth error is about 0.013), which bf16 evaluation would move in their
printed digits. ``precision.polar=auto`` stays bf16 on CUDA (a direction only). An explicit
``bf16`` or ``tf32=true`` applies as for domain generalization. (The lineage's PyTorch default
lets cuDNN use TF32 convolutions on Ampere GPUs: ``tf32=true`` is that setting.)

How a perturbed gradient is computed is the ``perturbation`` key (``difference``, ``linearized``
or ``auto``, ``sage_bench.algorithms.perturbation``). With ``perturbation=auto`` (the default)
and ``precision.train=auto``, a domain-generalization job on CUDA lets the measurement choose
its training precision too: the bf16 difference, the bf16 linearized product or the float32
difference (``Precision.train_follows_perturbation``); it starts in float32. Wherever the
training precision resolves to float32 (the CPU, ``precision.train=fp32``, multi-task jobs)
``auto`` is the float32 difference.

Every algorithm that perturbs weights reports ``perturbation_fidelity``, the cosine between the
intended perturbation and the one the forward pass computes with, so a setting that loses it
shows in the records (``sage_bench.geometry.fidelity``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from sage_bench.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_KEYS = ("train", "eval", "polar")
DEFAULT_PRECISION: dict[str, str] = {"train": "auto", "eval": "auto", "polar": "auto"}
DEFAULT_TF32 = "auto"
FIDELITY_WARNING = 0.9  # a perturbation_fidelity below this is reported in out.txt and on stderr

_DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """What a job computes in. ``None`` dtypes mean float32 (the parameters' own precision)."""

    train: torch.dtype | None  # autocast dtype of training forward passes
    eval: torch.dtype | None  # autocast dtype of evaluation
    polar: torch.dtype | None  # dtype of SAGE's Newton-Schulz iteration
    tf32: bool  # TF32 matrix products and convolutions (CUDA only)
    # precision.train=auto and perturbation=auto on CUDA: the perturbation's measurement picks
    # the training precision (``train`` is where the job starts, float32)
    train_follows_perturbation: bool = False

    def describe(self) -> dict[str, Any]:
        """The resolved settings as plain values (for the records)."""

        def name(dtype: torch.dtype | None) -> str:
            return "float32" if dtype is None else str(dtype).removeprefix("torch.")

        return {"train": name(self.train), "eval": name(self.eval), "polar": name(self.polar), "tf32": self.tf32}


def check_precision(precision: Mapping[str, Any], tf32: Any) -> dict[str, str]:
    """The ``precision.*`` keys as a plain dict, or a ``ConfigError`` naming a bad key or value."""
    settings = dict(precision)
    unknown = sorted(set(settings) - set(PRECISION_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join('precision.' + k for k in unknown)}; "
            f"valid keys: {', '.join('precision.' + k for k in PRECISION_KEYS)}"
        )
    for key in PRECISION_KEYS:
        value = settings.get(key, DEFAULT_PRECISION[key])
        if value not in PRECISIONS:
            raise ConfigError(f"bad value for 'precision.{key}': {value!r}; valid choices: {', '.join(PRECISIONS)}")
        settings[key] = value
    if not (isinstance(tf32, bool) or tf32 == "auto"):
        raise ConfigError(f"bad value for 'tf32': {tf32!r}; valid choices: auto, true, false")
    return settings


def resolve_precision(
    precision: Mapping[str, str], tf32: bool | str, device_type: str, perturbs_weights: bool, float32_auto: bool = False,
    perturbation: str = "difference",
) -> Precision:  # fmt: skip
    """The precision a job runs in on ``device_type`` (``"cuda"`` or ``"cpu"``) for an
    algorithm that does (or does not) take gradients at perturbed weights; with ``float32_auto``
    (a multi-task job's kind) ``auto`` is float32 without TF32 for training and evaluation (see
    the module docstring).
    ``perturbation``: the job's ``perturbation`` method where its algorithm takes perturbed
    gradients (``auto`` lets the training precision follow its measurement on CUDA)."""
    follows = (
        perturbation == "auto" and not float32_auto and device_type == "cuda"
        and {**DEFAULT_PRECISION, **precision}["train"] == "auto"
    )  # fmt: skip
    if float32_auto:
        perturbs_weights = True  # auto: float32 training, TF32 off
    cuda = device_type == "cuda"
    settings = {**DEFAULT_PRECISION, **precision}

    def dtype(key: str, auto_cuda: torch.dtype | None) -> torch.dtype | None:
        value = settings[key]
        if value == "auto":
            return auto_cuda if cuda else None
        return _DTYPES[value]

    train = dtype("train", None if perturbs_weights else torch.bfloat16)
    evaluation = dtype("eval", None if float32_auto else torch.bfloat16)
    polar = dtype("polar", torch.bfloat16)
    use_tf32 = (not perturbs_weights) if tf32 == "auto" else bool(tf32)
    return Precision(train=train, eval=evaluation, polar=polar, tf32=cuda and use_tf32, train_follows_perturbation=follows)


def identity_settings(
    precision: Mapping[str, str], tf32: bool | str, compile: bool, perturbs_weights: bool, float32_auto: bool = False
) -> dict[str, Any]:
    """The settings that differ from the defaults, for a job's identity: jobs at the defaults
    keep the identity they had before these keys existed; any other setting is another job.

    A value that ``auto`` gives on every device counts as the default: ``precision.train=fp32``
    and ``tf32=false`` for an algorithm that perturbs weights, ``tf32=true`` for one that does
    not; with ``float32_auto`` (a multi-task job) also ``precision.eval=fp32``. (Otherwise ``precision.eval`` and
    ``precision.polar`` resolve per device, so an explicit value always differs.)
    """
    values: dict[str, Any] = {}
    if float32_auto:
        perturbs_weights = True
    same = {("train", "fp32")} if perturbs_weights else set()
    if float32_auto:
        same.add(("eval", "fp32"))
    changed = {k: v for k, v in precision.items() if v != DEFAULT_PRECISION[k] and (k, v) not in same}
    if changed:
        values["precision"] = changed
    if tf32 not in (DEFAULT_TF32, not perturbs_weights):
        values["tf32"] = tf32
    if compile:
        values["compile"] = True
    return values
