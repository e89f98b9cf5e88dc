"""Result tables as DomainBed prints them, built with pandas from the selected accuracies.

Every table comes from one tidy frame with the columns ``selection, dataset, algorithm, env,
mean, sem, trials`` (accuracies in percent):

- per data set, one row per (algorithm, test environment): the mean over trials of the
  selected test accuracy and its standard error, computed as DomainBed's ``format_mean``
  computes it, ``np.std(accs / sqrt(n))``: NumPy's population standard deviation (``ddof=0``,
  not the sample one) divided by ``sqrt(n)``, so a single trial has a standard error of 0;
  ``trials`` = how many trials the cell has;
- per data set, one row with ``env = "Avg"``: the mean of the environments' (unrounded)
  means, not a mean over trials, and only when every environment has a value; no standard
  error (DomainBed prints none); ``trials`` = the fewest trials of any environment;
- the across-data-set table, ``dataset = "Averages"``, ``env`` = the data set's name: per
  trial, the mean over the test environments that trial has (DomainBed averages whatever
  environments exist, so a data set with missing test environments still gets a number here
  while its own ``Avg`` is X), then mean and standard error over trials (``trials`` = how many);
  and ``env = "Avg"``: the mean of the data sets' means when every data set has one.

Rows and columns: data sets in Table 1's order (PACS, VLCS, OfficeHome, TerraIncognita,
DomainNet), then the other known ones, then unknown ones by name (DomainBed keeps only the data
sets it knows); algorithms in Table 1's order, then by name (see ``algorithm_order``). A known
data set's environments are labelled as in ``sage_bench.data``; an unknown one's by index, as
many as its records have. A missing value is NaN in the frame and ``X`` in printed tables.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources

import numpy as np
import pandas as pd

from sage_bench.collect.selection import (
    SELECTION_NAMES,
    GroupKey,
    algorithm_name,
    env_count,
    sweep_accs,
)

COLUMNS = ["selection", "dataset", "algorithm", "env", "mean", "sem", "trials"]
TABLE1_DATASETS = ["PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"]
ALGORITHM_ORDER = ["ERM", "SAM", "GSAM", "SAGM", "DISAM", "SAGE"]
AVERAGES = "Averages"


def _known_environments(dataset: str) -> list[str] | None:
    from sage_bench.data import DATASETS

    cls = DATASETS.get(dataset)
    return list(cls.ENVIRONMENTS) if cls is not None else None


def environment_names(dataset: str, records: Iterable[dict]) -> list[str]:
    """The labels of a data set's environments: DomainBed's for known data sets; for others,
    as many indices as the records have environments."""
    known = _known_environments(dataset)
    if known is not None:
        return known
    n = max((env_count(r) for r in records if r["args"]["dataset"] == dataset), default=0)
    return [str(i) for i in range(n)]


def _ordered(names: Iterable[str], preferred: list[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in dict.fromkeys(preferred) if n in names] + sorted(n for n in names if n not in preferred)


def algorithm_order(names: Iterable[str]) -> list[str]:
    """The paper's order (ERM, SAM, GSAM, SAGM, DISAM, SAGE), then other algorithms by name; an
    ablated variant (``SAGE w/o noise``) right after its algorithm."""

    def key(name: str) -> tuple:
        base, _, variant = name.partition(" w/o ")
        rank = ALGORITHM_ORDER.index(base) if base in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
        return rank, base, variant

    return sorted(dict.fromkeys(names), key=key)


def _mean_sem(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    data = np.asarray(values, dtype=float) * 100
    return float(data.mean()), float(data.std() / np.sqrt(len(data)))


def results_frame(records: list[dict], selection: str) -> pd.DataFrame:
    """The tidy frame of one selection method (see the module docstring)."""
    accs = sweep_accs(selection, records)
    from sage_bench.data import DATASETS

    datasets = _ordered((r["args"]["dataset"] for r in records), TABLE1_DATASETS + list(DATASETS))
    algorithms = algorithm_order(algorithm_name(r) for r in records)
    by_cell: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    by_trial: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for key, acc in sorted(accs.items(), key=lambda kv: (kv[0].trial_seed, kv[0].test_env)):
        by_cell[(key.dataset, key.algorithm, key.test_env)].append(acc)
        by_trial[(key.dataset, key.algorithm, key.trial_seed)].append(acc)

    rows = []
    for dataset in datasets:
        n_envs = len(environment_names(dataset, records))
        for algorithm in algorithms:
            means, trials = [], []
            for env in range(n_envs):
                values = by_cell.get((dataset, algorithm, env), [])
                mean, sem = _mean_sem(values)
                rows.append([selection, dataset, algorithm, str(env), mean, sem, len(values)])
                means.append(mean)
                trials.append(len(values))
            avg = math.nan if any(math.isnan(m) for m in means) else float(np.mean(means))
            rows.append([selection, dataset, algorithm, "Avg", avg, math.nan, min(trials, default=0)])

    for algorithm in algorithms:
        dataset_means = []
        for dataset in datasets:
            per_trial = [
                float(np.mean(v)) for (d, a, _), v in sorted(by_trial.items()) if d == dataset and a == algorithm
            ]
            mean, sem = _mean_sem(per_trial)
            rows.append([selection, AVERAGES, algorithm, dataset, mean, sem, len(per_trial)])
            dataset_means.append(mean)
        avg = math.nan if any(math.isnan(m) for m in dataset_means) else float(np.mean(dataset_means))
        rows.append([selection, AVERAGES, algorithm, "Avg", avg, math.nan, math.nan])
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["trials"] = frame["trials"].astype("Int64")
    return frame


def _cell(mean: float, sem: float, latex: bool = False) -> str:
    if math.isnan(mean):
        return "X"
    if math.isnan(sem):
        return f"{mean:.1f}"
    return f"{mean:.1f} $\\pm$ {sem:.1f}" if latex else f"{mean:.1f} +/- {sem:.1f}"


def pivot(frame: pd.DataFrame, dataset: str, labels: list[str] | None = None, latex: bool = False) -> pd.DataFrame:
    """One printed table: algorithms as rows, environments (or data sets) and Avg as columns."""
    part = frame[frame["dataset"] == dataset]
    envs = list(dict.fromkeys(part["env"]))
    table = part.assign(cell=[_cell(m, s, latex) for m, s in zip(part["mean"], part["sem"], strict=True)])
    table = table.pivot(index="algorithm", columns="env", values="cell")
    table = table.loc[list(dict.fromkeys(part["algorithm"])), envs]
    if labels is not None:
        table.columns = [*labels, "Avg"]
    table.index.name = "Algorithm"
    table.columns.name = None
    return table


def table1_frame(frame: pd.DataFrame, compare_paper: bool = False) -> pd.DataFrame:
    """Table 1: algorithms x (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet, Avg), numbers
    in percent from the across-data-set averages; with ``compare_paper``, the paper's number and
    the difference (ours - paper) beside each; the paper's Avg is recomputed from its cells."""
    averages = frame[frame["dataset"] == AVERAGES]
    algorithms = list(dict.fromkeys(averages["algorithm"]))
    ours = {(a, e): m for a, e, m in zip(averages["algorithm"], averages["env"], averages["mean"], strict=True)}
    paper = paper_table1() if compare_paper else None
    rows = {}
    for algorithm in algorithms:
        row = {}
        own = [ours.get((algorithm, d), math.nan) for d in TABLE1_DATASETS]
        cells = [*own, math.nan if any(math.isnan(v) for v in own) else float(np.mean(own))]
        for column, value in zip([*TABLE1_DATASETS, "Avg"], cells, strict=True):
            row[column] = value
            if paper is not None:
                reference = paper.get(algorithm, {}).get(column, math.nan)
                row[f"{column} (paper)"] = reference
                row[f"{column} (diff)"] = value - reference
        rows[algorithm] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "Algorithm"
    return table


