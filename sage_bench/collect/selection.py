"""Model selection exactly as DomainBed's ``model_selection.py`` and ``collect_results.py``.

Records are grouped by ``(trial_seed, dataset, algorithm, test_env)``; a record of a run with
several test environments belongs to the group of each of them. Within a group, the records of
one hyperparameter configuration form a "run"; each method turns a run into a
``(val_acc, test_acc)`` pair, and the group's accuracy is the ``test_acc`` of the run with the
best ``val_acc``.

- ``training-domain`` (DomainBed's ``IIDAccuracySelectionMethod``): over the checkpoints of
  the run's single-test-environment records, validation = the mean of the training
  environments' out-split accuracies, test = the test environment's in-split accuracy.
- ``leave-one-out`` (``LeaveOneOutSelectionMethod``): per step, validation = the mean over the
  other environments ``v`` of the in-split accuracy on ``v`` of the run whose test environments
  are ``{test_env, v}``; a step counts only when every such run has a record at that step and
  exactly one single-test-environment record exists there.
- ``oracle`` (``OracleSelectionMethod``): the LAST checkpoint of the run (no early stopping);
  validation = the test environment's out-split accuracy, test = its in-split accuracy.

DomainBed's behaviour kept on purpose, surprising or not:

- Ties between checkpoints go to the earliest (the first record in file order for
  training-domain validation, the smallest step for leave-one-out: Python's ``max`` keeps the
  first maximum); ties between configurations go to the largest ``hparams_seed`` (DomainBed
  groups by sorted key, sorts the configurations ascending by validation accuracy, stably, and
  takes the last). Neither depends on the order in which folders are listed.
- Records with several test environments never count as checkpoints of their own: they only
  serve as leave-one-out validation. A record of a run with test environments ``{0, 1}``
  belongs to the groups of environment 0 and of environment 1.
- The oracle takes the last checkpoint of each configuration's single-test-environment
  records, whether or not the run finished; only the choice among configurations looks at the
  test environment (its out-split).
- Incomplete runs take part like finished ones (``--completed-only`` leaves them out).

Three extensions, which change nothing for DomainBed's own sweeps:

- DomainBed identifies a configuration by ``hparams_seed`` alone. Here it is ``hparams_seed``
  together with the job's hyperparameter overrides (``args.hparams``), so a grid over e.g.
  ``hparams.rho`` at the same ``hparams_seed`` is several configurations. For records without
  overrides the two are the same.
- A SAGE run with a component switched off (``hparams.orthogonalize``, ``layer_scale`` or
  ``noise`` false) is a different method, not a configuration of SAGE: it is tabulated as its
  own algorithm, e.g. ``SAGE w/o noise`` (see ``algorithm_name``), so an ablation never takes
  SAGE's place in a table.
- Runs of one algorithm that differ in what they compute besides their seeds and
  hyperparameters (``SETTING_ARGS``: backbone, optimizer, data set options, steps,
  ``checkpoint_freq``, holdout fraction, an explicitly set ``seed``, precision; not those that
  change no number, ``sage_bench.computation``) are never
  selected among as one sweep: each setting is a row of its own, named after the values that
  differ, e.g. ``ERM (backbone=resnet50)`` and ``ERM (backbone=clip_vit_b16)``, or
  ``ERM (seed=1)`` and ``ERM (seed=2)`` for a sweep over ``seed=1,2`` (see ``row_names``). The
  ``seed`` that DomainBed's sweep (and sage-bench's by default) derives from each job differs
  from job to job by design and does not count.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from sage_bench.computation import args_that_count
from sage_bench.seeding import seed_hash

SELECTION_METHODS = ("training-domain", "leave-one-out", "oracle")
SELECTION_NAMES = {
    "training-domain": "training-domain validation set",
    "leave-one-out": "leave-one-domain-out cross-validation",
    "oracle": "test-domain validation set (oracle)",
}


# components of an algorithm that its records can switch off (``hparams.<switch> = false``)
VARIANT_SWITCHES = {"SAGE": ("orthogonalize", "layer_scale", "noise")}


def algorithm_name(record: dict) -> str:
    """The algorithm a record is tabulated under: ``args.algorithm``, with ``w/o <switch>, ...``
    appended when the record's ``hparams`` switch components of it off (see the module docstring)."""
    algorithm = record["args"]["algorithm"]
    hparams = record.get("hparams")
    if not isinstance(hparams, dict):
        return algorithm
    off = [s for s in VARIANT_SWITCHES.get(algorithm, ()) if hparams.get(s) is False]
    return f"{algorithm} w/o {', '.join(off)}" if off else algorithm


