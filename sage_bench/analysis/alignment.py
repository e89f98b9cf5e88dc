"""Figure 5 / Appendix F: the cosine between the mean training-domain gradient and the held-out
domain's gradient over training, read from jobs' output folders.

Jobs log it when trained with ``test_grad_cosine_freq=N`` (``sage_bench.run.alignment``): each
record holds ``test_grad_cosine_trace``, the ``[step, cosine]`` pairs measured since the
previous record. This reads every job folder under the given folders, plots each job's cosine
over steps (faint: as measured; bold: smoothed, as the paper's figure), one panel per data
set, and summarises each job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sage_bench.analysis.report import Report, Row, figure
from sage_bench.errors import UserError
from sage_bench.records import RESULTS_FILE, read_records

NAME = "alignment"
FREQ_KEY = "test_grad_cosine_freq"


@dataclass
class Series:
    """One job's cosines over steps."""

    folder: Path
    dataset: str
    algorithm: str
    test_envs: list[int]
    trial_seed: int
    steps: np.ndarray
    cosines: np.ndarray

    @property
    def label(self) -> str:
        envs = ",".join(str(e) for e in self.test_envs)
        return f"{self.algorithm}, test env {envs}, trial {self.trial_seed}"


def job_folders(folders: Sequence[str | Path]) -> list[Path]:
    """Every folder holding a results file, at or below each of ``folders``."""
    found = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"no such folder: {folder}")
        jobs = sorted({p.parent for p in folder.rglob(RESULTS_FILE)})
        if not jobs:
            raise UserError(f"no {RESULTS_FILE} at or below {folder}: give job folders or a folder that holds them")
        found.extend(jobs)
    return found


def read_series(job_dir: Path) -> Series | None:
    """The job's cosines, or ``None`` if it was trained without ``test_grad_cosine_freq``."""
    records = read_records(job_dir)
    pairs = [pair for record in records for pair in record.get("test_grad_cosine_trace", [])]
    if not pairs:
        return None
    pairs.sort()
    args = records[-1].get("args", {})
    return Series(
        folder=job_dir,
        dataset=str(args.get("dataset", "?")),
        algorithm=str(args.get("algorithm", "?")),
        test_envs=list(args.get("test_envs", [])),
        trial_seed=int(args.get("trial_seed", 0)),
        steps=np.array([p[0] for p in pairs], dtype=float),
        cosines=np.array([p[1] for p in pairs], dtype=float),
    )


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing); 0: none."""
    if not 0.0 <= weight < 1.0:
        raise UserError(f"smoothing must be in [0, 1), got {weight}")
    out = np.empty_like(values, dtype=float)
    average = 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        out[i] = average / (1 - weight ** (i + 1))
    return out


def run(out_dir: Path, folders: Sequence[str | Path], smoothing: float = 0.9) -> Report:
    """Read, summarise and plot the cosines of every job under ``folders``."""
    report = Report(NAME, Path(out_dir))
    jobs = job_folders(folders)
    series, without = [], []
    for job in jobs:
        s = read_series(job)
        (series if s is not None else without).append(s or job)
    if not series:
        raise UserError(
            f"none of the {len(jobs)} job(s) logged the cosine; train with {FREQ_KEY}=N "
            "(e.g. sage-bench train ... test_grad_cosine_freq=1) into a new output_dir"
        )
    datasets = sorted({s.dataset for s in series})
    summary = {}
    for s in series:
        smoothed = smooth(s.cosines, smoothing)
        section = f"{s.dataset}: cosine of the mean training-domain gradient with the held-out domain's"
        report.add(section, Row(
            s.label,
            [float(s.cosines.mean()), float(smoothed[-1])],
            note=f"{len(s.steps)} values, steps {int(s.steps[0])}..{int(s.steps[-1])}; {s.folder}",
        ))
        summary[str(s.folder)] = {
            "dataset": s.dataset, "algorithm": s.algorithm, "test_envs": s.test_envs, "trial_seed": s.trial_seed,
            "steps": s.steps, "cosine": s.cosines, "smoothed": smoothed,
            "mean": float(s.cosines.mean()), "last_smoothed": float(smoothed[-1]),
        }
    report.notes.append("computed: (mean over all measured steps, last smoothed value); "
                        f"smoothing: exponential moving average, weight {smoothing:g}.")
    if without:
        report.notes.append(f"{len(without)} job folder(s) without the cosine were skipped: "
                            + ", ".join(str(p) for p in without[:5]) + (" ..." if len(without) > 5 else ""))
    report.data = {"smoothing": smoothing, "jobs": summary}

    fig, axes = figure(5.5 * len(datasets), 4.0, columns=len(datasets))
    axes = np.atleast_1d(axes)
    for ax, dataset in zip(axes, datasets, strict=True):
        for i, s in enumerate(x for x in series if x.dataset == dataset):
            color = f"C{i % 10}"
            ax.plot(s.steps, s.cosines, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(s.steps, smooth(s.cosines, smoothing), color=color, linewidth=1.8, label=s.label)
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.set_title(dataset)
        ax.set_xlabel("step")
        ax.set_ylabel("cos(mean training gradient, held-out gradient)")
        ax.legend(fontsize=7)
    report.save_figure(fig, "alignment.png")
    report.write()
    return report
