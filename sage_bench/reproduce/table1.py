"""``sage-bench reproduce table1``: the paper's Table 1. Plans the sweep, says what it costs, runs
what is missing (running the same command again continues), selects models with
training-domain validation, and writes the tables and figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sage_bench.collect import find_runs, render, write_figures
from sage_bench.collect.tables import TABLE1_DATASETS
from sage_bench.data import get_dataset_class
from sage_bench.errors import UserError
from sage_bench.reproduce.launch import launch_until_done
from sage_bench.sweep.plan import Sweep, SweepJob

TABLE1_ALGORITHMS = ["ERM", "SAM", "GSAM", "SAGM", "DISAM", "SAGE"]
SELECTION = "training-domain"


def resolve_algorithms(names: Sequence[str] | None = None) -> list[str]:
    """The algorithms to run: ``None`` gives the paper's six (``TABLE1_ALGORITHMS``), ``["all"]``
    every registered domain-generalization algorithm in Table 1's row order; other names are
    checked against the registry (an unknown one is an error listing the valid names)."""
    from sage_bench.algorithms.registry import DOMAIN_GENERALIZATION, algorithms
    from sage_bench.collect.tables import algorithm_order

    if not names:
        return list(TABLE1_ALGORITHMS)
    valid = algorithms(DOMAIN_GENERALIZATION)
    if list(names) == ["all"]:
        return algorithm_order(valid)
    for name in names:
        if name not in valid:
            raise UserError(
                f"unknown algorithm {name!r}; valid choices: {', '.join(sorted(valid))} "
                "(domain-generalization algorithms; multi-task rows go to reproduce table2 and quick-mtl)"
            )
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# Table 1


@dataclass(frozen=True)
class CostModel:
    """What one job costs on one A100 (40 GB), for planning only.

    - Training: ``ms_per_image[arithmetic]`` for one image's forward and backward pass of a
      ViT-B/16 at 224 px in the job's training arithmetic on CUDA (``float32`` without TF32, as
      the paper's setting and every perturbation algorithm by default; ``tf32``; ``bfloat16``
      autocast, ERM's default), data loading included, times the images a step reads
      (``batch_size`` per training domain) and the algorithm's passes (``step_factor``). A
      forward and backward pass is ~0.1 TFLOP per image; an A100 peaks at 19.5 TFLOPS in float32,
      156 with TF32 and 312 in bf16, and reaches a smaller share of the faster peaks at these
      batch sizes (bf16: the earlier 30 ms per 12-image step).
    - ``step_factor``: passes per step in ERM steps where an algorithm's own: otherwise 2 for
      every algorithm that takes a gradient at perturbed weights (the SAM family, SAGE,
      GGA-L), 1 for the rest; SAGE adds
      ``polar_s_per_step`` for its Newton-Schulz iterations (~1.5 TFLOP in bf16).
    - Evaluation, at every checkpoint, of the splits the job evaluates (``eval_splits``: every
      split, or what model selection reads). The GPU evaluates ``gpu_images_per_s`` (bf16, the
      default; float32 evaluation, as the paper's setting, at ``gpu_images_per_s_fp32``); the
      images come from the evaluation cache (one core reads ``cache_images_per_s_per_core``, so
      the GPU is the limit) or are decoded from JPEGs by ``cpu_cores`` cores at
      ``jpeg_images_per_s_per_core`` each (80 for 500-pixel photos, 110 for PACS's 227-pixel
      images: ``benchmarks/eval_input.py``), whichever is slower: 8 cores decode 640 images/s.
      Augmented evaluations (training environments with ``dataset.eval_augment=true``) are
      always decoded.

    - Perturbed gradients (``perturbation``): where a job's training precision follows
      ``perturbation=auto`` (``precision.train=auto`` on CUDA), the step is priced in what auto
      would choose for the row at its default radius, predicted from ``auto_errors``: the errors
      ``benchmarks/gpu_check.py --device cpu`` measured for each candidate on a CLIP ViT-Ti/16
      at 224 px (random initialisation; on CUDA the float32 difference is the reference, error 0), taken
      at the job's ``perturbation.tolerance`` as ``auto`` takes them. A linearized step costs
      ``linearized_passes`` passes (the clean pass, and the product's forward with tangents and
      backward, about twice a pass); a difference step 2. ``linearized_rows`` prices those rows
      linearized in bf16 whatever the prediction (``describe_plan``'s "linearized SAGE" column).

    The numbers are estimates, not measurements of a whole run (``benchmarks/gpu_check.py``
    measures the step times on the GPU at hand); pass your own. A MIG slice has a fraction of an
    A100's compute (a 3g.20gb slice about 3/7) and usually fewer cores.
    """

    ms_per_image: tuple[tuple[str, float], ...] = (("float32", 7.5), ("tf32", 3.0), ("bfloat16", 2.5))
    polar_s_per_step: float = 0.01
    gpu_images_per_s: float = 2000.0
    gpu_images_per_s_fp32: float = 450.0
    cpu_cores: int = 8
    jpeg_images_per_s_per_core: float = 80.0
    cache_images_per_s_per_core: float = 7000.0
    step_factor: tuple[tuple[str, float], ...] = (
        ("RSC", 1.1), ("Fish", 1.1), ("GAM", 4.0),
        ("GGA", 5.2),  # 51 of 5001 updates search 250 neighbours (~400 ERM steps each)
    )  # fmt: skip

    # errors of the change of the gradient at each row's default radius, measured on a random-init
    # CLIP ViT-Ti/16 at 224 px, 6 images, CPU (benchmarks/gpu_check.py --device cpu: the paper's
    # architecture at its input size); the SAM family and GAM at SAM's rho 0.05
    auto_errors: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = (
        ("SAGE", (("difference_bf16", 11.5), ("linearized_bf16", 7.60e-3), ("difference_fp32", 0.0))),
        ("*", (("difference_bf16", 3.66e-2), ("linearized_bf16", 0.316), ("difference_fp32", 0.0))),
    )
    linearized_passes: float = 3.0
    linearized_rows: tuple[str, ...] = ()

    def perturbed_step(self, job: SweepJob) -> tuple[str, float] | None:
        """``(arithmetic, passes)`` of a step whose precision follows ``perturbation=auto``, as
        predicted (see the class docstring); ``None`` for other jobs."""
        from sage_bench.algorithms.perturbation import AUTO_CANDIDATES
        from sage_bench.geometry.linearized import choose

        spec = job.spec
        if not spec.resolved_precision_on("cuda").train_follows_perturbation:
            return None
        if spec.algorithm in self.linearized_rows:
            return "bfloat16", self.linearized_passes
        table = dict(self.auto_errors)
        errors = {f"{name}_error": value for name, value in table.get(spec.algorithm, table["*"])}
        chosen = AUTO_CANDIDATES[choose(errors, AUTO_CANDIDATES, spec.perturbation_tolerance)]
        arithmetic = "float32" if chosen.dtype is None else "bfloat16"
        return arithmetic, self.linearized_passes if chosen.method == "linearized" else 2.0

    def step_seconds(self, job: SweepJob) -> float:
        """Seconds of one training step of ``job`` on a whole A100."""
        spec = job.spec
        computed = spec.resolved_precision_on("cuda").describe()
        arithmetic = computed["train"] if computed["train"] != "float32" or not computed["tf32"] else "tf32"
        images = spec.hparams["batch_size"] * (len(get_dataset_class(spec.dataset).ENVIRONMENTS) - len(spec.settings.test_envs))
        passes = dict(self.step_factor).get(spec.algorithm, 2.0 if spec.perturbs_weights() else 1.0)
        predicted = self.perturbed_step(job)
        if predicted is not None:
            arithmetic, two_pass = predicted
            passes = passes * two_pass / 2.0  # GAM's four passes scale alike
        seconds = images * dict(self.ms_per_image)[arithmetic] / 1000 * passes
        return seconds + (self.polar_s_per_step if spec.algorithm == "SAGE" else 0.0)

    def checkpoint_images(self, job: SweepJob, cached: bool, eval_splits: str | None = None) -> tuple[int, int]:
        """Images one checkpoint evaluates: (from the cache, decoded from JPEGs)."""
        spec = job.spec
        sizes = list(getattr(get_dataset_class(spec.dataset), "EXPECTED_IMAGES", {}).values())
        augmented = spec.hparams.get("data_augmentation", True) and spec.dataset_options.get("eval_augment", True)
        from_cache = from_jpeg = 0
        for i, n in enumerate(sizes):
            out = int(n * spec.settings.holdout_fraction)
            for part, images in (("in", n - out), ("out", out)):
                if (eval_splits or spec.settings.eval_splits) == "selection" and part == "in" and i not in spec.settings.test_envs:
                    continue
                if cached and not (augmented and i not in spec.settings.test_envs):
                    from_cache += images
                else:
                    from_jpeg += images
        return from_cache, from_jpeg

    def job_hours(self, job: SweepJob, cached: bool = False, eval_splits: str | None = None) -> float:
        """GPU hours of ``job``; ``cached``: with the evaluation cache; ``eval_splits``: instead of the job's."""
        spec = job.spec
        evaluations = spec.settings.steps // spec.settings.checkpoint_freq + 1
        from_cache, from_jpeg = self.checkpoint_images(job, cached, eval_splits)
        gpu = self.gpu_images_per_s if spec.resolved_precision_on("cuda").eval is not None else self.gpu_images_per_s_fp32
        cache_rate = min(gpu, self.cpu_cores * self.cache_images_per_s_per_core)
        jpeg_rate = min(gpu, self.cpu_cores * self.jpeg_images_per_s_per_core)
        evaluation = evaluations * (from_cache / cache_rate + from_jpeg / jpeg_rate)
        return (spec.settings.steps * self.step_seconds(job) + evaluation) / 3600


MIXED_PRECISION = {"precision": {"train": "auto", "eval": "auto", "polar": "auto"}, "tf32": "auto"}


def _perturbation_estimates(jobs: Sequence[SweepJob], cost: CostModel, cached: set[str]) -> list[str]:
    """The plan's A100-hours again with ``precision.train=auto precision.eval=auto tf32=auto``
    (ERM in bf16, each perturbation row as ``perturbation=auto`` would choose at its default
    radius), and so with SAGE linearized in bf16."""
    from dataclasses import replace

    def total(model: CostModel) -> float:
        hours = 0.0
        for job in jobs:
            spec = replace(job.spec, **MIXED_PRECISION)
            hours += model.job_hours(replace(job, spec=spec), cached=job.spec.dataset in cached)
        return hours

    tolerance = ", ".join(sorted({f"{job.spec.perturbation_tolerance:g}" for job in jobs}))
    chosen = []
    for algorithm in dict.fromkeys(job.spec.algorithm for job in jobs):
        job = next(j for j in jobs if j.spec.algorithm == algorithm)
        predicted = cost.perturbed_step(replace(job, spec=replace(job.spec, **MIXED_PRECISION)))
        if predicted is not None:
            method = "linearized" if predicted[1] != 2.0 else "difference"
            chosen.append(f"{algorithm}: {method} in {predicted[0]}")
    linearized = replace(cost, linearized_rows=("SAGE",))
    return [
        f"With precision.train=auto precision.eval=auto tf32=auto (bf16 where perturbation=auto finds it "
        f"faithful at tolerance {tolerance}: {'; '.join(chosen) or 'no perturbation row'}): "
        f"{total(cost):.1f} A100-hours; with SAGE linearized in bf16 (perturbation=linearized): "
        f"{total(linearized):.1f} (predicted from errors measured on a CLIP ViT-Ti/16; each job measures its own)"
    ]


def table1_sweep(output_dir: str | Path, data_dir: str | Path | None = None, trials: int = 3,
                 datasets: Sequence[str] = TABLE1_DATASETS, overrides: Sequence[str] = (),
                 algorithms: Sequence[str] = TABLE1_ALGORITHMS) -> Sweep:  # fmt: skip
    """Every job of Table 1: the algorithms (default: the paper's six) on the five data sets,
    each environment held out in turn, ``trials`` trials, the paper's setting
    (``experiment=paper_domainbed``: CLIP ViT-B/16, Adam, lr 1e-6, 12 images per training
    domain; SAGE's rho = gamma = 1e-6) with default hyperparameters (``hparams_seed=0``, as the
    paper reports one setting). Jobs evaluate only what model selection reads
    (``eval_splits=selection``: the same table for less GPU time) and read their evaluation
    images from the cache where ``sage-bench data cache`` made one."""
    extra = ["experiment=paper_domainbed", "eval_splits=selection"]
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
    splits = ", ".join(sorted({job.spec.settings.eval_splits for job in jobs}))
    lines.append(
        f"(A100-hours: as planned, eval_splits={splits}, evaluation cache found for "
        f"{', '.join(sorted(cached)) or 'no data set'}; with every data set cached; DomainBed's evaluation of "
        f"every split from JPEGs. Estimate: {dict(cost.ms_per_image)['float32']:.1f} ms per image of a "
        f"float32 training pass, evaluation at {cost.gpu_images_per_s:,.0f} images/s in bf16 "
        f"({cost.gpu_images_per_s_fp32:,.0f} in float32) or {cost.cpu_cores} cores x "
        f"{cost.jpeg_images_per_s_per_core:.0f} images/s decoding JPEGs, on a whole A100; a 3g.20gb MIG "
        "slice takes about 7/3 as long per job)"
    )
    lines.extend(_perturbation_estimates(jobs, cost, cached))
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
    algorithms: Sequence[str] = TABLE1_ALGORITHMS,
) -> int:
    """Plan, launch what is missing, and, once every job is done, print Table 1 beside the
    paper's and write it (Markdown, CSV, figures) to ``results_dir``."""
    sweep = table1_sweep(output_dir, data_dir, trials, algorithms=algorithms)
    jobs = sweep.jobs()
    print(describe_plan(jobs, cached=cached_datasets(jobs)))
    if dry_run:
        return 0
    code, done = launch_until_done(sweep, jobs, launcher_overrides, "Table 1")
    if not done:
        return code
    records = find_runs(output_dir).completed().records
    print(write_tables(records, results_dir, compare_paper=True))
    print(f"wrote {results_dir}/table.md, table.csv and figures")
    return code


__all__ = [
    "MIXED_PRECISION", "SELECTION", "TABLE1_ALGORITHMS", "CostModel", "cached_datasets", "describe_plan",
    "reproduce_table1", "resolve_algorithms", "table1_sweep", "write_tables",
]  # fmt: skip
