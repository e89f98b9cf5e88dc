"""Domain-generalization records: which are usable for model selection (``record_problem``) and
the warnings their runs call for (settings that split a row, runs that lost their perturbation
to bf16). Their tables are ``sage_bench.collect.report`` and ``sage_bench.collect.tables``."""

from __future__ import annotations

import math
from collections import defaultdict
from numbers import Real

from sage_bench.collect.selection import varying_settings
from sage_bench.records import args_problem

REQUIRED_ARGS = ("dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed")


def _is_accuracy(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def record_problem(record: dict) -> str | None:
    """Why a domain-generalization record cannot be used for model selection, or ``None`` when it can.

    A usable record has ``step``, DomainBed's ``args`` keys (``dataset``, ``algorithm``,
    ``test_envs``, ``trial_seed``, ``hparams_seed``), and finite ``env{i}_in_acc`` and
    ``env{i}_out_acc`` for environments ``0 .. n-1`` (``n`` counted as DomainBed counts it: up to
    the first missing ``env{i}_out_acc``), every test environment among them. Records of
    ``eval_splits=selection`` runs have no in-split accuracy of their training environments,
    which no selection method reads.
    """
    problem = args_problem(record, REQUIRED_ARGS)
    if problem is not None:
        return problem
    args = record["args"]
    if not isinstance(record.get("step"), Real) or isinstance(record.get("step"), bool):
        return "no step number"
    test_envs = args["test_envs"]
    if not isinstance(test_envs, list) or not test_envs or not all(isinstance(e, int) for e in test_envs):
        return f"test_envs is not a list of environment indices: {test_envs!r}"
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    if n == 0:
        return "no env0_out_acc"
    selection_only = args.get("eval_splits") == "selection"  # training in-splits not evaluated
    for i in range(n):
        for split in ("in", "out"):
            if split == "in" and selection_only and i not in test_envs and f"env{i}_in_acc" not in record:
                continue
            if not _is_accuracy(record.get(f"env{i}_{split}_acc")):
                return f"env{i}_{split}_acc is missing or not a finite number"
    if max(test_envs) >= n or min(test_envs) < 0:
        return f"test_envs {test_envs} outside the {n} environments of the record"
    return None


def mixed_settings(records: list[dict]) -> list[str]:
    """A note for each (data set, algorithm) whose runs differ in a setting that DomainBed's
    grouping ignores (``selection.SETTING_ARGS``): each setting becomes a row of its own, named
    after the differing values (``selection.row_names``), instead of being selected among as if
    the runs were one sweep."""
    return [
        f"{dataset} / {algorithm}: runs differ in "
        + "; ".join(f"{key} ({', '.join(values)})" for key, values in varying.items())
        + ": each is a row of its own, named after these values"
        for (dataset, algorithm), varying in varying_settings(records).items()
    ]


def bf16_perturbation_runs(records: list[dict]) -> list[str]:
    """Warnings for runs of algorithms that perturb weights (the SAM family, SAGE) trained on
    CUDA under bf16 autocast, the default before ``precision.*`` existed (their records carry
    ``args.autocast == "bf16"``): the forward pass rounded most of their perturbation away, so
    they did not compute their published update (see ``sage_bench.precision``)."""
    old_cuda_bf16 = [
        r for r in records
        if r["args"].get("autocast") == "bf16" and str(r["args"].get("device", "")).startswith("cuda")
    ]  # fmt: skip
    if not old_cuda_bf16:  # the registry imports torch: only for records that need it
        return []
    from sage_bench.algorithms.registry import algorithms

    registered = algorithms()
    runs: dict[str, set[str]] = defaultdict(set)
    for r in old_cuda_bf16:
        args = r["args"]
        name = args["algorithm"]
        if name in registered and registered[name].cls.perturbs_weights:
            runs[name].add(str(args.get("output_dir") or args.get("job_id")))
    return [
        f"{algorithm}: {len(folders)} run(s) trained on CUDA under bf16 autocast (records with "
        "autocast: bf16), where the forward pass loses most of the weight perturbation; they are not "
        f"{algorithm}'s published update. Train them again into a new output_dir (the default now "
        "computes them in float32), or delete their folders first"
        for algorithm, folders in sorted(runs.items())
    ]


__all__ = ["REQUIRED_ARGS", "bf16_perturbation_runs", "mixed_settings", "record_problem"]
