"""One-command reproductions: the paper's Table 1 (``table1``) and the whole pipeline on the
embedded digits in a few CPU minutes (``quick``). Both plan a sweep, run what is missing (so
running the same command again continues), select models with training-domain validation, and
write the tables and figures."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sage_bench.collect import find_runs, render, write_figures
from sage_bench.collect.tables import TABLE1_DATASETS
from sage_bench.data import get_dataset_class
from sage_bench.errors import UserError
from sage_bench.sweep.plan import Sweep, SweepJob
from sage_bench.sweep.state import DONE, format_status, sweep_states

TABLE1_ALGORITHMS = ["ERM", "SAM", "GSAM", "SAGM", "DISAM", "SAGE"]
SELECTION = "training-domain"


def resolve_algorithms(names: Sequence[str] | None = None) -> list[str]:
    """The algorithms to run: ``None`` gives the paper's six (``TABLE1_ALGORITHMS``), ``["all"]``
    every registered domain-generalization algorithm in Table 1's row order; other names are
    checked against the registry (an unknown one is an error listing the valid names)."""
    from sage_bench.algorithms.registry import DOMAIN_GENERALIZATION, algorithms, get_algorithm
    from sage_bench.collect.tables import algorithm_order

    if not names:
        return list(TABLE1_ALGORITHMS)
    if list(names) == ["all"]:
        return algorithm_order(algorithms(DOMAIN_GENERALIZATION))
    for name in names:
        get_algorithm(name)
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# Table 1


@dataclass(frozen=True)
class CostModel:
    """What one job costs on one A100 (40 GB, bf16), for planning only.

    - ``erm_step_s``: one ERM step of a ViT-B/16 on 12 images at 224 px, data loading included
      (the forward+backward is ~0.63 TFLOP; at small batch the GPU reaches a fraction of its
      peak, and decoding 12 augmented JPEGs takes 8 workers ~15 ms).
    - ``step_factor``: a step of each algorithm in ERM steps (the SAM family runs two passes;
      SAGE adds its Newton-Schulz iterations, ~1.5 TFLOP per step for ViT-B/16 in TF32).
    - ``eval_images_per_s``: evaluation throughput; every checkpoint evaluates every
      environment's in- and out-split, i.e. the whole data set, which dominates DomainNet.

    The numbers are estimates, not measurements; pass your own to ``estimate_hours``. A MIG
    slice has a fraction of an A100's compute (a 3g.20gb slice about 3/7).
    """

    erm_step_s: float = 0.03
    eval_images_per_s: float = 2000.0
    step_factor: tuple[tuple[str, float], ...] = (
        ("ERM", 1.0), ("SAM", 2.0), ("GSAM", 2.0), ("SAGM", 2.0), ("DISAM", 2.0), ("SAGE", 2.4),
        ("IRM", 1.0), ("VREx", 1.0), ("GroupDRO", 1.0), ("Mixup", 1.0), ("MMD", 1.0), ("CORAL", 1.0),
        ("RSC", 1.1), ("Fish", 1.1), ("DANN", 1.0), ("CDANN", 1.0), ("IIB", 1.0), ("GAM", 4.0),
        ("GGA-L", 2.0), ("GGA", 5.2),  # GGA: 51 of 5001 updates search 250 neighbours (~400 ERM steps each)
    )  # fmt: skip

    def job_hours(self, job: SweepJob) -> float:
        spec = job.spec
        cls = get_dataset_class(spec.dataset)
        images = sum(getattr(cls, "EXPECTED_IMAGES", {}).values())
        evaluations = spec.steps // spec.checkpoint_freq + 1
        factor = dict(self.step_factor).get(spec.algorithm, 2.0)
        seconds = spec.steps * self.erm_step_s * factor + evaluations * images / self.eval_images_per_s
        return seconds / 3600


def table1_sweep(output_dir: str | Path, data_dir: str | Path | None = None, trials: int = 3,
                 datasets: Sequence[str] = TABLE1_DATASETS, overrides: Sequence[str] = (),
                 algorithms: Sequence[str] = TABLE1_ALGORITHMS) -> Sweep:  # fmt: skip
    """Every job of Table 1: the algorithms (default: the paper's six) on the five data sets,
    each environment held out in turn, ``trials`` trials, the paper's setting
    (``experiment=paper_domainbed``: CLIP ViT-B/16, Adam, lr 1e-6, 12 images a step; SAGE's
    rho = gamma = 1e-6) with default hyperparameters (``hparams_seed=0``, as the paper reports
    one setting)."""
    extra = ["experiment=paper_domainbed"]
    if data_dir is not None:
        extra.append(f"data_dir={Path(data_dir).resolve()}")
    return Sweep(
        output_dir=Path(output_dir),
        datasets=list(datasets),
        algorithms=list(algorithms),
        test_envs="single",
        hparams_seeds=range(1),
        trial_seeds=range(trials),
        overrides=[*extra, *overrides],
        name="table1",
    )


def describe_plan(jobs: Sequence[SweepJob], cost: CostModel = CostModel()) -> str:
    """Jobs and estimated A100-hours per data set and in total."""
    lines = [f"{'dataset':<16}{'jobs':>6}{'A100-hours':>12}"]
    total_jobs, total_hours = 0, 0.0
    for dataset in dict.fromkeys(job.spec.dataset for job in jobs):
        part = [job for job in jobs if job.spec.dataset == dataset]
        hours = sum(cost.job_hours(job) for job in part)
        lines.append(f"{dataset:<16}{len(part):>6}{hours:>12.1f}")
        total_jobs += len(part)
        total_hours += hours
    lines.append(f"{'total':<16}{total_jobs:>6}{total_hours:>12.1f}")
    lines.append(
        f"(estimate: {cost.erm_step_s * 1000:.0f} ms per ERM step, {cost.eval_images_per_s:.0f} "
        "images/s evaluation, on a whole A100; a 3g.20gb MIG slice takes about 7/3 as long per job)"
    )
    return "\n".join(lines)


def write_tables(records: list[dict], folder: Path, compare_paper: bool) -> str:
    """Write ``table.md``, ``table.csv`` and the figures into ``folder``; return the text table."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(render(records, SELECTION, "markdown", compare_paper))
    (folder / "table.csv").write_text(render(records, SELECTION, "csv", compare_paper))
    write_figures(records, folder, SELECTION)
    return render(records, SELECTION, "text", compare_paper)


def reproduce_table1(
    output_dir: Path,
    data_dir: Path | None = None,
    launcher_overrides: Sequence[str] = (),
    dry_run: bool = False,
    trials: int = 3,
    results_dir: Path = Path("results/table1"),
    algorithms: Sequence[str] = TABLE1_ALGORITHMS,
) -> int:
    """Plan, launch what is missing, and, once every job is done, print Table 1 beside the
    paper's and write it (Markdown, CSV, figures) to ``results_dir``."""
    from sage_bench.sweep.launch import launch_sweep

    sweep = table1_sweep(output_dir, data_dir, trials, algorithms=algorithms)
    jobs = sweep.jobs()
    print(describe_plan(jobs))
    if dry_run:
        return 0
    code = launch_sweep(sweep, launcher_overrides)
    states = sweep_states(jobs)
    if any(states[job.job_dir] != DONE for job in jobs):
        print(format_status(jobs, states))
        print("Table 1 needs every job; run this command again to continue and collect.")
        return code
    records = find_runs(output_dir).completed().records
    print(write_tables(records, results_dir, compare_paper=True))
    print(f"wrote {results_dir}/table.md, table.csv and figures")
    return code


# ---------------------------------------------------------------------------------------------
# Quick: the embedded default end to end on a CPU


QUICK_OVERRIDES = ("steps=200", "checkpoint_freq=50", "hparams.batch_size=32", "device=cpu")


def quick_sweep(output_dir: Path, dataset: str = "RotatedDigits", overrides: Sequence[str] = QUICK_OVERRIDES,
                algorithms: Sequence[str] = TABLE1_ALGORITHMS) -> Sweep:  # fmt: skip
    """The algorithms (default: the paper's six) on an embedded data set, every environment
    held out in turn, one trial, default hyperparameters, a short schedule."""
    return Sweep(
        output_dir=output_dir,
        datasets=[dataset],
        algorithms=list(algorithms),
        test_envs="single",
        hparams_seeds=range(1),
        trial_seeds=range(1),
        overrides=list(overrides),
        name="quick",
    )


def reproduce_quick(results_dir: Path = Path("results/quick"), dataset: str = "RotatedDigits",
                    overrides: Sequence[str] = QUICK_OVERRIDES,
                    algorithms: Sequence[str] = TABLE1_ALGORITHMS) -> str:  # fmt: skip
    """Run the quick sweep in this process (finished jobs are skipped), then write
    ``table.md``, ``table.csv`` and figures into ``results_dir`` and return the text table."""
    from tqdm.auto import tqdm

    from sage_bench.run import run_job

    start = time.time()
    sweep = quick_sweep(results_dir / "runs", dataset, overrides, algorithms)
    jobs = sweep.jobs()
    states = sweep_states(jobs)
    todo = [job for job in jobs if states[job.job_dir] != DONE]
    print(f"{len(jobs)} jobs ({len(jobs) - len(todo)} already done) in {results_dir / 'runs'}")
    for job in tqdm(todo, desc="jobs", dynamic_ncols=True):
        run_job(job.spec, console=False)
    collection = find_runs(results_dir / "runs").completed()
    if not collection.records:
        raise UserError(f"no finished runs in {results_dir / 'runs'}")
    text = write_tables(collection.records, results_dir, compare_paper=False)
    print(text)
    print(f"wrote {results_dir}/table.md, table.csv and figures in {time.time() - start:.0f} s")
    return text