# ``args`` that change what a run computes besides its data set, algorithm, test environments,
# seeds and hyperparameters (the job identity's other keys, and the precision)
SETTING_ARGS = (
    "backbone", "backbone_options", "optimizer", "optimizer_options", "dataset_options", "steps",
    "checkpoint_freq", "holdout_fraction", "seed", "autocast", "precision", "tf32", "compile",
    "perturbation",
)  # fmt: skip
DERIVED_SEED = "per job"  # the label of a seed derived from the job, as DomainBed's sweep sets it


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def run_setting(record: dict) -> dict[str, str]:
    """The values of a record's ``SETTING_ARGS`` as text, dictionaries flattened
    (``backbone_options.weights``); settings that change no number left out
    (``sage_bench.computation``: ``dataset_options.eval_cache``, a precision spelled as its default)."""
    args = args_that_count(record["args"])
    values = {}
    for key in SETTING_ARGS:
        value = args.get(key)
        if key == "seed" and value == seed_hash(
            args["dataset"], args["algorithm"], args["test_envs"], args["hparams_seed"], args["trial_seed"]
        ):
            value = DERIVED_SEED
        if isinstance(value, dict):
            values.update({f"{key}.{k}": _text(v) for k, v in value.items()})
        else:
            values[key] = _text(value)
    return values


def _setting_order(key: str) -> tuple[int, str]:
    return SETTING_ARGS.index(key.split(".")[0]), key


def varying_settings(records: list[dict]) -> dict[tuple[str, str], dict[str, list[str]]]:
    """``{(data set, algorithm name): {setting: its values}}`` for the settings in which the
    runs of one algorithm on one data set differ (an absent key reads ``None``)."""
    seen: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    distinct: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        setting = run_setting(r)
        key = (r["args"]["dataset"], algorithm_name(r))
        text = json.dumps(setting, sort_keys=True)
        if text not in distinct[key]:
            distinct[key].add(text)
            seen[key].append(setting)
    out = {}
    for key, settings in seen.items():
        names = set().union(*settings)
        values = {n: sorted({s.get(n, "None") for s in settings}) for n in names}
        varying = {n: v for n, v in sorted(values.items(), key=lambda kv: _setting_order(kv[0])) if len(v) > 1}
        if varying:
            out[key] = varying
    return out


def row_names(records: list[dict]) -> list[str]:
    """The row each record is tabulated under: ``algorithm_name``, followed by the values of the
    settings in which that algorithm's runs differ on some data set, e.g. ``ERM (steps=5000)``."""
    by_algorithm: dict[str, set[str]] = defaultdict(set)
    for (_, name), varying in varying_settings(records).items():
        by_algorithm[name].update(varying)
    names = []
    for r in records:
        name = algorithm_name(r)
        keys = sorted(by_algorithm.get(name, ()), key=_setting_order)
        if keys:
            setting = run_setting(r)
            name += " (" + ", ".join(f"{k}={setting.get(k, 'None')}" for k in keys) + ")"
        names.append(name)
    return names


@dataclass(frozen=True)
class GroupKey:
    trial_seed: int
    dataset: str
    algorithm: str
    test_env: int


def env_count(record: dict) -> int:
    """Number of environments of a record: ``env0_out_acc``, ``env1_out_acc``, ... present."""
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    return n


def configuration(record: dict) -> tuple[int, str]:
    """What identifies a hyperparameter configuration within a group (see the module docstring)."""
    overrides = record["args"].get("hparams")
    if isinstance(overrides, str):  # DomainBed stores overrides as a JSON string
        try:
            overrides = json.loads(overrides)
        except ValueError:
            pass
    return record["args"]["hparams_seed"], json.dumps(overrides, sort_keys=True)


