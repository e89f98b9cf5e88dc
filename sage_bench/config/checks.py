"""The checks every kind of job shares: seeds, workers, device, output folder, precision,
perturbation, optimizer, wandb and the options of a config group. Each raises a ``ConfigError``
that names the bad key and what is valid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sage_bench.errors import ConfigError


def group_options(cfg: DictConfig, group: str) -> dict[str, Any]:
    node = cfg.get(group)
    if node is None:
        return {}
    options = OmegaConf.to_container(node, resolve=True)
    options.pop("name", None)
    return options


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return name
    raise ConfigError(f"bad value for 'device': {name!r}; valid choices: auto, cpu, cuda, cuda:N")


WANDB_MODES = ("off", "auto", "offline", "online")


def wandb_options(node: DictConfig) -> dict[str, Any]:
    options = OmegaConf.to_container(node, resolve=True)
    mode = options["mode"]
    if isinstance(mode, bool):  # YAML 1.1: off -> False, on -> True
        mode = "auto" if mode else "off"
    if mode not in WANDB_MODES:
        raise ConfigError(f"bad value for 'wandb.mode': {mode!r}; valid choices: {', '.join(WANDB_MODES)}")
    return {**options, "mode": mode}


def check_seeds(cfg: DictConfig, seed_default: str) -> None:
    """``trial_seed`` and ``hparams_seed`` at least 0; ``seed`` null or in [0, 2**64)
    (``seed_default`` says what null gives)."""
    for key in ("trial_seed", "hparams_seed"):
        if cfg[key] < 0:
            raise ConfigError(f"bad value for {key!r}: must be >= 0, got {cfg[key]}")
    if cfg.seed is not None and not 0 <= cfg.seed < 2**64:
        raise ConfigError(f"bad value for 'seed': {cfg.seed} must be in [0, 2**64) (null: {seed_default})")


def num_workers(cfg: DictConfig, default: int) -> int:
    """``num_workers``, or the data set's ``default`` when null; at least 0."""
    workers = cfg.num_workers if cfg.num_workers is not None else default
    if workers < 0:
        raise ConfigError(f"bad value for 'num_workers': must be >= 0, got {workers}")
    return workers


def at_least_one(key: str, value: int) -> int:
    """``value`` of ``key`` if it is at least 1."""
    if value < 1:
        raise ConfigError(f"bad value for {key!r}: must be >= 1, got {value}")
    return value


def refuse_keys(cfg: DictConfig, keys: dict[str, tuple[Any, str]], dataset: str, kind: str) -> None:
    """A ``ConfigError`` for a key of ``keys`` (another kind's: key -> (the value it must keep,
    why)) set away from that value on ``dataset``, a data set of the kind ``kind``."""
    for key, (default, reason) in keys.items():
        value = cfg[key]
        value = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        if value != default:
            raise ConfigError(f"{key}={value} does not apply to {dataset}, a {kind} data set: {reason}")


def check_perturbation_config(cfg: DictConfig) -> tuple[str, float]:
    """``perturbation.method`` and ``.tolerance`` checked, or a ``ConfigError`` naming the bad one."""
    from sage_bench.algorithms.perturbation import check_perturbation

    node = OmegaConf.to_container(cfg.perturbation, resolve=True)
    if not isinstance(node, dict) or set(node) - {"method", "tolerance"}:
        raise ConfigError(
            f"bad value for 'perturbation': {node!r}; valid: perturbation=auto|difference|linearized "
            "and perturbation.tolerance=<number > 0>"
        )
    try:
        return check_perturbation(node.get("method"), node.get("tolerance", 0.01))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def check_output_dir(output_dir: Path) -> None:
    """``output_dir`` must be a folder, or a path where one can be made."""
    for path in (output_dir, *output_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == output_dir else f"lies under {path}, which is a file"
                raise ConfigError(f"bad value for 'output_dir': {output_dir} {what}; name a folder")
            return


def check_optimizer(name: str, hparams: dict[str, Any], options: dict[str, Any]) -> None:
    """Build the optimizer on a dummy parameter and take one step: options and learning rates
    it would refuse (``optimizer.betas=[2,0.9]``; an ``lr`` whose step overflows float32) fail
    here, not in training."""
    from sage_bench.optim import OPTIMIZERS, build_optimizer

    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    dummy = torch.nn.Parameter(torch.zeros(1))
    try:
        optimizer = build_optimizer(name, [dummy], hparams, **options)
        dummy.grad = torch.ones_like(dummy)
        optimizer.step()
    except (TypeError, ValueError, RuntimeError) as exc:
        given = [f"optimizer.{k}={v}" for k, v in options.items()]
        given += [f"hparams.{k}={hparams[k]}" for k in ("lr", "weight_decay") if k in hparams]
        raise ConfigError(f"optimizer={name} refuses its settings ({' '.join(given)}): {exc}") from exc
