"""The kinds of job, as the lowest layers need to know them: a name for messages and what
``precision=auto`` means for it (``float32_auto``, read by ``sage_bench.precision``), keyed by the records' task
value (``args.task``: ``records.DOMAIN_GENERALIZATION``, ``records.MULTI_TASK``).

Each kind brings the rest in its own layer, keyed by the same task value: its settings,
validation, identity, record arguments, sweep planning and disk estimate
(``sage_bench.config.kinds``, one module per kind under ``sage_bench.config``), its training loop
(``sage_bench.run.loops``) and its collection (``sage_bench.collect.kinds``). A layer never
imports from a layer above it, so one table at the top could not serve the precision rules and
the collector below it: each layer holds the part of the kind it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK, record_task


@dataclass(frozen=True)
class Kind:
    """A kind of job: its records' ``args.task``, its name in messages (``"multi-task"``) and
    whether ``precision=auto`` and ``tf32=auto`` mean float32 without TF32 for training and
    evaluation whatever the algorithm (``float32_auto``; else they follow the algorithm, see
    ``sage_bench.precision``). Imports nothing heavy: the collector reads it without torch."""

    task: str
    label: str
    float32_auto: bool = False

    @property
    def adjective(self) -> str:
        """The name before a noun: ``"domain-generalization algorithm"``."""
        return self.label.replace(" ", "-")


KINDS: dict[str, Kind] = {
    DOMAIN_GENERALIZATION: Kind(DOMAIN_GENERALIZATION, "domain generalization"),
    # the lineage trains and evaluates every multi-task row in float32
    MULTI_TASK: Kind(MULTI_TASK, "multi-task", float32_auto=True),
}


def kind_of(task: str | None) -> Kind:
    """The kind of a task value; a record written before ``args.task`` existed (``None``, or a
    value no kind has) is a domain-generalization one, as ``records.record_task`` reads it."""
    return KINDS[record_task({"args": {"task": task}})]


__all__ = ["KINDS", "Kind", "kind_of"]
