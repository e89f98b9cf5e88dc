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
                 datasets: Sequence[str] = TABLE1_DATASETS, overrides: Sequence[str] = ()) -> Sweep:  # fmt: skip
    """Every job of Table 1: the six algorithms on the five data sets, each environment held
    out in turn, ``trials`` trials, the paper's setting (``experiment=paper_domainbed``: CLIP
    ViT-B/16, Adam, lr 1e-6, 12 images a step; SAGE's rho = gamma = 1e-6) with default
    hyperparameters (``hparams_seed=0``, as the paper reports one setting)."""
    extra = ["experiment=paper_domainbed"]
    if data_dir is not None:
        extra.append(f"data_dir={Path(data_dir).resolve()}")
    return Sweep(
        output_dir=Path(output_dir),
        datasets=list(datasets),
        algorithms=TABLE1_ALGORITHMS,
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
) -> int:
    """Plan, launch what is missing, and, once every job is done, print Table 1 beside the
    paper's and write it (Markdown, CSV, figures) to ``results_dir``."""
    from sage_bench.sweep.launch import launch_sweep

    sweep = table1_sweep(output_dir, data_dir, trials)
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


QUICK_STEPS = 200
QUICK_OVERRIDES = (f"steps={QUICK_STEPS}", "checkpoint_freq=50", "hparams.batch_size=32", "device=cpu", "progress=false")
# the quick sweep at this length, over 3 trials, is close to converged (README: "Quick start")
CONVERGED_STEPS = 600
CONVERGED_TRIALS = 3


def quick_sweep(
    output_dir: Path, dataset: str = "RotatedDigits", overrides: Sequence[str] = QUICK_OVERRIDES, trials: int = 1
) -> Sweep:
    """All six algorithms on an embedded data set, every environment held out in turn,
    ``trials`` trials, default hyperparameters, a short schedule."""
    return Sweep(
        output_dir=output_dir,
        datasets=[dataset],
        algorithms=TABLE1_ALGORITHMS,
        test_envs="single",
        hparams_seeds=range(1),
        trial_seeds=range(trials),
        overrides=list(overrides),
        name="quick",
    )


def quick_caveat(steps: int, trials: int) -> str | None:
    """What a reader of the quick table must know, or ``None`` for the converged variant."""
    short = steps < CONVERGED_STEPS
    few = trials < CONVERGED_TRIALS
    if not (short or few):
        return None
    what = ", ".join(
        part
        for part in (
            ("one trial" if trials == 1 else f"{trials} trials") if few else "",
            f"not converged ({steps} steps)" if short else "",
        )
        if part
    )
    return (
        f"{what}: a smoke test of the pipeline, not a comparison of the algorithms "
        f"(--trials {CONVERGED_TRIALS} --steps {CONVERGED_STEPS} for one)"
    )


def reproduce_quick(
    results_dir: Path = Path("results/quick"),
    dataset: str = "RotatedDigits",
    overrides: Sequence[str] = QUICK_OVERRIDES,
    trials: int = 1,
    workers: int | None = None,
) -> str:
    """Run the quick sweep (finished jobs are skipped) in ``workers`` processes, one per core by
    default (``sage_bench.sweep.pool``), then write ``table.md``, ``table.csv`` and figures into
    ``results_dir`` and return the text table, with its caveat under it."""
    from tqdm.auto import tqdm

    from sage_bench.sweep.pool import available_cores, run_jobs_in_processes

    start = time.time()
    sweep = quick_sweep(results_dir / "runs", dataset, overrides, trials)
    jobs = sweep.jobs()
    states = sweep_states(jobs)
    todo = [job.spec for job in jobs if states[job.job_dir] != DONE]
    workers = min(workers or available_cores(), max(1, len(todo)))
    print(f"{len(jobs)} jobs ({len(jobs) - len(todo)} already done) in {results_dir / 'runs'}, {workers} at a time")
    with tqdm(total=len(todo), desc="jobs", dynamic_ncols=True) as bar:
        outcome = run_jobs_in_processes(todo, workers, on_done=lambda spec: bar.update())
    if outcome.failed:
        lines = [f"  {spec.job_dir}: {type(error).__name__}: {error}" for spec, error in outcome.failed]
        raise UserError(f"{len(outcome.failed)} quick job(s) failed (err.txt in each folder):\n" + "\n".join(lines))
    collection = find_runs(results_dir / "runs").completed()
    if not collection.records:
        raise UserError(f"no finished runs in {results_dir / 'runs'}")
    text = write_tables(collection.records, results_dir, compare_paper=False)
    caveat = quick_caveat(min(job.spec.steps for job in jobs), trials)
    if caveat:
        text += f"\nNote: {caveat}.\n"
        with open(results_dir / "table.md", "a", encoding="utf-8") as f:
            f.write(f"\n**Note:** {caveat}.\n")
    print(text)
    print(f"wrote {results_dir}/table.md, table.csv and figures in {time.time() - start:.0f} s")
    return text
