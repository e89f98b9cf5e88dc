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
    - Evaluation, at every checkpoint, of the splits the job evaluates (``eval_splits``: every
      split, or what model selection reads). The GPU evaluates ``gpu_images_per_s``; the images
      come from the evaluation cache (one core reads ``cache_images_per_s_per_core``, so the GPU
      is the limit) or are decoded from JPEGs by ``cpu_cores`` cores at
      ``jpeg_images_per_s_per_core`` each (80 for 500-pixel photos, 110 for PACS's 227-pixel
      images: ``benchmarks/eval_input.py``), whichever is slower: 8 cores decode 640 images/s, a
      third of the GPU's pace. Augmented evaluations (training environments with
      ``dataset.eval_augment=true``) are always decoded.

    The numbers are estimates, not measurements of a whole run; pass your own. A MIG slice has a
    fraction of an A100's compute (a 3g.20gb slice about 3/7) and usually fewer cores.
    """

    erm_step_s: float = 0.03
    gpu_images_per_s: float = 2000.0
    cpu_cores: int = 8
    jpeg_images_per_s_per_core: float = 80.0
    cache_images_per_s_per_core: float = 7000.0
    step_factor: tuple[tuple[str, float], ...] = (
        ("ERM", 1.0), ("SAM", 2.0), ("GSAM", 2.0), ("SAGM", 2.0), ("DISAM", 2.0), ("SAGE", 2.4),
    )  # fmt: skip

    def checkpoint_images(self, job: SweepJob, cached: bool, eval_splits: str | None = None) -> tuple[int, int]:
        """Images one checkpoint evaluates: (from the cache, decoded from JPEGs)."""
        spec = job.spec
        sizes = list(getattr(get_dataset_class(spec.dataset), "EXPECTED_IMAGES", {}).values())
        augmented = spec.hparams.get("data_augmentation", True) and spec.dataset_options.get("eval_augment", True)
        from_cache = from_jpeg = 0
        for i, n in enumerate(sizes):
            out = int(n * spec.holdout_fraction)
            for part, images in (("in", n - out), ("out", out)):
                if (eval_splits or spec.eval_splits) == "selection" and part == "in" and i not in spec.test_envs:
                    continue
                if cached and not (augmented and i not in spec.test_envs):
                    from_cache += images
                else:
                    from_jpeg += images
        return from_cache, from_jpeg

    def job_hours(self, job: SweepJob, cached: bool = False, eval_splits: str | None = None) -> float:
        """GPU hours of ``job``; ``cached``: with the evaluation cache; ``eval_splits``: instead of the job's."""
        spec = job.spec
        evaluations = spec.steps // spec.checkpoint_freq + 1
        factor = dict(self.step_factor).get(spec.algorithm, 2.0)
        from_cache, from_jpeg = self.checkpoint_images(job, cached, eval_splits)
        cache_rate = min(self.gpu_images_per_s, self.cpu_cores * self.cache_images_per_s_per_core)
        jpeg_rate = min(self.gpu_images_per_s, self.cpu_cores * self.jpeg_images_per_s_per_core)
        evaluation = evaluations * (from_cache / cache_rate + from_jpeg / jpeg_rate)
        return (spec.steps * self.erm_step_s * factor + evaluation) / 3600


def table1_sweep(output_dir: str | Path, data_dir: str | Path | None = None, trials: int = 3,
                 datasets: Sequence[str] = TABLE1_DATASETS, overrides: Sequence[str] = ()) -> Sweep:  # fmt: skip
    """Every job of Table 1: the six algorithms on the five data sets, each environment held
    out in turn, ``trials`` trials, the paper's setting (``experiment=paper_domainbed``: CLIP
    ViT-B/16, Adam, lr 1e-6, 12 images a step; SAGE's rho = gamma = 1e-6) with default
    hyperparameters (``hparams_seed=0``, as the paper reports one setting). Jobs evaluate only
    what model selection reads (``eval_splits=selection``: the same table for less GPU time) and
    read their evaluation images from the cache where ``sage-bench data cache`` made one."""
    extra = ["experiment=paper_domainbed", "eval_splits=selection"]
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


