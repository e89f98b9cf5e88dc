"""Table 2 from the records of multi-task runs (``args.task == "multi_task"``), averaged as the
lineage reports it, and beside the paper's Table 2.

The rule is CAGrad's ``plot.py`` (which Nash-MTL, FAMO, FairGrad and SAMO describe as "averaged
over the last 10 epochs"), per data set:

0. a run that has not reached its planned epochs (``args.epochs``; an interrupted job) is left
   out, with a warning naming it, unless ``include_unfinished``; so is a run on generated data
   of another version than the current one (``args.data_version``, ``DATA_VERSIONS``);
1. each run's metrics averaged over the epochs ``[n - last, n)`` (``last``: 10 by default, the
   lineage's; ``sage-bench collect --last-epochs``), ``n`` the number of epochs of the shortest
   run among the runs of the data set planned for as many epochs (runs planned for other
   ``epochs`` are rows of their own, with their own window; fewer than ``last`` epochs when runs
   are shorter); the notes name the epochs and the run that sets each window;
2. those per-run means averaged over a row's runs (its seeds: ``trial_seed``), with their
   standard deviation across seeds (``ddof=1``; a per-task row's seed takes each task's metrics
   from that seed's runs);
3. ``Delta_m`` of the averaged metrics (``sage_bench.mtl.delta_m``; not the mean of per-epoch
   ``delta_m``, though the two agree as ``Delta_m`` is affine in the metrics) against the data
   set's published single-task base (NYU-v2, Cityscapes). A data set without one (DigitScenes)
   gets ``Delta_m`` against this collection's own STL row, when it has one. Its spread: the
   standard deviation of each seed's ``Delta_m`` against the same base.

Rows: one per algorithm, and one per setting of it when its runs differ in a setting other than
their seeds (``SETTING_ARGS``; hyperparameter overrides included: a multi-task table reports
settings, it selects none), named after the differing values. ``STL`` is one network per task
(a run per value of ``hparams.task``): its row takes each task's metrics from the runs that
trained that task, as Table 2's STL row.

This module reads records only (no torch): ``sage_bench.mtl.delta_m`` and
``sage_bench.mtl.tasks`` are plain Python.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sage_bench.computation import args_that_count
from sage_bench.data.catalog import DATA_VERSIONS, MULTITASK_TASKS
from sage_bench.mtl.delta_m import DELTA_M_BASES, delta_m_from
from sage_bench.mtl.tasks import metric_suffixes
from sage_bench.records import MULTI_TASK, args_problem, record_task

LAST_EPOCHS = 10
REQUIRED_ARGS = ("dataset", "algorithm", "trial_seed", "hparams_seed")
# ``args`` that make runs of one algorithm different rows (everything but seeds and places)
SETTING_ARGS = (
    "hparams_seed", "hparams", "epochs", "lr_step_epochs", "lr_gamma", "backbone", "backbone_options",
    "optimizer", "optimizer_options", "dataset_options", "precision", "tf32", "compile",
    "perturbation",
)  # fmt: skip
# rows trained as one network per task: the hyperparameter naming the task (not a setting)
PER_TASK_ROWS = {"STL": "task"}
FORMATS = ("text", "markdown", "latex", "csv", "json")
HIGHER_IS_BETTER = ("miou", "pixacc", "within")
PERCENT = ("miou", "pixacc", "within")  # printed in %, as Table 2
LABELS = {
    "miou": "mIoU", "pixacc": "Pix Acc", "abs_err": "Abs Err", "rel_err": "Rel Err", "angle_mean": "Mean",
    "angle_median": "Median", "within_11.25": "<11.25", "within_22.5": "<22.5", "within_30": "<30",
}  # fmt: skip
PAPER_PREFIX = {"NYUv2": "nyu", "Cityscapes": "city"}
DELTA = "Delta_m %"


def is_multitask(record: dict) -> bool:
    return record_task(record) == MULTI_TASK


def record_problem(record: dict) -> str | None:
    """Why a multi-task record cannot be tabulated, or ``None`` when it can: it needs ``args``
    with ``dataset``, ``algorithm``, integer ``trial_seed`` and ``hparams_seed``, an integer
    ``epoch`` and at least one ``test_`` metric that is a number (NaN is one)."""
    problem = args_problem(record, REQUIRED_ARGS)
    if problem is not None:
        return problem
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"no epoch number (epoch={epoch!r})"
    if not any(_is_number(v) for k, v in record.items() if k.startswith("test_")):
        return "no test_ metric"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def metric_keys(dataset: str, records: Iterable[dict] = ()) -> list[str]:
    """The metrics of a data set in Table 2's order (``seg_miou``, ..., ``normal_within_30``); for
    a data set the catalog does not know, the ``test_`` metrics its records have."""
    if dataset in MULTITASK_TASKS:
        return [f"{name}_{suffix}" for name, kind in MULTITASK_TASKS[dataset] for suffix in metric_suffixes(kind)]
    keys: dict[str, None] = {}
    for r in records:
        if r["args"]["dataset"] == dataset:
            keys.update({k[5:]: None for k in r if k.startswith("test_") and not k.endswith("_loss")})
    return list(keys)


def higher_is_better(key: str) -> bool:
    return any(part in key for part in HIGHER_IS_BETTER)


# -- runs and rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochWindow:
    """The epochs ``[start, stop)`` a group of runs is averaged over, and the run that sets it
    (the shortest of the group)."""

    start: int
    stop: int
    path: str


@dataclass
class RunMean:
    """One run: its row, task (for a per-task row), seed, metrics averaged over its epoch window."""

    dataset: str
    row: str
    trained_task: str | None
    metrics: dict[str, float]
    path: str
    trial_seed: int
    window: EpochWindow




def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def run_setting(record: dict) -> dict[str, str]:
    """A record's ``SETTING_ARGS`` as text, dictionaries flattened; a per-task row's task and
    settings that change no number (``sage_bench.computation``) left out."""
    args = args_that_count(record["args"])
    per_task = PER_TASK_ROWS.get(args["algorithm"])
    values = {}
    for key in SETTING_ARGS:
        value = args.get(key)
        if isinstance(value, dict):
            values.update({f"{key}.{k}": _text(v) for k, v in value.items() if not (key == "hparams" and k == per_task)})
        elif not (key == "hparams" and value is None):
            values[key] = _text(value)
    return values


def _row_names(firsts: list[dict]) -> list[str]:
    """The row of each run (given by its first record): its algorithm, and the settings in which
    the algorithm's runs differ on one data set, e.g. ``SAGE-LS (hparams.rho=0.001)``."""
    settings = [run_setting(r) for r in firsts]
    by_row: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r, s in zip(firsts, settings, strict=True):
        by_row[(r["args"]["dataset"], r["args"]["algorithm"])].append(s)
    varying: dict[str, set[str]] = defaultdict(set)
    for (_, algorithm), values in by_row.items():
        keys = set().union(*values)
        varying[algorithm] |= {k for k in keys if len({v.get(k, "None") for v in values}) > 1}
    names = []
    for r, s in zip(firsts, settings, strict=True):
        algorithm = r["args"]["algorithm"]
        keys = sorted(varying[algorithm])
        names.append(algorithm + (" (" + ", ".join(f"{k}={s.get(k, 'None')}" for k in keys) + ")" if keys else ""))
    return names


