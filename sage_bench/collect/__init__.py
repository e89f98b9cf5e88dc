"""Tables from output folders (sage-bench's or DomainBed's): model selection as DomainBed
defines it, Table 1 beside the paper's, and figures. Reads folders only through
``sage_bench.records``; never imports the runner.

As a library::

    collection = find_runs("runs/")                      # .completed() drops unfinished runs
    text = render(collection.records, "training-domain", "markdown", compare_paper=True)
    frame = results_frame(collection.records, "oracle")  # the tidy rows, as a DataFrame
    write_figures(collection.records, "figures/")        # PNG files; returns their paths
"""

from sage_bench.collect.loading import Collection, Run, find_runs
from sage_bench.collect.plots import write_figures
from sage_bench.collect.report import FORMATS, render, tidy
from sage_bench.collect.selection import SELECTION_METHODS, select, sweep_accs
from sage_bench.collect.tables import paper_table1, results_frame, table1_frame

__all__ = [
    "FORMATS",
    "SELECTION_METHODS",
    "Collection",
    "Run",
    "find_runs",
    "paper_table1",
    "render",
    "results_frame",
    "select",
    "sweep_accs",
    "table1_frame",
    "tidy",
    "write_figures",
]
