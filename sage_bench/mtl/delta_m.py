"""``Delta_m``: the mean relative change of every metric against single-task learning, in %.

``Delta_m = 100 / n * sum_i (-1)^{s_i} (a_i - b_i) / b_i``, with ``s_i = 1`` where higher is
better, so that lower ``Delta_m`` is better (the lineage's ``delta_fn``). The bases ``b`` are
CAGrad's single-task results, which every repository of the lineage hard-codes:

- NYUv2: mIoU 0.3830, pixel accuracy 0.6376, depth absolute error 0.6754, relative error
  0.2780, normal angle mean 25.01, median 19.21, shares within 11.25/22.5/30 degrees 0.3014,
  0.5720, 0.6915;
- Cityscapes: mIoU 0.7401, pixel accuracy 0.9316, absolute error 0.0125, relative error 27.77
  (a raw ratio: Cityscapes' inverse depth has many small targets).

Metrics are in the lineage's units: fractions (not %) for mIoU, accuracy and the shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sage_bench.errors import UserError


@dataclass(frozen=True)
class DeltaMBase:
    """The metrics a data set's ``Delta_m`` averages, their single-task bases and directions."""

    keys: tuple[str, ...]
    base: tuple[float, ...]
    higher_is_better: tuple[bool, ...]


NYU_KEYS = (
    "seg_miou", "seg_pixacc", "depth_abs_err", "depth_rel_err", "normal_angle_mean",
    "normal_angle_median", "normal_within_11.25", "normal_within_22.5", "normal_within_30",
)  # fmt: skip

DELTA_M_BASES: dict[str, DeltaMBase] = {
    "NYUv2": DeltaMBase(
        NYU_KEYS,
        (0.3830, 0.6376, 0.6754, 0.2780, 25.01, 19.21, 0.3014, 0.5720, 0.6915),
        (True, True, False, False, False, False, True, True, True),
    ),
    "Cityscapes": DeltaMBase(
        ("seg_miou", "seg_pixacc", "depth_abs_err", "depth_rel_err"),
        (0.7401, 0.9316, 0.0125, 27.77),
        (True, True, False, False),
    ),
}


def delta_m_from(values: Sequence[float], base: Sequence[float], higher_is_better: Sequence[bool]) -> float:
    """``Delta_m`` in % of ``values`` against ``base``."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(base, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} metric values for {len(b)} bases")
    sign = np.where(np.asarray(higher_is_better), -1.0, 1.0)
    return float((sign * (a - b) / b).mean() * 100.0)


def delta_m(metrics: Mapping[str, float] | Sequence[float], dataset: str) -> float:
    """``Delta_m`` (%, lower is better) of ``metrics`` on ``dataset`` (``"NYUv2"`` or
    ``"Cityscapes"``): a mapping with the keys of ``DELTA_M_BASES[dataset].keys`` (extra keys are
    ignored) or the values in that order."""
    if dataset not in DELTA_M_BASES:
        raise UserError(
            f"no Delta_m base for data set {dataset!r}; valid choices: {', '.join(DELTA_M_BASES)}"
        )
    spec = DELTA_M_BASES[dataset]
    if isinstance(metrics, Mapping):
        missing = [k for k in spec.keys if k not in metrics]
        if missing:
            raise KeyError(f"Delta_m on {dataset} needs the metric(s) {', '.join(missing)}")
        values = [metrics[k] for k in spec.keys]
    else:
        values = list(metrics)
    return delta_m_from(values, spec.base, spec.higher_is_better)
