"""Figures from records (PNG, matplotlib): accuracy per algorithm and test domain, training
curves of the selected runs, and for SAGE sweeps, per data set, the rho x gamma heatmap and the
component ablation (the paper's Figure 3, left and right)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

from sage_bench.collect.selection import algorithm_name, env_count, group_records, select
from sage_bench.collect.tables import AVERAGES, algorithm_order, environment_names, results_frame


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def accuracy_by_domain(records: list[dict], path: Path, selection: str = "training-domain") -> Path:
    """Grouped bars: selected test accuracy per algorithm and test environment, one panel per
    data set, with standard-error bars over trials (the numbers of the tables)."""
    plt = _pyplot()
    frame = results_frame(records, selection)
    datasets = [d for d in dict.fromkeys(frame["dataset"]) if d != AVERAGES]
    algorithms = [a for a in dict.fromkeys(frame["algorithm"]) if frame[frame["algorithm"] == a]["mean"].notna().any()]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets) + 2, 4), squeeze=False, layout="constrained")
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = frame[(frame["dataset"] == dataset) & (frame["env"] != "Avg")]
        labels = environment_names(dataset, records)
        width = 0.8 / max(len(algorithms), 1)
        for k, algorithm in enumerate(algorithms):
            rows = part[part["algorithm"] == algorithm]
            x = np.arange(len(rows)) + (k - (len(algorithms) - 1) / 2) * width
            has = rows["mean"].notna().to_numpy()  # no bar where the table has X
            ax.bar(x[has], rows["mean"][has], width, yerr=rows["sem"][has], label=algorithm, capsize=2, color=f"C{k}")
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_xlabel("test environment")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{dataset} ({selection} selection)")
    if algorithms:
        from matplotlib.patches import Patch

        handles = [Patch(color=f"C{k}", label=algorithm) for k, algorithm in enumerate(algorithms)]
        fig.legend(handles=handles, fontsize=8, loc="outside right upper")
    return _save(fig, path)


def selected_curves(records: list[dict], selection: str = "training-domain") -> dict[tuple[str, str], dict]:
    """Per (data set, algorithm) and step, the mean over groups (test environments x trials) of
    the selected configuration's single-test-environment records: ``test`` (the test
    environment's in-split accuracy, %), ``val`` (training-domain validation accuracy, %) and
    ``loss`` when the records have it."""
    points: dict[tuple[str, str], dict[float, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for key, group in group_records(records).items():
        chosen = select(selection, group, key.test_env)
        if chosen is None:
            continue
        for r in chosen["records"]:
            if r["args"]["test_envs"] != [key.test_env]:
                continue
            at = points[(key.dataset, key.algorithm)][r["step"]]
            at["test"].append(100 * r[f"env{key.test_env}_in_acc"])
            at["val"].append(100 * np.mean([r[f"env{i}_out_acc"] for i in range(env_count(r)) if i != key.test_env]))
            if isinstance(r.get("loss"), (int, float)):
                at["loss"].append(r["loss"])
    return {
        cell: {
            "step": sorted(by_step),
            **{
                name: [float(np.mean(by_step[s][name])) if by_step[s][name] else math.nan for s in sorted(by_step)]
                for name in ("test", "val", "loss")
            },
        }
        for cell, by_step in points.items()
    }


def training_curves(records: list[dict], path: Path, selection: str = "training-domain") -> Path | None:
    """Accuracy (test environment in-split, solid; training-domain validation, dashed) and, when
    recorded, the training loss against step: one column per data set, averaged over the
    selected runs of every test environment and trial (see ``selected_curves``); ``None`` when
    the selection chooses no run."""
    curves = selected_curves(records, selection)
    if not curves:
        return None
    plt = _pyplot()
    datasets = list(dict.fromkeys(d for d, _ in curves))
    colours = {a: f"C{k}" for k, a in enumerate(algorithm_order(a for _, a in curves))}
    has_loss = any(not all(math.isnan(v) for v in c["loss"]) for c in curves.values())
    rows = 2 if has_loss else 1
    fig, axes = plt.subplots(rows, len(datasets), figsize=(5.5 * len(datasets), 4 * rows), squeeze=False)
    for column, dataset in enumerate(datasets):
        ax = axes[0][column]
        for algorithm in algorithm_order(a for d, a in curves if d == dataset):
            c, colour = curves[(dataset, algorithm)], colours[algorithm]
            ax.plot(c["step"], c["test"], color=colour, label=f"{algorithm} test")
            ax.plot(c["step"], c["val"], "--", color=colour, alpha=0.6, label=f"{algorithm} training-domain val")
            if has_loss:
                axes[1][column].plot(c["step"], c["loss"], color=colour, label=algorithm)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{dataset} ({selection} selection)")
        ax.legend(fontsize=7)
        if has_loss:
            axes[1][column].set_xlabel("step")
            axes[1][column].set_ylabel("training loss")
            axes[1][column].legend(fontsize=7)
    return _save(fig, path)


def accuracy_by_setting(
    records: list[dict], setting: Callable[[dict], Hashable], selection: str = "training-domain"
) -> dict:
    """Mean selected test accuracy (%) over the groups (test environment x trial) for every
    value of ``setting(record)``: within a group, the runs of one value compete by validation
    accuracy as usual (e.g. over ``hparams_seed``), the runs of other values do not take part."""
    by_value: dict = defaultdict(list)
    for key, group in group_records(records).items():
        split: dict = defaultdict(list)
        for r in group:
            split[setting(r)].append(r)
        for value, part in split.items():
            chosen = select(selection, part, key.test_env)
            if chosen is not None:
                by_value[value].append(100 * chosen["test_acc"])
    return {value: float(np.mean(accs)) for value, accs in by_value.items()}


def rho_gamma_heatmap(records: list[dict], path: Path, selection: str = "training-domain") -> Path | None:
    """SAGE's accuracy over the (rho, gamma) grid of one data set's records (the paper's Fig. 3,
    left; every component on); ``None`` when the records hold fewer than two values of either."""
    sage = [
        r for r in records
        if algorithm_name(r) == "SAGE" and isinstance(r.get("hparams"), dict) and {"rho", "gamma"} <= set(r["hparams"])
    ]  # fmt: skip
    accs = accuracy_by_setting(sage, lambda r: (r["hparams"]["rho"], r["hparams"]["gamma"]), selection)
    rhos = sorted({rho for rho, _ in accs})
    gammas = sorted({gamma for _, gamma in accs})
    if len(rhos) < 2 or len(gammas) < 2:
        return None
    plt = _pyplot()
    grid = np.array([[accs.get((rho, gamma), math.nan) for rho in rhos] for gamma in gammas])
    fig, ax = plt.subplots(figsize=(1.2 * len(rhos) + 2, 1.0 * len(gammas) + 1.5))
    image = ax.imshow(grid, origin="lower", cmap="viridis")
    for i in range(len(gammas)):
        for j in range(len(rhos)):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    ax.set_yticks(range(len(gammas)), [f"{g:g}" for g in gammas])
    ax.set_xlabel("rho")
    ax.set_ylabel("gamma")
    datasets = ", ".join(dict.fromkeys(r["args"]["dataset"] for r in sage))
    ax.set_title(f"SAGE on {datasets}: accuracy (%), {selection} selection", fontsize=9)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def ablation_bars(records: list[dict], path: Path, selection: str = "training-domain") -> Path | None:
    """SAGE beside its variants with components switched off, on one data set (the paper's
    Fig. 3, right): each bar is the variant's number in the ``Averages`` table (per trial the
    mean over the test environments, then mean and standard error over trials); ``None`` when
    the records hold fewer than two variants."""
    sage = [r for r in records if r["args"]["algorithm"] == "SAGE"]
    if not sage:
        return None
    frame = results_frame(sage, selection)
    dataset = sage[0]["args"]["dataset"]
    bars = frame[(frame["dataset"] == AVERAGES) & (frame["env"] == dataset) & frame["mean"].notna()]
    if len(bars) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(bars) + 1, 3.5))
    ax.bar(range(len(bars)), bars["mean"], yerr=bars["sem"], color="tab:blue", capsize=3)
    ax.set_xticks(range(len(bars)), bars["algorithm"], rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(max(0.0, bars["mean"].min() - 5), bars["mean"].max() + 2)
    ax.set_title(f"SAGE components on {dataset}, {selection} selection", fontsize=9)
    return _save(fig, path)


def write_figures(records: list[dict], folder: str | Path, selection: str = "training-domain") -> list[Path]:
    """Every figure the records support, written into ``folder`` (created if needed); returns
    the paths: ``accuracy_by_domain.png``, ``training_curves.png`` and, per data set with a SAGE
    grid or ablation, ``sage_rho_gamma_<dataset>.png`` and ``sage_ablation_<dataset>.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        accuracy_by_domain(records, folder / "accuracy_by_domain.png", selection),
        training_curves(records, folder / "training_curves.png", selection),
    ]
    for dataset in dict.fromkeys(r["args"]["dataset"] for r in records):
        part = [r for r in records if r["args"]["dataset"] == dataset]
        written.append(rho_gamma_heatmap(part, folder / f"sage_rho_gamma_{_slug(dataset)}.png", selection))
        written.append(ablation_bars(part, folder / f"sage_ablation_{_slug(dataset)}.png", selection))
    return [p for p in written if p is not None]
