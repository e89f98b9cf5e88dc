"""What every analysis produces: tables of computed values beside the paper's, figures, a JSON summary.

A ``Report`` collects rows in titled sections and renders them as aligned text. A row that has a
value the paper states is checked against it within the paper's rounding; a row with a sampled
estimate is checked against its closed form by its confidence interval. Rows that fail either
check are listed at the end as disagreements, in the printed text and in ``summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def rounding(decimals: int) -> float:
    """The tolerance of a value printed with ``decimals`` decimals: half a unit of the last one."""
    return 0.5 * 10.0 ** (-decimals) * (1 + 1e-9)


def to_plain(value: Any) -> Any:
    """Numbers, arrays and tensors as JSON-ready floats and (nested) lists."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return to_plain(value.item())
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


def _json_ready(value: Any) -> Any:
    """``to_plain``, with NaN and infinities as ``null`` (strict JSON has no such numbers)."""
    value = to_plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def fmt(value: Any) -> str:
    """A compact rendering: 4 significant digits, vectors in parentheses, matrices as rows."""
    value = to_plain(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        text = f"{value:.4g}"
        return "0" if text in ("-0", "0") else text
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return "[" + "; ".join(" ".join(fmt(v) for v in row) for row in value) + "]"
        return "(" + ", ".join(fmt(v) for v in value) + ")"
    return str(value)


@dataclass
class Row:
    """A computed quantity, optionally beside the value the paper states."""

    quantity: str
    computed: Any
    paper: Any = None  # None: the paper states no value for it
    tol: float | Sequence[float] = 0.0  # absolute tolerance (the paper's rounding), per entry if a list
    note: str = ""

    @property
    def agrees(self) -> bool | None:
        if self.paper is None:
            return None
        computed = np.asarray(to_plain(self.computed), dtype=float)
        stated = np.asarray(to_plain(self.paper), dtype=float)
        return computed.shape == stated.shape and bool(np.allclose(computed, stated, rtol=0.0, atol=self.tol))

    def cells(self) -> list[str]:
        status = {None: "", True: "agrees", False: "DISAGREES"}[self.agrees]
        return [self.quantity, fmt(self.computed), fmt(self.paper), status, self.note]

    def summary(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity,
            "computed": to_plain(self.computed),
            "paper": to_plain(self.paper),
            "tolerance": self.tol if self.paper is not None else None,
            "agrees": self.agrees,
            "note": self.note,
        }


@dataclass
class Estimate:
    """A quantity estimated from sampled data, with a confidence interval, beside its closed form."""

    quantity: str
    closed_form: Any
    estimate: Any
    low: Any
    high: Any

    @property
    def agrees(self) -> bool:
        exact = np.asarray(to_plain(self.closed_form), dtype=float)
        low = np.asarray(to_plain(self.low), dtype=float)
        high = np.asarray(to_plain(self.high), dtype=float)
        return bool(np.all((low <= exact) & (exact <= high)))

    def cells(self) -> list[str]:
        status = "inside" if self.agrees else "OUTSIDE"
        return [self.quantity, fmt(self.closed_form), fmt(self.estimate), f"{fmt(self.low)} .. {fmt(self.high)}", status]

    def summary(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity,
            "closed_form": to_plain(self.closed_form),
            "estimate": to_plain(self.estimate),
            "ci_low": to_plain(self.low),
            "ci_high": to_plain(self.high),
            "closed_form_inside_ci": self.agrees,
        }


HEADERS = {
    Row: ["quantity", "computed", "paper states", "check", "note"],
    Estimate: ["quantity", "closed form", "sampled", "confidence interval", "closed form is"],
}


def _table(rows: Sequence[Row | Estimate]) -> str:
    cells = [HEADERS[type(rows[0])], *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("  " + line for line in lines)


@dataclass
class Report:
    """The printed and saved result of one analysis."""

    name: str
    out_dir: Path
    sections: dict[str, list[Row | Estimate]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    def add(self, section: str, row: Row | Estimate) -> Row | Estimate:
        rows = self.sections.setdefault(section, [])
        if rows and type(rows[0]) is not type(row):
            raise TypeError(f"section {section!r} mixes kinds of rows")
        rows.append(row)
        return row

    def disagreements(self) -> list[str]:
        """One line per row whose value disagrees with the paper or lies outside its interval."""
        lines = []
        for title, rows in self.sections.items():
            for row in rows:
                if isinstance(row, Row) and row.agrees is False:
                    lines.append(
                        f"{title}: {row.quantity}: computed {fmt(row.computed)}, paper states "
                        f"{fmt(row.paper)}" + (f" ({row.note})" if row.note else "")
                    )
                elif isinstance(row, Estimate) and not row.agrees:
                    lines.append(
                        f"{title}: {row.quantity}: closed form {fmt(row.closed_form)} outside the "
                        f"sampled interval {fmt(row.low)} .. {fmt(row.high)}"
                    )
        return lines

    def render(self) -> str:
        parts = []
        for title, rows in self.sections.items():
            parts.append(f"{title}\n{_table(rows)}")
        parts.extend(self.notes)
        problems = self.disagreements()
        compared = any(isinstance(r, Estimate) or r.paper is not None for rows in self.sections.values() for r in rows)
        if problems:
            parts.append("Disagreements:\n" + "\n".join(f"  - {p}" for p in problems))
        elif compared:
            parts.append("Disagreements: none.")
        if self.figures:
            parts.append("Wrote " + ", ".join(str(p) for p in [*self.figures, self.summary_path]))
        return "\n\n".join(parts)

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.json"

    def save_figure(self, figure, filename: str) -> Path:
        """Save a matplotlib figure as a PNG in the output folder."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / filename
        figure.savefig(path, dpi=130, bbox_inches="tight")
        self.figures.append(path)
        return path

    def write(self) -> Path:
        """Write ``summary.json`` (every section, note, disagreement and the extra data)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        summary = {
            "analysis": self.name,
            "sections": {t: [r.summary() for r in rows] for t, rows in self.sections.items()},
            "notes": self.notes,
            "disagreements": self.disagreements(),
            "figures": [p.name for p in self.figures],
            "data": self.data,
        }
        self.summary_path.write_text(json.dumps(_json_ready(summary), indent=2, allow_nan=False) + "\n")
        return self.summary_path



def figure(width: float, height: float, columns: int = 1):
    """A matplotlib figure and its axes, drawn off-screen (no display or pyplot state needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, columns)
    return fig, axes


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: the analyses' tiny tensors are faster that way."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
