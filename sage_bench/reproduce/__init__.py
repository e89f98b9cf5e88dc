"""One-command reproductions: Table 1 and ``quick`` (domain generalization), Table 2 and
``quick-mtl`` (multi-task)."""

from sage_bench.reproduce.table1 import *  # noqa: F403
from sage_bench.reproduce.table2 import *  # noqa: F403
