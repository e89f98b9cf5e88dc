"""How each kind of job is collected, keyed by the records' task value (``args.task``; the
kinds' table of the configuration is ``sage_bench.config.kinds``, which the collector never
imports): which records are usable, the warnings their runs call for, their tables and their
figures. ``sage-bench collect`` renders every kind present in the folders, one after another."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sage_bench.collect import dg, mtl
from sage_bench.kinds import KINDS, Kind
from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK, record_task


@dataclass(frozen=True)
class CollectOptions:
    """What ``sage-bench collect`` asks for: model selection (domain generalization), format,
    the paper's numbers beside, and unfinished runs and the epoch window (multi-task)."""

    selection: str = "training-domain"
    format: str = "text"
    compare_paper: bool = False
    include_unfinished: bool = False
    last_epochs: int = mtl.LAST_EPOCHS


@dataclass(frozen=True)
class Collector:
    """One kind's collection: ``record_problem`` (why a record is unusable, or ``None``),
    ``warnings`` (notes on its runs, before the tables), ``render`` (its tables, with the
    warnings raised while making them) and ``figures`` (``None``: tables only)."""

    kind: Kind
    record_problem: Callable[[dict], str | None]
    warnings: Callable[[list[dict]], list[str]]
    render: Callable[[list[dict], CollectOptions], tuple[str, list[str]]]
    figures: Callable[[list[dict], Path, str], list[Path]] | None = None


def _dg_warnings(records: list[dict]) -> list[str]:
    return [*dg.mixed_settings(records), *dg.bf16_perturbation_runs(records)]


def _dg_render(records: list[dict], options: CollectOptions) -> tuple[str, list[str]]:
    from sage_bench.collect.report import render

    return render(records, options.selection, options.format, options.compare_paper), []


def _dg_figures(records: list[dict], folder: Path, selection: str) -> list[Path]:
    from sage_bench.collect.plots import write_figures

    return write_figures(records, folder, selection if selection != "all" else "training-domain")


def _mtl_render(records: list[dict], options: CollectOptions) -> tuple[str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = mtl.render(records, options.format, options.compare_paper, options.last_epochs, options.include_unfinished)
    return text, [str(w.message) for w in caught]


COLLECTORS: dict[str, Collector] = {
    DOMAIN_GENERALIZATION: Collector(
        KINDS[DOMAIN_GENERALIZATION], dg.record_problem, _dg_warnings, _dg_render, _dg_figures
    ),
    MULTI_TASK: Collector(KINDS[MULTI_TASK], mtl.record_problem, lambda records: [], _mtl_render),
}


def collector(task: str) -> Collector:
    """The collection of the kind ``task``."""
    return COLLECTORS[task]


def record_problem(record: dict) -> str | None:
    """Why a record cannot be used by its kind's tables, or ``None`` when it can (a record
    without ``args.task`` is a domain-generalization one: ``records.record_task``)."""
    return COLLECTORS[record_task(record)].record_problem(record)


__all__ = ["COLLECTORS", "CollectOptions", "Collector", "collector", "record_problem"]
