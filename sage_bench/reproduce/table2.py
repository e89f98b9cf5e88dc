"""``sage-bench reproduce table2``: the paper's Table 2 (NYU-v2 and Cityscapes, every registered
multi-task row, 3 seeds, the paper's protocol). Plans a sweep (``sage_bench.sweep``), runs what
is missing (running the same command again continues) and prints Table 2's layout
(``sage_bench.collect.mtl``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sage_bench.collect import find_runs
from sage_bench.collect import mtl as collect_mtl
from sage_bench.data import get_dataset_class
from sage_bench.errors import UserError
from sage_bench.records import MULTI_TASK
from sage_bench.reproduce.launch import launch_until_done
from sage_bench.sweep.plan import Sweep, SweepJob

TABLE2_DATASETS = ("NYUv2", "Cityscapes")


def table2_algorithms(names: Sequence[str] | None = None) -> list[str]:
    """The multi-task rows to run in Table 2's order: every registered one (``None`` or
    ``["all"]``), or the named ones (each checked: registered, and a multi-task row)."""
    from sage_bench.algorithms.registry import MULTI_TASK, algorithms

    registered = algorithms(MULTI_TASK)
    if not names or list(names) == ["all"]:
        return collect_mtl.row_order(registered)
    for name in names:
        if name not in registered:
            what = "is a domain-generalization algorithm" if name in algorithms() else "is not a registered algorithm"
            raise UserError(
                f"{name!r} {what}; valid choices: {', '.join(collect_mtl.row_order(registered))}, all (multi-task "
                "rows; domain-generalization algorithms go to reproduce table1 and reproduce quick)"
            )
    return collect_mtl.row_order(names)


# ---------------------------------------------------------------------------------------------
# Table 2


@lru_cache(maxsize=8)
def forward_gflop(dataset: str, width: str) -> float:
    """GFLOP of one image's forward pass through the job's MTAN (multiply-adds counted twice),
    counted by ``torch.utils.flop_counter`` on the meta device: NYU-v2 432.1, Cityscapes 96.4 at
    the paper's width."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sage_bench.models.mtan import mtan

    cls = get_dataset_class(dataset)
    with torch.device("meta"):
        network = mtan(cls.TASKS, width)
        with FlopCounterMode(display=False) as counter:
            network(torch.zeros(1, 3, *cls.RESOLUTION))
    return counter.get_total_flops() / 1e9


@dataclass(frozen=True)
class MultiTaskCostModel:
    """What one multi-task job costs on one A100 (40 GB), for planning only.

    An epoch is ``n_train`` images times the row's forward-pass equivalents per step
    (``MultiTaskAlgorithm.passes_per_step``: a backward pass counts as two forwards; LS, MGDA and
    FairGrad take one forward and a backward per task, SAMO-X ``3 + 5K``, SAGE-X ``2 + 4K``,
    SAGE-SAMO-X ``1 + 7K``) plus one forward pass per val image, each forward pass costing
    ``forward_gflop`` at ``tflops``: the A100's 19.5 float32 TFLOPS (TF32 off, the preset's
    setting) at 60% utilisation, which cuDNN's convolutions reach at these image sizes. Data
    loading overlaps with training (``num_workers``) and is not counted. An estimate, not a
    measurement: pass your own ``tflops`` for another GPU (a 3g.20gb MIG slice has about 3/7 of
    an A100).
    """

    tflops: float = 19.5 * 0.6

    def epoch_seconds(self, job: SweepJob) -> float:
        from sage_bench.algorithms.registry import get_algorithm

        spec = job.spec
        cls = get_dataset_class(spec.dataset)
        sizes = getattr(cls, "EXPECTED_IMAGES", {})
        passes = get_algorithm(spec.algorithm).cls.passes_per_step(len(cls.TASKS), spec.hparams)
        per_image = forward_gflop(spec.dataset, spec.backbone_options["width"]) / (self.tflops * 1e3)
        return (sizes.get("train", 0) * passes + sizes.get("val", 0)) * per_image

    def job_hours(self, job: SweepJob) -> float:
        return job.spec.settings.epochs * self.epoch_seconds(job) / 3600


def table2_sweep(output_dir: str | Path, data_dir: str | Path | None = None, trials: int = 3,
                 datasets: Sequence[str] = TABLE2_DATASETS, algorithms: Sequence[str] | None = None,
                 overrides: Sequence[str] = ()) -> Sweep:  # fmt: skip
    """Every job of Table 2: the rows (default: every registered multi-task row) on NYU-v2 and
    Cityscapes with ``trials`` seeds, in the paper's protocol (``experiment=paper_mtl``); STL is
    planned once per task (the sweep planner does that for it)."""
    extra = ["experiment=paper_mtl"]
    if data_dir is not None:
        extra.append(f"data_dir={Path(data_dir).resolve()}")
    return Sweep(
        output_dir=Path(output_dir),
        datasets=list(datasets),
        algorithms=table2_algorithms(algorithms),
        hparams_seeds=range(1),
        trial_seeds=range(trials),
        overrides=[*extra, *overrides],
        name="table2",
    )