def group_records(records: list[dict]) -> dict[GroupKey, list[dict]]:
    """Records by ``(trial_seed, dataset, algorithm, test_env)``, in input order; the algorithm
    is the record's row (``row_names``)."""
    groups: dict[GroupKey, list[dict]] = defaultdict(list)
    for r, name in zip(records, row_names(records), strict=True):
        args = r["args"]
        for test_env in args["test_envs"]:
            groups[GroupKey(args["trial_seed"], args["dataset"], name, test_env)].append(r)
    return dict(groups)


def _single_test_env(records: list[dict]) -> list[dict]:
    return [r for r in records if len(r["args"]["test_envs"]) == 1]


def _argmax(items: list[dict]) -> dict:
    return max(items, key=lambda item: item["val_acc"])  # first maximum wins, as DomainBed


def training_domain_run_acc(run: list[dict]) -> dict[str, float] | None:
    records = _single_test_env(run)
    if not records:
        return None
    steps = []
    for r in records:
        test_env = r["args"]["test_envs"][0]
        val_keys = [f"env{i}_out_acc" for i in range(env_count(r)) if i != test_env]
        steps.append(
            {"val_acc": float(np.mean([r[k] for k in val_keys])), "test_acc": r[f"env{test_env}_in_acc"]}
        )
    return _argmax(steps)


def oracle_run_acc(run: list[dict]) -> dict[str, float] | None:
    records = _single_test_env(run)
    if not records:
        return None
    test_env = records[0]["args"]["test_envs"][0]
    last = sorted(records, key=lambda r: r["step"])[-1]
    return {"val_acc": last[f"env{test_env}_out_acc"], "test_acc": last[f"env{test_env}_in_acc"]}


def _leave_one_out_step(records: list[dict], test_env: int) -> dict[str, float] | None:
    tests = _single_test_env(records)
    if len(tests) != 1:
        return None
    n_envs = env_count(records[0])
    val_accs = np.zeros(n_envs) - 1
    for r in records:
        if len(r["args"]["test_envs"]) == 2:
            val_env = (set(r["args"]["test_envs"]) - {test_env}).pop()
            val_accs[val_env] = r[f"env{val_env}_in_acc"]
    others = list(val_accs[:test_env]) + list(val_accs[test_env + 1 :])
    if any(v == -1 for v in others):
        return None
    return {"val_acc": float(np.sum(others) / (n_envs - 1)), "test_acc": tests[0][f"env{test_env}_in_acc"]}


def leave_one_out_run_acc(run: list[dict], test_env: int) -> dict[str, float] | None:
    by_step: dict[Any, list[dict]] = defaultdict(list)
    for r in run:
        by_step[r["step"]].append(r)
    steps = [_leave_one_out_step(by_step[s], test_env) for s in sorted(by_step)]
    steps = [s for s in steps if s is not None]
    return _argmax(steps) if steps else None


def run_acc(method: str, run: list[dict], test_env: int) -> dict[str, float] | None:
    """``(val_acc, test_acc)`` of one configuration's records in one group, or ``None``."""
    if method == "training-domain":
        return training_domain_run_acc(run)
    if method == "leave-one-out":
        return leave_one_out_run_acc(run, test_env)
    if method == "oracle":
        return oracle_run_acc(run)
    raise ValueError(f"unknown selection method {method!r}; valid choices: {', '.join(SELECTION_METHODS)}")


def select(method: str, group: list[dict], test_env: int) -> dict[str, Any] | None:
    """The chosen configuration of a group: its ``val_acc``, ``test_acc`` and records."""
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for r in group:
        runs[configuration(r)].append(r)
    scored = []
    for key in sorted(runs):
        acc = run_acc(method, runs[key], test_env)
        if acc is not None:
            scored.append({**acc, "records": runs[key]})
    if not scored:
        return None
    # DomainBed: sorted ascending by val_acc (stable), then reversed -> ties: the last key wins
    return sorted(scored, key=lambda s: s["val_acc"])[::-1][0]


def sweep_accs(method: str, records: list[dict]) -> dict[GroupKey, float]:
    """The selected test accuracy of every group that has one."""
    out = {}
    for key, group in group_records(records).items():
        chosen = select(method, group, key.test_env)
        if chosen is not None:
            out[key] = chosen["test_acc"]
    return out
