"""The committed reference output ``results/quick/`` is what ``sage-bench reproduce quick``
prints on the current code: the same data set, algorithms, environments, columns and note.

The numbers are not compared: another machine rounds differently and 200 steps are short enough
for that to move the selected checkpoints (docs/tables/reference-outputs.md says by how much).
The command runs here on a tiny budget, which prints the same layout.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from sage_bench.cli import main
from sage_bench.reproduce import QUICK_STEPS, TABLE1_ALGORITHMS, quick_caveat

COMMITTED = Path(__file__).resolve().parent.parent / "results" / "quick"
TINY_STEPS = 5

_CELL = re.compile(r"^\d+\.\d \+/- \d+\.\d$")  # mean +/- standard error
_AVG = re.compile(r"^\d+\.\d$")


def layout(table_md: str) -> list:
    """The table's headings, header rows, row labels and the kind of each cell; its note with
    the numbers of steps and trials left out (they are compared on their own)."""
    shape = []
    for line in table_md.splitlines():
        if line.startswith("|:") or not line.strip():
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == "Algorithm":
                shape.append(("header", tuple(cells)))
            else:
                kinds = tuple(
                    "mean+-sem" if _CELL.match(c) else "avg" if _AVG.match(c) else "X" if c == "X" else f"?{c}"
                    for c in cells[1:]
                )
                shape.append(("row", cells[0], kinds))
        elif line.startswith("**Note:**"):
            shape.append(("note",))
        else:
            shape.append(("line", line))
    return shape


def csv_keys(path: Path) -> tuple[list[str], list[tuple[str, ...]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0])
    return columns, [tuple(row[k] for k in ("selection", "dataset", "algorithm", "env", "trials")) for row in rows]


def test_the_committed_quick_table_is_the_default_commands():
    text = (COMMITTED / "table.md").read_text()
    assert f"**Note:** {quick_caveat(QUICK_STEPS, 1)}." in text, "results/quick/ was not made by `sage-bench reproduce quick` with its defaults"
    rows = [entry[1] for entry in layout(text) if entry[0] == "row"]
    assert rows == list(TABLE1_ALGORITHMS) * 2  # the data set's table, then the averages
    for name in ("table.csv", "accuracy_by_domain.png", "training_curves.png"):
        assert (COMMITTED / name).is_file(), name


@pytest.mark.slow
def test_reproduce_quick_prints_the_committed_layout(tmp_path, capsys):
    """``reproduce quick`` on a tiny budget writes a table with the committed one's layout: the
    same headings, columns (environments), algorithms in the same order, and tidy rows."""
    assert main(["reproduce", "quick", "--steps", str(TINY_STEPS), "--results-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    made = (tmp_path / "table.md").read_text()
    committed = (COMMITTED / "table.md").read_text()
    assert layout(made) == layout(committed)
    assert f"**Note:** {quick_caveat(TINY_STEPS, 1)}." in made
    assert "Averages, model selection method: training-domain validation set" in printed
    assert csv_keys(tmp_path / "table.csv") == csv_keys(COMMITTED / "table.csv")
    for name in ("accuracy_by_domain.png", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 0


QUICK_MTL = COMMITTED.parent / "quick_mtl"


def test_the_committed_quick_mtl_table_is_the_default_commands():
    """``results/quick_mtl/`` has every registered multi-task row in Table 2's order, each run
    with the default number of seeds, and the note the default command writes."""
    from sage_bench.reproduce import (
        QUICK_EPOCHS,
        QUICK_TRIALS,
        quick_mtl_caveat,
        table2_algorithms,
    )

    text = (QUICK_MTL / "table.md").read_text()
    steps = QUICK_EPOCHS * 512 // 8  # DigitScenes' default 512 training scenes in batches of 8
    assert f"**Note:** {quick_mtl_caveat(QUICK_EPOCHS, QUICK_TRIALS, steps)}." in text, (
        "results/quick_mtl/ was not made by `sage-bench reproduce quick-mtl` with its defaults"
    )
    with open(QUICK_MTL / "table.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [row["algorithm"] for row in rows] == table2_algorithms()
    assert {row["runs"] for row in rows} == {str(QUICK_TRIALS)}
    assert all(not Path(row["window_run"]).is_absolute() for row in rows)  # the same on every machine
