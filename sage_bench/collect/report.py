"""Rendering result frames as text, Markdown, LaTeX, CSV or JSON."""

from __future__ import annotations

import json
import math

import pandas as pd

from sage_bench.collect.selection import SELECTION_METHODS
from sage_bench.collect.tables import (
    AVERAGES,
    COLUMNS,
    PAPER_PROTOCOLS,
    TABLE1_DATASETS,
    environment_names,
    header,
    paper_protocols,
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
    """All tidy rows of the given selection methods; with ``compare_paper``, also the paper's
    Table 1 rows (``selection = "paper"``) and a ``protocol`` column saying whose protocol each
    paper row comes from (``PAPER_PROTOCOLS``; empty for this collection's own rows)."""
    frames = [results_frame(records, m) for m in methods]
    if not compare_paper:
        return pd.concat(frames, ignore_index=True)
    rows = []
    protocols = paper_protocols()
    for algorithm, cells in paper_table1().items():
        for env, value in cells.items():
            rows.append(["paper", AVERAGES, algorithm, env, value, math.nan, pd.NA, PAPER_PROTOCOLS[protocols[algorithm]]])
    frames.append(pd.DataFrame(rows, columns=[*COLUMNS, "protocol"]).astype({"trials": "Int64"}))
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

    protocols = paper_protocols()
    rows = {}
    for algorithm, row in table.iterrows():
        protocol = protocols.get(str(algorithm))
        paper = f"{algorithm} (paper, {protocol}'s protocol)" if protocol else f"{algorithm} (paper)"
        rows[algorithm] = [fmt(row[c]) for c in columns]
        rows[paper] = [fmt(row[f"{c} (paper)"]) for c in columns]
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
            parts.append(_protocol_note(fmt))
    return "\n".join(parts)


def _protocol_note(fmt: str) -> str:
    """What the paper rows' protocols are, under the table in every printed format."""
    lines = [f"{name}'s protocol: {text.split(': ', 1)[1]}" for name, text in PAPER_PROTOCOLS.items()]
    lines.append(
        "A difference beside a row of BOA's protocol compares two protocols; only SAGE's paper row "
        "used the protocol sage-bench runs."
    )
    if fmt == "markdown":
        return "\n".join(f"- {line}" for line in lines) + "\n"
    if fmt == "latex":  # printed under the tabular, not a comment
        return "\n".join(f"{{\\footnotesize {line}\\par}}" for line in lines) + "\n"
    return "\n".join(lines) + "\n"
