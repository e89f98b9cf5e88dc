"""One-command reproductions, each planning a sweep, running what is missing and writing its
table: ``table1`` and ``quick`` (domain generalization), ``table2`` and ``quick_mtl``
(multi-task); ``launch`` holds what they share (``launch_until_done``, ``run_here``)."""

from sage_bench.reproduce.launch import launch_until_done, run_here
from sage_bench.reproduce.quick import (
    CONVERGED_STEPS,
    CONVERGED_TRIALS,
    QUICK_OVERRIDES,
    QUICK_STEPS,
    quick_caveat,
    quick_sweep,
    reproduce_quick,
)
from sage_bench.reproduce.quick_mtl import (
    QUICK_EPOCHS,
    QUICK_TRIALS,
    quick_mtl_caveat,
    quick_mtl_sweep,
    quick_mtl_window,
    reproduce_quick_mtl,
)
from sage_bench.reproduce.table1 import (
    MIXED_PRECISION,
    SELECTION,
    TABLE1_ALGORITHMS,
    CostModel,
    cached_datasets,
    describe_plan,
    reproduce_table1,
    resolve_algorithms,
    table1_sweep,
    write_tables,
)
from sage_bench.reproduce.table2 import (
    TABLE2_DATASETS,
    MultiTaskCostModel,
    describe_row_hparams,
    describe_table2_plan,
    forward_gflop,
    reproduce_table2,
    table2_algorithms,
    table2_sweep,
    write_table2,
)

__all__ = [
    "CONVERGED_STEPS", "CONVERGED_TRIALS", "MIXED_PRECISION", "QUICK_EPOCHS", "QUICK_OVERRIDES", "QUICK_STEPS",
    "QUICK_TRIALS", "SELECTION", "TABLE1_ALGORITHMS", "TABLE2_DATASETS", "CostModel", "MultiTaskCostModel",
    "cached_datasets", "describe_plan", "describe_row_hparams", "describe_table2_plan", "forward_gflop",
    "launch_until_done", "quick_caveat", "quick_mtl_caveat", "quick_mtl_sweep", "quick_mtl_window", "quick_sweep",
    "reproduce_quick", "reproduce_quick_mtl", "reproduce_table1", "reproduce_table2", "resolve_algorithms",
    "run_here", "table1_sweep", "table2_algorithms", "table2_sweep", "write_table2", "write_tables",
]  # fmt: skip
