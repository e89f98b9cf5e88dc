"""Figures from records (PNG, matplotlib): accuracy per algorithm and test domain, training
curves, and for SAGE sweeps the rho x gamma heatmap and the component ablation (paper Fig. 3)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from sage_bench.collect.selection import group_records, select
from sage_bench.collect.tables import AVERAGES, environment_names, results_frame

ABLATION_SWITCHES = ("orthogonalize", "layer_scale", "noise")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_by_domain(records: list[dict], path: Path, selection: str = "training-domain") -> Path:
    """Grouped bars: selected test accuracy per algorithm and test environment, one panel per
    data set, with standard-error bars over trials."""
    plt = _pyplot()
    frame = results_frame(records, selection)
    datasets = [d for d in dict.fromkeys(frame["dataset"]) if d != AVERAGES]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = frame[(frame["dataset"] == dataset) & (frame["env"] != "Avg")]
        with_data = part.groupby("algorithm", sort=False)["mean"].apply(lambda m: m.notna().any())
        algorithms = [a for a in dict.fromkeys(part["algorithm"]) if with_data[a]]
        labels = environment_names(dataset, records)
        width = 0.8 / max(len(algorithms), 1)
        for k, algorithm in enumerate(algorithms):
            rows = part[part["algorithm"] == algorithm]
            x = np.arange(len(rows)) + (k - (len(algorithms) - 1) / 2) * width
            ax.bar(x, rows["mean"].fillna(0), width, yerr=rows["sem"].fillna(0), label=algorithm, capsize=2)
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_xlabel("test environment")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{dataset} ({selection} selection)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_curves(records: list[dict], path: Path) -> Path:
    """Mean over runs of the test environment's in-split accuracy and of the training-domain
    validation accuracy against step, per data set and algorithm (single-test-env runs)."""
    plt = _pyplot()
    curves: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        args = r["args"]
        if len(args["test_envs"]) != 1:
            continue
        t = args["test_envs"][0]
        n = sum(1 for k in r if k.endswith("_out_acc") and k.startswith("env"))
        val = np.mean([r[f"env{i}_out_acc"] for i in range(n) if i != t])
        curves[(args["dataset"], args["algorithm"])][r["step"]].append((r[f"env{t}_in_acc"], val))
    datasets = list(dict.fromkeys(d for d, _ in curves))
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(5.5 * max(len(datasets), 1), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for (d, algorithm), by_step in curves.items():
            if d != dataset:
                continue
            steps = sorted(by_step)
            test = [100 * np.mean([a for a, _ in by_step[s]]) for s in steps]
            val = [100 * np.mean([v for _, v in by_step[s]]) for s in steps]
            (line,) = ax.plot(steps, test, label=f"{algorithm} test")
            ax.plot(steps, val, "--", color=line.get_color(), alpha=0.6, label=f"{algorithm} train-domain val")
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(dataset)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_by_setting(records: list[dict], setting, selection: str = "training-domain") -> dict:
    """Mean selected test accuracy (%) over (data set, test env, trial) for every value of
    ``setting(record)``; runs with the same value compete by validation accuracy as usual."""
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
    """SAGE's accuracy over the (rho, gamma) grid of the records (paper Fig. 3, left);
    ``None`` when the records hold fewer than two values of either."""
    sage = [r for r in records if r["args"]["algorithm"] == "SAGE" and "rho" in r.get("hparams", {})]
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
    ax.set_title(f"SAGE accuracy (%), {selection} selection")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ablation_label(record: dict) -> str:
    off = [s for s in ABLATION_SWITCHES if record["hparams"].get(s) is False]
    return "SAGE" if not off else "w/o " + ", ".join(off)


def ablation_bars(records: list[dict], path: Path, selection: str = "training-domain") -> Path | None:
    """SAGE with each component switched off (paper Fig. 3, right); ``None`` when the records
    hold a single setting of the switches."""
    sage = [r for r in records if r["args"]["algorithm"] == "SAGE"]
    accs = accuracy_by_setting(sage, _ablation_label, selection)
    if len(accs) < 2:
        return None
    plt = _pyplot()
    labels = sorted(accs, key=lambda label: (label != "SAGE", label))
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 1, 3.5))
    ax.bar(range(len(labels)), [accs[label] for label in labels], color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    low = min(accs.values())
    ax.set_ylim(max(0.0, low - 5), max(accs.values()) + 2)
    ax.set_title(f"SAGE components, {selection} selection")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(records: list[dict], folder: str | Path, selection: str = "training-domain") -> list[Path]:
    """Every figure the records support, written into ``folder``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        accuracy_by_domain(records, folder / "accuracy_by_domain.png", selection),
        training_curves(records, folder / "training_curves.png"),
        rho_gamma_heatmap(records, folder / "sage_rho_gamma.png", selection),
        ablation_bars(records, folder / "sage_ablation.png", selection),
    ]
    return [p for p in written if p is not None]
