"""``sage-bench reproduce quick``: the whole Table 1 pipeline on the embedded digits in a few CPU
minutes (plan, run here, select with training-domain validation, tables and figures)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from sage_bench.collect import find_runs
from sage_bench.errors import UserError
from sage_bench.reproduce.launch import add_caveat, run_here
from sage_bench.reproduce.table1 import TABLE1_ALGORITHMS, write_tables
from sage_bench.sweep.plan import Sweep

QUICK_STEPS = 200
QUICK_OVERRIDES = (f"steps={QUICK_STEPS}", "checkpoint_freq=50", "hparams.batch_size=32", "device=cpu", "progress=false")
# the quick sweep at this length, over 3 trials, is close to converged (docs/getting-started.md)
CONVERGED_STEPS = 600
CONVERGED_TRIALS = 3


def quick_sweep(output_dir: Path, dataset: str = "RotatedDigits", overrides: Sequence[str] = QUICK_OVERRIDES,
                algorithms: Sequence[str] = TABLE1_ALGORITHMS, trials: int = 1) -> Sweep:  # fmt: skip
    """The algorithms (default: the paper's six) on an embedded data set, every environment
    held out in turn, ``trials`` trials, default hyperparameters, a short schedule."""
    return Sweep(
        output_dir=output_dir,
        datasets=[dataset],
        algorithms=list(algorithms),
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
    algorithms: Sequence[str] = TABLE1_ALGORITHMS,
    trials: int = 1,
    workers: int | None = None,
) -> str:
    """Run the quick sweep (finished jobs are skipped) in ``workers`` processes, one per core by
    default (``sage_bench.sweep.pool``), then write ``table.md``, ``table.csv`` and figures into
    ``results_dir`` and return the text table, with its caveat under it."""
    start = time.time()
    sweep = quick_sweep(results_dir / "runs", dataset, overrides, algorithms, trials)
    jobs = sweep.jobs()
    run_here(jobs, results_dir / "runs", workers)
    collection = find_runs(results_dir / "runs").completed()
    if not collection.records:
        raise UserError(f"no finished runs in {results_dir / 'runs'}")
    text = write_tables(collection.records, results_dir, compare_paper=False)
    caveat = quick_caveat(min(job.spec.settings.steps for job in jobs), trials)
    if caveat:
        text = add_caveat(text, results_dir, caveat)
    print(text)
    print(f"wrote {results_dir}/table.md, table.csv and figures in {time.time() - start:.0f} s")
    return text


__all__ = [
    "CONVERGED_STEPS", "CONVERGED_TRIALS", "QUICK_OVERRIDES", "QUICK_STEPS", "quick_caveat", "quick_sweep",
    "reproduce_quick",
]  # fmt: skip
