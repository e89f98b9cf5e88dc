"""Which settings change the numbers a job records, and which only how it runs: one rule.

The job's identity (``JobSpec.identity``: its folder), the resume check
(``sage_bench.run.checkpoint.check_computation``) and the collector's rows
(``sage_bench.collect.selection.run_setting``, ``sage_bench.collect.mtl.run_setting``) all consult
this module, so the three always agree:

- a setting that changes no number never gives another folder, never refuses a resume and never
  splits a table's row. These are ``dataset.eval_cache`` (cached pixels are bit-identical to
  decoded ones), ``backbone.pretrained`` (where the file of the named weights lies), where a job runs (``PLACE_ARGS``: ``data_dir``, ``output_dir``, ``device``; what
  the device computes in is ``computed_in``, which does count) and a precision setting spelled
  as the value ``auto`` resolves to on every device (``precision.train=fp32`` and ``tf32=false``
  for an algorithm that perturbs weights; see ``sage_bench.precision.identity_settings``).
  The ``perturbation`` method counts only where it changes the computation
  (``perturbation_that_counts``): not for an algorithm without perturbed gradients, not for
  ``difference``, and not for ``auto`` where training is float32 (there it is the difference).
  ``num_workers``, ``progress``, ``eval_batch_size`` and ``wandb.*`` change no number either;
  they are not in a record's ``args`` at all, so nothing can split on them;
- every other setting changes numbers, and does all three.

Records of any age read through ``args_that_count``: an old folder collects and resumes as a new
one with the same computation. Nothing here imports torch unless a record holds a precision
setting away from the defaults (the algorithm's registry says whether it perturbs weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sage_bench.kinds import kind_of

# ``dataset.*`` options that change how fast a job runs, never what it computes
NO_NUMBER_DATASET_OPTIONS = ("eval_cache",)
# ``backbone.*`` options that say where a file lies, not what it holds (the weights are named
# by ``backbone.weights``)
NO_NUMBER_BACKBONE_OPTIONS = ("pretrained",)
# ``args`` of the records that say where a job runs, not what it computes: they may change
# between a stop and a resume (a requeue on another node, a sweep folder moved)
PLACE_ARGS = ("data_dir", "output_dir", "device")
_PRECISION_ARGS = ("precision", "tf32", "compile")
_DEFAULTS = {"precision": {"train": "auto", "eval": "auto", "polar": "auto"}, "tf32": "auto", "compile": False}


def dataset_options_that_count(options: Mapping[str, Any]) -> dict[str, Any]:
    """``dataset.*`` options without those that change no number."""
    return {k: v for k, v in options.items() if k not in NO_NUMBER_DATASET_OPTIONS}


def backbone_options_that_count(options: Mapping[str, Any]) -> dict[str, Any]:
    """``backbone.*`` options without those that change no number."""
    return {k: v for k, v in options.items() if k not in NO_NUMBER_BACKBONE_OPTIONS}


def _class_flag(algorithm: str, flag: str) -> bool | None:
    """A class attribute of a registered algorithm (``None``: not registered here)."""
    from sage_bench.algorithms.registry import algorithms

    registered = algorithms().get(algorithm)
    return None if registered is None else bool(getattr(registered.cls, flag, False))


def _perturbs_weights(algorithm: str) -> bool | None:
    return _class_flag(algorithm, "perturbs_weights")


def perturbation_that_counts(
    method: str, tolerance: float, precision: Mapping[str, str], perturbed_gradient: bool, float32_auto: bool = False
) -> dict[str, Any]:
    """The ``perturbation`` setting as a job's identity spells it: nothing where the job computes
    what it computed before the key existed -- an algorithm without perturbed gradients, the
    ``difference``, and ``auto`` where the training precision is float32 (``precision.train=fp32``,
    or ``auto`` for a kind of job whose ``auto`` is float32, ``float32_auto``), where ``auto`` is the float32 difference; else the method
    (with ``auto``, its tolerance)."""
    if not perturbed_gradient or method == "difference":
        return {}
    train = {**_DEFAULTS["precision"], **precision}["train"]
    if method == "auto":
        if train == "fp32" or (train == "auto" and float32_auto):
            return {}
        return {"perturbation": {"method": method, "tolerance": tolerance}}
    return {"perturbation": {"method": method}}


def _recorded_perturbation(args: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``perturbation`` as it counts (records written before the key: the
    difference, which never counts)."""
    given = args.get("perturbation")
    if not isinstance(given, Mapping) or given.get("method", "difference") == "difference":
        return {}
    perturbed = _class_flag(str(args.get("algorithm")), "takes_perturbed_gradient")
    if perturbed is None:  # an algorithm not registered here (a plugin not loaded): as written
        return {"perturbation": dict(given)}
    precision = args.get("precision") if isinstance(args.get("precision"), Mapping) else {}
    return perturbation_that_counts(
        given["method"], given.get("tolerance", 0.01), precision, perturbed, kind_of(args.get("task")).float32_auto
    )


def precision_that_counts(args: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``precision``, ``tf32`` and ``compile`` as the job identity spells them: only
    the settings away from the defaults, a value ``auto`` resolves to everywhere counting as the
    default. (An algorithm the registry does not know, e.g. of a plugin not loaded here: as
    written.)"""
    given = {k: args[k] for k in _PRECISION_ARGS if k in args}
    if "precision" not in given:  # written before precision.* existed (``autocast`` instead)
        return given
    if all(given.get(k, v) == v for k, v in _DEFAULTS.items()):
        return {}
    float32_auto = kind_of(args.get("task")).float32_auto
    perturbs = _perturbs_weights(str(args.get("algorithm")))
    if perturbs is None and not float32_auto:
        return given
    from sage_bench import precision as prec

    return prec.identity_settings(given["precision"], given.get("tf32", "auto"), bool(given.get("compile", False)),
                                  bool(perturbs), float32_auto=float32_auto)  # fmt: skip


def args_that_count(args: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``args`` with every setting that changes no number left out (see the module
    docstring); what remains differs between two runs exactly when their numbers may."""
    out = {k: v for k, v in args.items() if k not in PLACE_ARGS and k not in _PRECISION_ARGS and k != "perturbation"}
    if isinstance(args.get("dataset_options"), Mapping):
        out["dataset_options"] = dataset_options_that_count(args["dataset_options"])
    if isinstance(args.get("backbone_options"), Mapping):
        out["backbone_options"] = backbone_options_that_count(args["backbone_options"])
    out.update(precision_that_counts(args))
    out.update(_recorded_perturbation(args))
    return out
