"""Rendering result frames as text, Markdown, LaTeX, CSV or JSON."""

from __future__ import annotations

import json
import math

import pandas as pd

from sage_bench.collect.selection import SELECTION_METHODS
from sage_bench.collect.tables import (
    AVERAGES,
    COLUMNS,
    TABLE1_DATASETS,
    environment_names,
    header,
    paper_table1,
    pivot,
    results_frame,
    table1_frame,
)

FORMATS = ("text", "markdown", "latex", "csv", "json")


def selections(name: str) -> list[str]:
    """``all`` -> every method; otherwise the one named."""
    if name == "all":
        return list(SELECTION_METHODS)
    if name not in SELECTION_METHODS:
        raise ValueError(f"unknown selection {name!r}; valid choices: {', '.join([*SELECTION_METHODS, 'all'])}")
    return [name]


def tidy(records: list[dict], methods: list[str], compare_paper: bool = False) -> pd.DataFrame:
    """All tidy rows of the given selection methods (and the paper's Table 1 rows, with
    ``selection = "paper"``, when ``compare_paper``)."""
    frames = [results_frame(records, m) for m in methods]
    if compare_paper:
        rows = []
        for algorithm, cells in paper_table1().items():
            for env, value in cells.items():
                rows.append(["paper", AVERAGES, algorithm, env, value, math.nan, pd.NA])
        frames.append(pd.DataFrame(rows, columns=COLUMNS).astype({"trials": "Int64"}))
    return pd.concat(frames, ignore_index=True)


def _table_text(table: pd.DataFrame, fmt: str, title: str) -> str:
    if fmt == "markdown":
        return f"### {title}\n\n{table.to_markdown(disable_numparse=True)}\n"
    if fmt == "latex":
        body = table.to_latex(escape=False, column_format="l" + "c" * len(table.columns))
        return f"% {title}\n{body}"
    return f"-------- {title}\n{table.to_string()}\n"


def _format_table1(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 for printing: per algorithm a row of ours, one of the paper's, one of the
    differences (``ERM``, ``ERM (paper)``, ``ERM (diff)``); data sets and Avg as columns."""
    columns = [*TABLE1_DATASETS, "Avg"]

    def fmt(value: float, signed: bool = False) -> str:
        if math.isnan(value):
            return "X"
        return f"{value:+.1f}" if signed else f"{value:.1f}"

    rows = {}
    for algorithm, row in table.iterrows():
        rows[algorithm] = [fmt(row[c]) for c in columns]
        rows[f"{algorithm} (paper)"] = [fmt(row[f"{c} (paper)"]) for c in columns]
        rows[f"{algorithm} (diff)"] = [fmt(row[f"{c} (diff)"], signed=True) for c in columns]
    printed = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    printed.index.name = "Algorithm"
    return printed


def render(records: list[dict], selection: str = "training-domain", fmt: str = "text", compare_paper: bool = False) -> str:
    """The tables of ``records`` under ``selection`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    methods = selections(selection)
    if fmt in ("csv", "json"):
        frame = tidy(records, methods, compare_paper)
        if fmt == "csv":
            return frame.to_csv(index=False, float_format="%.4f")
        rows = json.loads(frame.to_json(orient="records"))
        return json.dumps(rows, indent=1) + "\n"

    parts = []
    for method in methods:
        frame = results_frame(records, method)
        for dataset in dict.fromkeys(frame["dataset"]):
            labels = None if dataset == AVERAGES else environment_names(dataset, records)
            parts.append(_table_text(pivot(frame, dataset, labels, latex=fmt == "latex"), fmt, header(method, dataset)))
        if compare_paper:
            title = f"Table 1 beside the paper's, model selection method: {method}"
            parts.append(_table_text(_format_table1(table1_frame(frame, compare_paper=True)), fmt, title))
    return "\n".join(parts)