def cached_datasets(jobs: Sequence[SweepJob]) -> set[str]:
    """The data sets of ``jobs`` with an evaluation cache at their input size (complete, not yet
    checked against the files: each job checks before it uses it)."""
    from sage_bench.data.eval_cache import MANIFEST, cache_path
    from sage_bench.models import backbone_preprocess

    found = set()
    for job in jobs:
        spec = job.spec
        preprocess = backbone_preprocess(spec.backbone, spec.backbone_options)
        if preprocess and (cache_path(spec.data_dir, spec.dataset, preprocess.image_size) / MANIFEST).exists():
            found.add(spec.dataset)
    return found


def describe_plan(jobs: Sequence[SweepJob], cost: CostModel = CostModel(), cached: set[str] = frozenset()) -> str:  # noqa: B008
    """Jobs and estimated A100-hours per data set and in total: as planned (with the caches in
    ``cached``), with every data set cached, and with DomainBed's evaluation (every split, JPEGs)."""
    lines = [f"{'dataset':<16}{'jobs':>6}{'A100-hours':>12}{'all cached':>12}{'DomainBed':>11}"]
    totals = [0, 0.0, 0.0, 0.0]
    for dataset in dict.fromkeys(job.spec.dataset for job in jobs):
        part = [job for job in jobs if job.spec.dataset == dataset]
        row = [
            len(part),
            sum(cost.job_hours(job, cached=dataset in cached) for job in part),
            sum(cost.job_hours(job, cached=True) for job in part),
            sum(cost.job_hours(job, cached=False, eval_splits="all") for job in part),
        ]
        totals = [t + r for t, r in zip(totals, row, strict=True)]
        lines.append(f"{dataset:<16}{row[0]:>6}{row[1]:>12.1f}{row[2]:>12.1f}{row[3]:>11.1f}")
    lines.append(f"{'total':<16}{totals[0]:>6}{totals[1]:>12.1f}{totals[2]:>12.1f}{totals[3]:>11.1f}")
    splits = ", ".join(sorted({job.spec.eval_splits for job in jobs}))
    lines.append(
        f"(A100-hours: as planned, eval_splits={splits}, evaluation cache found for "
        f"{', '.join(sorted(cached)) or 'no data set'}; with every data set cached; DomainBed's evaluation of "
        f"every split from JPEGs. Estimate: {cost.erm_step_s * 1000:.0f} ms per ERM step, evaluation at "
        f"{cost.gpu_images_per_s:,.0f} images/s from the cache or {cost.cpu_cores} cores x "
        f"{cost.jpeg_images_per_s_per_core:.0f} images/s decoding JPEGs, on a whole A100; a 3g.20gb MIG "
        "slice takes about 7/3 as long per job)"
    )
    missing = [d for d in dict.fromkeys(job.spec.dataset for job in jobs) if d not in cached]
    if missing:
        data_dir = jobs[0].spec.data_dir
        lines.append(f"Make the evaluation caches once first: sage-bench data cache {' '.join(missing)} --data-dir {data_dir}")
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
    print(describe_plan(jobs, cached=cached_datasets(jobs)))
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


def quick_sweep(output_dir: Path, dataset: str = "RotatedDigits", overrides: Sequence[str] = QUICK_OVERRIDES) -> Sweep:
    """All six algorithms on an embedded data set, every environment held out in turn, one
    trial, default hyperparameters, a short schedule."""
    return Sweep(
        output_dir=output_dir,
        datasets=[dataset],
        algorithms=TABLE1_ALGORITHMS,
        test_envs="single",
        hparams_seeds=range(1),
        trial_seeds=range(1),
        overrides=list(overrides),
        name="quick",
    )


def reproduce_quick(results_dir: Path = Path("results/quick"), dataset: str = "RotatedDigits",
                    overrides: Sequence[str] = QUICK_OVERRIDES) -> str:  # fmt: skip
    """Run the quick sweep in this process (finished jobs are skipped), then write
    ``table.md``, ``table.csv`` and figures into ``results_dir`` and return the text table."""
    from tqdm.auto import tqdm

    from sage_bench.run import run_job

    start = time.time()
    sweep = quick_sweep(results_dir / "runs", dataset, overrides)
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