def describe_table2_plan(jobs: Sequence[SweepJob], cost: MultiTaskCostModel = MultiTaskCostModel()) -> str:  # noqa: B008
    """Jobs and estimated A100-hours per data set and row, and in total."""
    lines = [f"{'dataset':<12}{'row':<22}{'jobs':>6}{'A100-hours':>12}"]
    total_jobs, total_hours = 0, 0.0
    for dataset in dict.fromkeys(job.spec.dataset for job in jobs):
        for row in dict.fromkeys(job.spec.algorithm for job in jobs if job.spec.dataset == dataset):
            part = [job for job in jobs if job.spec.dataset == dataset and job.spec.algorithm == row]
            hours = sum(cost.job_hours(job) for job in part)
            total_jobs, total_hours = total_jobs + len(part), total_hours + hours
            lines.append(f"{dataset:<12}{row:<22}{len(part):>6}{hours:>12.0f}")
    lines.append(f"{'total':<34}{total_jobs:>6}{total_hours:>12.0f}")
    lines.append(
        f"(A100-hours: an estimate from each row's forward-pass equivalents per step and MTAN's counted FLOPs "
        f"at {cost.tflops:.1f} float32 TFLOPS; a 3g.20gb MIG slice takes about 7/3 as long per job)"
    )
    lines.append(
        "With perturbation=auto (the default) the SAMO and SAGE rows compute as above: multi-task jobs train in "
        "float32, where auto is the float32 difference; even with precision.train=bf16 auto would keep it, as on "
        "the narrow MTAN neither the bf16 difference nor the linearized product resolves the change of the "
        "gradient at rho 1e-4 (benchmarks/perturbation_precision.py): the estimate with linearized SAGE is the same"
    )
    return "\n".join(lines)


def describe_row_hparams(jobs: Sequence[SweepJob]) -> str:
    """Each (data set, row)'s own hyperparameters as its jobs resolve them (a row's defaults may
    depend on the data set: SAMO's on Cityscapes follow its Cityscapes trainer)."""
    from sage_bench.hparams import SHARED_HPARAM_NAMES

    lines = []
    for (dataset, row), job in {(j.spec.dataset, j.spec.algorithm): j for j in jobs}.items():
        own = {k: v for k, v in job.spec.hparams.items() if k not in SHARED_HPARAM_NAMES and k != "task"}
        lines.append(f"{dataset:<12}{row:<22}" + (" ".join(f"{k}={v}" for k, v in own.items()) or "-"))
    return "\n".join(lines)


def write_table2(records: list[dict], folder: Path, compare_paper: bool, last: int = collect_mtl.LAST_EPOCHS) -> str:
    """Write ``table.md`` and ``table.csv`` of the multi-task records into ``folder`` (each run
    averaged over its ``last`` epochs); return the text."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(collect_mtl.render(records, "markdown", compare_paper, last))
    (folder / "table.csv").write_text(collect_mtl.render(records, "csv", compare_paper, last))
    return collect_mtl.render(records, "text", compare_paper, last)


def reproduce_table2(
    output_dir: Path,
    data_dir: Path | None = None,
    launcher_overrides: Sequence[str] = (),
    dry_run: bool = False,
    trials: int = 3,
    results_dir: Path = Path("results/table2"),
    algorithms: Sequence[str] | None = None,
) -> int:
    """Plan (print the jobs' estimate; ``dry_run``: list every job and stop), launch what is
    missing, and once every job is done print Table 2 beside the paper's and write it to
    ``results_dir``."""
    from sage_bench.sweep.launch import launch_sweep

    sweep = table2_sweep(output_dir, data_dir, trials, algorithms=algorithms)
    jobs = sweep.jobs()
    print(describe_table2_plan(jobs))
    if dry_run:
        print(describe_row_hparams(jobs))
        return launch_sweep(sweep, launcher_overrides, dry_run=True)
    code, done = launch_until_done(sweep, jobs, launcher_overrides, "Table 2")
    if not done:
        return code
    records = find_runs(output_dir).completed().records_of(MULTI_TASK)
    print(write_table2(records, results_dir, compare_paper=True))
    print(f"wrote {results_dir}/table.md and table.csv")
    return code


__all__ = [
    "TABLE2_DATASETS", "MultiTaskCostModel", "describe_row_hparams", "describe_table2_plan", "forward_gflop",
    "reproduce_table2", "table2_algorithms", "table2_sweep", "write_table2",
]  # fmt: skip
