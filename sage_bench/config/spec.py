"""``JobSpec``: one validated job, a common core plus the settings of its kind.

The core is what every job has (data set, backbone, algorithm, optimizer, seeds,
hyperparameters, where it runs, how it computes); ``settings`` is the kind's own dataclass
(``sage_bench.config.dg.DGSettings``: steps, test environments, holdout;
``sage_bench.config.mtl.MultiTaskSettings``: epochs, learning-rate schedule), which adds its keys
to the job's identity and to its records' ``args``. The spec never asks which kind it is: the settings answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from sage_bench import precision as prec
from sage_bench.computation import (
    backbone_options_that_count,
    dataset_options_that_count,
    perturbation_that_counts,
)
from sage_bench.kinds import Kind, kind_of
from sage_bench.records import job_hash


class KindSettings(Protocol):
    """The settings of one kind of job (a frozen dataclass in the kind's module)."""

    TASK: ClassVar[str]  # the records' ``args.task`` of the kind

    def identity(self, spec: JobSpec, core: dict[str, Any]) -> dict[str, Any]:
        """The job's identity: ``core`` (the keys every job has) with the kind's keys added, and
        left out where the kind's legacy rules say so."""

    def record_args(self, spec: JobSpec) -> dict[str, Any]:
        """The kind's keys of the records' ``args``."""

    def describe(self) -> str:
        """The kind's settings that tell jobs of one algorithm and seeds apart (`` test_envs=[0]``),
        with a leading space, or ``""``."""


@dataclass(frozen=True)
class JobSpec:
    """One validated training job: what to train, with which seeds and hyperparameters, where,
    and the settings of its kind (``settings``; ``task`` names the kind)."""

    dataset: str
    dataset_options: dict[str, Any]
    backbone: str
    backbone_options: dict[str, Any]
    algorithm: str
    optimizer: str
    optimizer_options: dict[str, Any]
    trial_seed: int
    hparams_seed: int
    seed: int
    hparams: dict[str, Any]
    hparams_overrides: dict[str, Any]
    output_dir: Path
    data_dir: Path
    device: str
    num_workers: int
    eval_batch_size: int
    progress: bool
    settings: KindSettings
    # what the job computes in (``sage_bench.precision``): ``precision.train``, ``.eval``, ``.polar``
    precision: dict[str, str] = field(default_factory=lambda: dict(prec.DEFAULT_PRECISION))
    tf32: bool | str = "auto"  # TF32 matrix products on CUDA: auto, True or False
    compile: bool = False  # torch.compile the network
    # how gradients at perturbed weights are computed (``sage_bench.algorithms.perturbation``)
    perturbation: str = "auto"
    perturbation_tolerance: float = 0.01
    save_final_model: bool = False
    wandb: dict[str, Any] = field(default_factory=lambda: {"mode": "off"})
    plugins: tuple[str, ...] = ()  # modules imported for their algorithms; not part of the identity

    @property
    def task(self) -> str:
        """The kind of job (the records' ``args.task``)."""
        return self.settings.TASK

    @property
    def kind(self) -> Kind:
        return kind_of(self.task)

    def identity(self) -> dict[str, Any]:
        """The arguments that define the job's results; their hash names its folder."""
        core = {
            # options that change no number (``sage_bench.computation``) never enter
            "dataset": {"name": self.dataset, **dataset_options_that_count(self.dataset_options)},
            "algorithm": self.algorithm,
            # ``pretrained`` is where the file of the named ``weights`` lies, not what they are
            "backbone": {"name": self.backbone, **backbone_options_that_count(self.backbone_options)},
            "optimizer": {"name": self.optimizer, **self.optimizer_options},
            "trial_seed": self.trial_seed,
            "hparams_seed": self.hparams_seed,
            "seed": self.seed,
            "hparams_overrides": dict(self.hparams_overrides),
        }
        values = self.settings.identity(self, core)
        # precision, tf32 and compile change the numbers, but enter only when not at their
        # defaults: jobs at the defaults keep the folders they had before these keys existed
        values.update(
            prec.identity_settings(
                self.precision, self.tf32, self.compile, self.perturbs_weights(), float32_auto=self.kind.float32_auto
            )
        )
        values.update(self._perturbation_identity())
        return values

    def _perturbation_identity(self) -> dict[str, Any]:
        from sage_bench.algorithms.registry import get_algorithm

        perturbed = getattr(get_algorithm(self.algorithm).cls, "takes_perturbed_gradient", False)
        return perturbation_that_counts(
            self.perturbation, self.perturbation_tolerance, self.precision, perturbed, self.kind.float32_auto
        )

    def perturbs_weights(self) -> bool:
        """Whether the job's algorithm takes gradients at perturbed weights (the SAM family, SAGE)."""
        from sage_bench.algorithms.registry import get_algorithm

        return get_algorithm(self.algorithm).cls.perturbs_weights

    def resolved_precision(self) -> prec.Precision:
        """What this job computes in on its device (``sage_bench.precision``)."""
        return self.resolved_precision_on(torch.device(self.device).type)

    def resolved_precision_on(self, device_type: str) -> prec.Precision:
        """What this job would compute in on a device of ``device_type`` (``"cuda"``, ``"cpu"``)."""
        return prec.resolve_precision(
            self.precision, self.tf32, device_type, self.perturbs_weights(), float32_auto=self.kind.float32_auto,
            perturbation=self.perturbation if self._perturbation_identity() else "difference",
        )  # fmt: skip

    @property
    def job_id(self) -> str:
        return job_hash(self.identity())

    @property
    def job_dir(self) -> Path:
        """``output_dir/<hash of the job's arguments>``."""
        return self.output_dir / self.job_id

    def record_args(self) -> dict[str, Any]:
        """``args`` of every record: DomainBed's argument names, plus sage-bench's own, plus the
        kind's (``settings.record_args``)."""
        return {
            "dataset": self.dataset,
            "algorithm": self.algorithm,
            "backbone": self.backbone,
            "optimizer": self.optimizer,
            "trial_seed": self.trial_seed,
            "hparams_seed": self.hparams_seed,
            "seed": self.seed,
            "hparams": self.hparams_overrides or None,
            "data_dir": str(self.data_dir),
            "output_dir": str(self.job_dir),
            "task": self.task,
            "device": self.device,
            "job_id": self.job_id,
            "dataset_options": self.dataset_options,
            "backbone_options": self.backbone_options,
            "optimizer_options": self.optimizer_options,
            "precision": dict(self.precision),
            "tf32": self.tf32,
            "compile": self.compile,
            "perturbation": {"method": self.perturbation, "tolerance": self.perturbation_tolerance},
            "computed_in": self.resolved_precision().describe(),  # what precision and tf32 resolved to
            **({"plugins": list(self.plugins)} if self.plugins else {}),
            **self.settings.record_args(self),
        }

    def describe(self) -> str:
        """``ALGORITHM DATASET`` and the kind's settings that tell jobs apart (``test_envs=[0]``)."""
        return f"{self.algorithm} {self.dataset}{self.settings.describe()}"


__all__ = ["JobSpec", "KindSettings"]