def _runs(records: list[dict]) -> dict[str, list[dict]]:
    """Records by run (``args.job_id``, else ``args.output_dir``), sorted by epoch."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        args = r["args"]
        runs[str(args.get("job_id") or args.get("output_dir") or id(r))].append(r)
    return {key: sorted(rs, key=lambda r: r["epoch"]) for key, rs in runs.items()}


def _where(run: list[dict]) -> str:
    """The run's folder; relative to the working directory where it lies below it, so a table
    written from a checkout names the same folder on every machine."""
    args = run[0]["args"]
    where = args.get("output_dir")
    if not where:
        return str(args.get("job_id") or "?")
    path = Path(where)
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _planned(run: list[dict]) -> int | None:
    epochs = run[0]["args"].get("epochs")
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None


def usable_runs(records: list[dict], include_unfinished: bool = False) -> dict[str, list[dict]]:
    """The runs to tabulate (``_runs``), leaving out with a warning each run that has not reached
    its planned epochs (unless ``include_unfinished``) and each run on generated data of another
    version than the current one."""
    kept = {}
    for key, run in _runs(records).items():
        args = run[0]["args"]
        dataset, planned, reached = args["dataset"], _planned(run), len({r["epoch"] for r in run})
        current = DATA_VERSIONS.get(dataset)
        version = args.get("data_version", 1)
        if current is not None and version != current:
            warnings.warn(
                f"left out {_where(run)}: {dataset} data of version {version}, not the current {current} "
                "(its scenes differ; run the job again)",
                stacklevel=3,
            )
            continue
        if planned is not None and reached < planned and not include_unfinished:
            warnings.warn(
                f"left out {_where(run)} ({args['algorithm']}, seed {args['trial_seed']}): unfinished, "
                f"{reached} of {planned} epochs recorded (resume it, or include it with --include-unfinished)",
                stacklevel=3,
            )
            continue
        kept[key] = run
    return kept


def epoch_windows(records: list[dict], last: int = LAST_EPOCHS, include_unfinished: bool = False) -> dict[tuple[str, int | None], EpochWindow]:
    """Per data set and planned ``epochs``: the epochs each run is averaged over, the last
    ``last`` epochs of the shortest of those runs (``usable_runs``), and which run that is."""
    if not (isinstance(last, int) and last >= 1):
        raise ValueError(f"the epoch window must be a whole number of epochs, at least 1, got {last!r}")
    shortest: dict[tuple[str, int | None], tuple[int, str]] = {}
    for run in usable_runs(records, include_unfinished).values():
        group = (run[0]["args"]["dataset"], _planned(run))
        n = len({r["epoch"] for r in run})
        if group not in shortest or n < shortest[group][0]:
            shortest[group] = (n, _where(run))
    return {group: EpochWindow(max(0, n - last), n, path) for group, (n, path) in shortest.items()}


def run_means(records: list[dict], last: int = LAST_EPOCHS, include_unfinished: bool = False) -> list[RunMean]:
    """Every usable run's metrics, averaged over its epoch window (``epoch_windows``)."""
    records = [r for r in records if is_multitask(r)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warned once, by epoch_windows below
        runs = usable_runs(records, include_unfinished)
    windows = epoch_windows(records, last, include_unfinished)
    firsts = [run[0] for run in runs.values()]
    means = []
    for run, row in zip(runs.values(), _row_names(firsts), strict=True):
        args = run[0]["args"]
        dataset = args["dataset"]
        window = windows[(dataset, _planned(run))]
        epochs = sorted({r["epoch"] for r in run})[window.start : window.stop]
        in_window = [r for r in run if r["epoch"] in set(epochs)]
        metrics = {}
        for key in metric_keys(dataset, records):
            values = [r.get(f"test_{key}", math.nan) for r in in_window]
            metrics[key] = float(np.mean([v if _is_number(v) else math.nan for v in values]))
        per_task = PER_TASK_ROWS.get(args["algorithm"])
        trained = (run[0].get("hparams") or {}).get(per_task) if per_task else None
        means.append(RunMean(dataset, row, trained, metrics, _where(run), args["trial_seed"], window))
    return means


def row_order(names: Iterable[str]) -> list[str]:
    """``Constant`` (the floor), Table 2's row order (the paper's CSV), then other rows by name; a
    row's settings after it."""
    # the floor first, then the CSV's rows (in Table 2's order)
    order = ["Constant", "STL", *[m for m in _paper_csv()["method"] if m != "STL"]]

    def key(name: str) -> tuple:
        base, _, setting = name.partition(" (")
        return (order.index(base) if base in order else len(order), base, setting)

    return sorted(dict.fromkeys(names), key=key)


def _std(values: list[float]) -> float:
    """Standard deviation across seeds (``ddof=1``); NaN for fewer than two."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def table2_frame(records: list[dict], last: int = LAST_EPOCHS, include_unfinished: bool = False) -> pd.DataFrame:
    """One row per (data set, row) with the averaged metrics in the lineage's units and their
    standard deviation across seeds (``<metric>_std``), ``runs`` (how many seeds; for STL the
    fewest of any task), the epoch window and the run that sets it, ``delta_m``, its spread
    across seeds ``delta_m_std`` and ``delta_m_base`` (``"published"``, ``"STL"`` or empty)."""
    means = run_means(records, last, include_unfinished)
    datasets = list(dict.fromkeys(m.dataset for m in means))
    table = []
    for dataset in datasets:
        keys = metric_keys(dataset, records)
        part = [m for m in means if m.dataset == dataset]
        rows = {}
        for row in row_order(m.row for m in part):
            runs = [m for m in part if m.row == row]
            values, spread, counts, per_seed = {}, {}, [], defaultdict(dict)
            for key in keys:
                task = key.split("_", 1)[0]
                used = [m for m in runs if m.trained_task in (None, task)]
                values[key] = float(np.mean([m.metrics[key] for m in used])) if used else math.nan
                spread[key] = _std([m.metrics[key] for m in used])
                counts.append(len(used))
                for seed in sorted({m.trial_seed for m in used}):
                    per_seed[seed][key] = float(np.mean([m.metrics[key] for m in used if m.trial_seed == seed]))
            rows[row] = (values, spread, min(counts) if counts else 0, per_seed, runs[0].window)
        base = _base(dataset, keys, rows)
        for row, (values, spread, runs, per_seed, window) in rows.items():
            delta = delta_std = math.nan
            if base is not None:
                better = [higher_is_better(k) for k in keys]
                delta = delta_m_from([values[k] for k in keys], base[0], better)
                seeds = [
                    delta_m_from([seed[k] for k in keys], base[0], better)
                    for seed in per_seed.values() if all(k in seed for k in keys)
                ]  # fmt: skip
                delta_std = _std(seeds)
            table.append({
                "dataset": dataset, "algorithm": row, "runs": runs, "epochs": f"{window.start}-{window.stop - 1}",
                "window_run": window.path, **values, **{f"{k}_std": spread[k] for k in keys},
                "delta_m": delta, "delta_m_std": delta_std, "delta_m_base": base[1] if base is not None else "",
            })  # fmt: skip
    return pd.DataFrame(table)


def _base(dataset: str, keys: list[str], rows: dict) -> tuple[list[float], str] | None:
    """The Delta_m base of a data set: the published one, else this collection's STL row."""
    if dataset in DELTA_M_BASES and list(DELTA_M_BASES[dataset].keys) == keys:
        return list(DELTA_M_BASES[dataset].base), "published"
    stl = rows.get("STL")
    if stl is not None and all(math.isfinite(stl[0][k]) and stl[0][k] != 0 for k in keys):
        return [stl[0][k] for k in keys], "STL"
    return None


# -- the paper's Table 2 ----------------------------------------------------------------------


def _paper_csv() -> pd.DataFrame:
    """The paper's Table 2 as printed (text, so that each number keeps its printed digits)."""
    with resources.files("sage_bench.collect").joinpath("table2_paper.csv").open() as f:
        return pd.read_csv(f, dtype=str, keep_default_na=False)


def _half_unit(text: str) -> float:
    """Half a unit of the last printed digit of ``text`` ("0.5493" -> 0.00005)."""
    decimals = len(text.partition(".")[2])
    return 0.5 * 10.0**-decimals


def paper_table2() -> pd.DataFrame:
    """The SAGE paper's Table 2 (shipped with the package) in this module's frame: one row per
    (data set, method), metrics in the lineage's units (fractions, not %), ``delta_m`` recomputed
    from the row's own metric columns, ``delta_m_rounding`` how far rounding those columns to
    their printed digits can move it, ``delta_m_printed`` the value the paper prints."""
    rows = []
    for _, paper in _paper_csv().iterrows():
        for dataset, prefix in PAPER_PREFIX.items():
            keys = metric_keys(dataset)
            spec = DELTA_M_BASES[dataset]
            values, slack = {}, 0.0
            for key, base in zip(keys, spec.base, strict=True):
                suffix = key.split("_", 1)[1]
                text = paper[f"{prefix}_{suffix}"]
                scale = 0.01 if suffix.startswith(PERCENT) else 1.0
                values[key] = float(text) * scale
                slack += _half_unit(text) * scale / base * 100 / len(keys)
            delta = delta_m_from([values[k] for k in keys], spec.base, spec.higher_is_better)
            printed = paper[f"{prefix}_delta_m"]
            rows.append({
                "dataset": dataset, "algorithm": str(paper["method"]), **values, "delta_m": delta,
                "delta_m_rounding": slack, "delta_m_printed": float(printed) if printed else math.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


# -- printing ---------------------------------------------------------------------------------


def _cell(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "X"
    suffix = key.split("_", 1)[1] if "_" in key else key
    if suffix.startswith(PERCENT):
        return f"{100 * value:.2f}"
    if suffix.startswith("angle"):
        return f"{value:.2f}"
    return f"{value:.4f}"


def _spread(key: str, mean: float, std: float) -> str:
    """``mean +- std`` (the std in the mean's units and digits), or the mean alone without a spread."""
    if not (math.isfinite(mean) and math.isfinite(std)):
        return _cell(key, mean)
    return f"{_cell(key, mean)} ± {_cell(key, std)}"


def _delta(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "X" if signed else ""
    return f"{value:+.2f}"


def _header(key: str) -> str:
    task, _, suffix = key.partition("_")
    return f"{task} {LABELS.get(suffix, suffix)}"


def _printed(frame: pd.DataFrame, dataset: str, records: list[dict], paper: pd.DataFrame | None) -> pd.DataFrame:
    keys = metric_keys(dataset, records)
    ours = frame[frame["dataset"] == dataset]
    has_delta = ours["delta_m_base"].astype(bool).any()
    paper_rows = {} if paper is None else {r["algorithm"]: r for _, r in paper[paper["dataset"] == dataset].iterrows()}
    lines = {}
    for _, row in ours.iterrows():
        name = row["algorithm"]
        cells = [_spread(k, row[k], row.get(f"{k}_std", math.nan)) for k in keys]
        extra = []
        if has_delta:
            std = row.get("delta_m_std", math.nan)
            extra.append(_delta(row["delta_m"]) + (f" ± {std:.2f}" if math.isfinite(std) else ""))
        if paper is not None:
            extra.append("")
        lines[name] = [*cells, *extra, str(row["runs"])]
        reference = paper_rows.get(name.partition(" (")[0])
        if reference is not None:
            lines[f"{name} (paper)"] = [
                *[_cell(k, reference[k]) for k in keys], _delta(reference["delta_m"]),
                _delta(reference["delta_m_printed"], signed=False), "",
            ]  # fmt: skip
            lines[f"{name} (diff)"] = [
                *[_diff(k, row[k], reference[k]) for k in keys], _delta(row["delta_m"] - reference["delta_m"]), "", "",
            ]  # fmt: skip
    columns = [_header(k) for k in keys]
    if has_delta:
        columns.append(DELTA)
    if paper is not None:
        columns.append(f"{DELTA} printed")
    columns.append("runs")
    printed = pd.DataFrame.from_dict(lines, orient="index", columns=columns)
    printed.index.name = "Algorithm"
    return printed


def _diff(key: str, ours: float, paper: float) -> str:
    if not (math.isfinite(ours) and math.isfinite(paper)):
        return "X"
    scale = 100 if key.split("_", 1)[1].startswith(PERCENT) else 1
    digits = 4 if key.split("_", 1)[1].endswith("err") else 2
    return f"{scale * (ours - paper):+.{digits}f}"


def _table_text(table: pd.DataFrame, fmt: str, title: str) -> str:
    if fmt == "markdown":
        return f"### {title}\n\n{table.to_markdown(disable_numparse=True)}\n"
    if fmt == "latex":
        body = table.to_latex(escape=True, column_format="l" + "c" * len(table.columns))
        return f"% {title}\n{body}"
    return f"-------- {title}\n{table.to_string()}\n"


def _notes(frame: pd.DataFrame, dataset: str, paper: pd.DataFrame | None) -> list[str]:
    part = frame[frame["dataset"] == dataset]
    windows = []
    for span, path in dict.fromkeys(zip(part["epochs"], part["window_run"], strict=True)):
        first, _, last = span.partition("-")
        epochs = f"epoch {first}" if first == last else f"epochs {first}-{last}"
        windows.append(f"{epochs} (the last {int(last) - int(first) + 1} of the shortest run, {path})")
    runs = sorted(set(part["runs"]))
    spread = " ± the standard deviation across seeds" if max(runs) > 1 else ""
    notes = [
        f"mIoU, Pix Acc and <t in %, depth errors in the data's units, angles in degrees; each run's mean over "
        f"{'; or '.join(windows)}, then the mean over a row's runs{spread} "
        f"({'/'.join(map(str, runs))} seed{'s' if runs != [1] else ''})."
    ]
    base = set(part["delta_m_base"]) - {""}
    if "published" in base:
        notes.append(f"{DELTA}: of the averaged metrics against the lineage's single-task base (CAGrad's); lower is better.")
    elif "STL" in base:
        notes.append(
            f"{DELTA}: against this table's STL row ({dataset} has no published single-task base); lower is better."
        )
    if paper is not None and dataset in PAPER_PREFIX:
        mine = paper[paper["dataset"] == dataset]
        # beyond what rounding the columns (and the printed Delta_m, to 0.005) explains
        off = mine[(mine["delta_m"] - mine["delta_m_printed"]).abs() > mine["delta_m_rounding"] + 0.005]
        notes.append(
            f"(paper): Table 2's row, its {DELTA} recomputed from its own metric columns; '{DELTA} printed' is "
            "the value it prints. (diff): ours - paper."
        )
        if len(off):
            listed = ", ".join(f"{a} {p:+.2f} printed vs {d:+.2f}" for a, p, d in zip(
                off["algorithm"], off["delta_m_printed"], off["delta_m"], strict=True))  # fmt: skip
            notes.append(
                f"The paper's printed {DELTA} does not follow from its columns, beyond their rounding, for: {listed}."
            )
    missing = [
        f"{row} {key}" for _, r in part.iterrows() for row in [r["algorithm"]]
        for key in metric_keys(dataset) if key in r and not math.isfinite(r[key])
    ]  # fmt: skip
    if missing:
        notes.append(f"X: no finite value ({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''}).")
    return notes


def _note_text(lines: list[str], fmt: str) -> str:
    if fmt == "markdown":
        return "\n".join(f"- {line}" for line in lines) + "\n"
    if fmt == "latex":
        return "\n".join(f"{{\\footnotesize {line}\\par}}" for line in lines) + "\n"
    return "\n".join(lines) + "\n"


def render(
    records: list[dict], fmt: str = "text", compare_paper: bool = False, last: int = LAST_EPOCHS,
    include_unfinished: bool = False,
) -> str:  # fmt: skip
    """Table 2's layout for the multi-task records among ``records``, one table per data set,
    in format ``fmt``; with ``compare_paper``, the paper's row and the difference under each of
    ours on NYU-v2 and Cityscapes (``csv``/``json``: the frame, the paper's rows with
    ``source = "paper"``). Unfinished runs are left out (with a warning) unless
    ``include_unfinished``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    records = [r for r in records if is_multitask(r)]
    frame = table2_frame(records, last, include_unfinished)
    if frame.empty:
        return "no multi-task run to tabulate (see the warnings)\n"
    paper = paper_table2() if compare_paper else None
    if fmt in ("csv", "json"):
        out = frame.assign(source="ours")
        if paper is not None:
            out = pd.concat([out, paper.assign(source="paper")], ignore_index=True)
        if fmt == "csv":
            return out.to_csv(index=False, float_format="%.6g")
        return json.dumps(json.loads(out.to_json(orient="records")), indent=1) + "\n"
    parts = []
    order = [d for d in MULTITASK_TASKS if d in set(frame["dataset"])]
    for dataset in order + sorted(set(frame["dataset"]) - set(order)):
        reference = paper if dataset in PAPER_PREFIX else None
        nan_rows = frame[(frame["dataset"] == dataset)].filter(items=metric_keys(dataset, records))
        if not np.isfinite(nan_rows.to_numpy(dtype=float)).all():
            warnings.warn(f"{dataset}: some averaged metrics are not finite (a class absent from the val split?)", stacklevel=2)
        title = f"Table 2 layout, dataset: {dataset}"
        parts.append(_table_text(_printed(frame, dataset, records, reference), fmt, title))
        parts.append(_note_text(_notes(frame, dataset, reference), fmt))
    return "\n".join(parts)


__all__ = [
    "LAST_EPOCHS",
    "epoch_windows",
    "usable_runs",
    "is_multitask",
    "metric_keys",
    "paper_table2",
    "record_problem",
    "render",
    "row_order",
    "run_means",
    "table2_frame",
]