# The protocol behind each of the paper's rows. Table 1's caption says the baselines' numbers
# "are from [51]", BOA (Li et al., ICLR 2026), whose main table they match; as far as public
# summaries of BOA say, it tuned CLIP ViT-B/16 with visual prompts (VPT) and selected models on
# the test domain. Only SAGE's row is the SAGE paper's own run (appendix E: fine-tuning,
# training-domain validation), the protocol sage-bench reproduces.
PAPER_PROTOCOLS = {
    "BOA": "BOA's protocol: CLIP ViT-B/16 with visual prompt tuning, test-domain model selection "
    "(as public summaries of BOA, ICLR 2026, say; the numbers are BOA's)",
    "SAGE": "SAGE's protocol: CLIP ViT-B/16 fine-tuned, training-domain validation (appendix E)",
}


def _paper_csv() -> pd.DataFrame:
    with resources.files("sage_bench.collect").joinpath("table1_paper.csv").open() as f:
        return pd.read_csv(f).set_index("algorithm")


def paper_table1() -> dict[str, dict[str, float]]:
    """The SAGE paper's Table 1 (percent), shipped with the package; ``Avg`` is recomputed as
    the mean of the five data sets (some printed averages are not)."""
    table = {}
    for algorithm, row in _paper_csv().iterrows():
        cells = {d: float(row[d]) for d in TABLE1_DATASETS}
        cells["Avg"] = float(np.mean(list(cells.values())))
        table[str(algorithm)] = cells
    return table


def paper_protocols() -> dict[str, str]:
    """The protocol of each of the paper's Table 1 rows: ``"BOA"`` (the baselines, as BOA
    reported them) or ``"SAGE"`` (the paper's own run); see ``PAPER_PROTOCOLS``."""
    return {str(algorithm): str(protocol) for algorithm, protocol in _paper_csv()["protocol"].items()}


def header(selection: str, dataset: str) -> str:
    if dataset == AVERAGES:
        return f"Averages, model selection method: {SELECTION_NAMES[selection]}"
    return f"Dataset: {dataset}, model selection method: {SELECTION_NAMES[selection]}"


__all__ = [
    "AVERAGES",
    "PAPER_PROTOCOLS",
    "COLUMNS",
    "TABLE1_DATASETS",
    "GroupKey",
    "algorithm_order",
    "environment_names",
    "header",
    "paper_protocols",
    "paper_table1",
    "pivot",
    "results_frame",
    "table1_frame",
]
