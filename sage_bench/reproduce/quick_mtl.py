"""``sage-bench reproduce quick-mtl``: every multi-task row on the embedded DigitScenes in minutes
on a CPU (plan, run here, Table 2's layout with a caveat on what its numbers carry)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from sage_bench.collect import find_runs
from sage_bench.data.catalog import MULTITASK_TASKS
from sage_bench.errors import UserError
from sage_bench.records import MULTI_TASK
from sage_bench.reproduce.launch import add_caveat, run_here
from sage_bench.reproduce.table2 import table2_algorithms, write_table2
from sage_bench.sweep.plan import Sweep

QUICK_EPOCHS = 6  # of DigitScenes' 512 scenes: 384 steps of 8
QUICK_TRIALS = 3


def quick_mtl_window(epochs: int) -> int:
    """The epochs each quick run is averaged over: its last third (at least one). Table 2's window
    (10 of 200 epochs) averages out the noise of a single evaluation; at this budget one
    evaluation moves with the last few steps, and the earlier epochs are far from the end."""
    return max(1, epochs // 3)


def quick_mtl_sweep(output_dir: Path, dataset: str = "DigitScenes", epochs: int = QUICK_EPOCHS,
                    algorithms: Sequence[str] | None = None, trials: int = QUICK_TRIALS,
                    overrides: Sequence[str] = ()) -> Sweep:  # fmt: skip
    """The multi-task rows (default: every registered one, the ``Constant`` floor included) on an
    embedded multi-task data set, ``trials`` seeds, default hyperparameters, ``epochs`` epochs,
    on the CPU (``overrides``: of every job)."""
    if dataset not in MULTITASK_TASKS:
        raise UserError(f"quick-mtl runs on a multi-task data set, not {dataset!r}; valid choices: DigitScenes, DigitScenes2")
    return Sweep(
        output_dir=output_dir,
        datasets=[dataset],
        algorithms=table2_algorithms(algorithms),
        hparams_seeds=range(1),
        trial_seeds=range(trials),
        overrides=[f"epochs={epochs}", "device=cpu", "progress=false", *overrides],
        name="quick_mtl",
    )


def quick_mtl_caveat(epochs: int, trials: int, steps: int) -> str:
    """What a reader of the quick table must know: its budget, and how far its numbers carry."""
    seeds = "one seed: no spread" if trials == 1 else f"{trials} seeds, mean ± standard deviation"
    window = quick_mtl_window(epochs)
    return (
        f"{seeds}; {epochs} epoch{'s' if epochs > 1 else ''} ({steps} steps) of a narrow MTAN on 32 x 32 scenes, "
        f"each run averaged over {f'its last {window} epochs' if window > 1 else 'its last epoch'}. "
        "Rows closer than their spread are not told apart; a row no better than Constant (the floor) on a task "
        "has not learnt that task at this budget"
    )


def reproduce_quick_mtl(
    results_dir: Path = Path("results/quick_mtl"),
    dataset: str = "DigitScenes",
    epochs: int = QUICK_EPOCHS,
    algorithms: Sequence[str] | None = None,
    trials: int = QUICK_TRIALS,
    workers: int | None = None,
    overrides: Sequence[str] = (),
) -> str:
    """Run the quick multi-task sweep here (finished jobs are skipped), then write ``table.md``
    and ``table.csv`` into ``results_dir`` (each run averaged over ``quick_mtl_window(epochs)``
    epochs) and return the text table with its caveat."""
    start = time.time()
    jobs = quick_mtl_sweep(results_dir / "runs", dataset, epochs, algorithms, trials, overrides).jobs()
    run_here(jobs, results_dir / "runs", workers)
    records = find_runs(results_dir / "runs").completed().records_of(MULTI_TASK)
    if not records:
        raise UserError(f"no finished runs in {results_dir / 'runs'}")
    text = write_table2(records, results_dir, compare_paper=False, last=quick_mtl_window(epochs))
    from sage_bench.run.mtl import build_dataset

    spec = jobs[0].spec
    steps = epochs * math.ceil(len(build_dataset(spec).train) / spec.hparams["batch_size"])
    text = add_caveat(text, results_dir, quick_mtl_caveat(epochs, trials, steps))
    print(text)
    print(f"wrote {results_dir}/table.md and table.csv in {time.time() - start:.0f} s")
    return text


__all__ = [
    "QUICK_EPOCHS", "QUICK_TRIALS", "quick_mtl_caveat", "quick_mtl_sweep", "quick_mtl_window", "reproduce_quick_mtl",
]  # fmt: skip
