"""``JobKind``: what one kind of job brings to the configuration and the layers above it.

A kind (``sage_bench.config.dg``, ``sage_bench.config.mtl``) validates its own keys into its
settings (``KindSettings``, which add the kind's keys to the identity and the records), picks
and checks its backbone and data-set options, declares its shared hyperparameters, its default
seed and evaluation batch, plans its jobs in a sweep and estimates what they keep on disk. The
table ``sage_bench.config.kinds.JOB_KINDS`` maps the records' task value to one ``JobKind``;
adding a kind is one module with a subclass and one entry there (with its training loop in
``sage_bench.run.loops`` and its collection in ``sage_bench.collect.kinds``, keyed the same way).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig

from sage_bench.config.spec import JobSpec, KindSettings
from sage_bench.hparams import HParam
from sage_bench.kinds import Kind

if TYPE_CHECKING:
    import torch

TEST_ENV_MODES = ("single", "all")  # the words of a sweep's ``--test-envs`` (else lists of environments)


class JobKind(ABC):
    """One kind of job, as the configuration, the sweep planner and the disk estimate see it."""

    kind: ClassVar[Kind]  # task value, name, precision rule (``sage_bench.kinds``)
    # the keys only this kind sets: key -> (the value a job of another kind must leave it at, why)
    own_keys: ClassVar[dict[str, tuple[Any, str]]]
    seed_default: ClassVar[str]  # what ``seed=null`` gives, for the messages

    @property
    def task(self) -> str:
        return self.kind.task

    # -- validation ------------------------------------------------------------------------
    @property
    @abstractmethod
    def backbones(self) -> tuple[str, ...]:
        """The backbones a job of this kind may take."""

    @abstractmethod
    def backbone(
        self, cfg: DictConfig, dataset: str, dataset_cls: type, others: Sequence[JobKind]
    ) -> tuple[str, dict[str, Any]]:
        """The job's backbone and its checked options (``others``: the other kinds, whose
        backbones the message of a misplaced one names)."""

    @abstractmethod
    def settings(self, cfg: DictConfig, dataset: str, dataset_cls: type) -> KindSettings:
        """The kind's own keys, checked, with the data set's defaults filled in."""

    @abstractmethod
    def dataset_option_names(self, dataset_cls: type) -> list[str]:
        """The ``dataset.*`` options a data set of this kind takes: the keywords of its
        constructor after those the job passes itself."""

    @abstractmethod
    def dataset_options(self, cfg: DictConfig, dataset_cls: type) -> dict[str, Any]:
        """``dataset.*`` options, checked against the data set's constructor."""

    @abstractmethod
    def shared_hparams(self, dataset: str) -> dict[str, HParam]:
        """The hyperparameters every algorithm has on ``dataset`` (learning rate, batch size, ...)."""

    @abstractmethod
    def eval_batch_size(self, cfg: DictConfig, hparams: dict[str, Any]) -> int:
        """The evaluation batch size."""

    @abstractmethod
    def default_seed(self, cfg: DictConfig, settings: KindSettings) -> int:
        """The seed of a job with ``seed=null``."""

    # -- sweeps ----------------------------------------------------------------------------
    @abstractmethod
    def sweep_variants(
        self, dataset: str, algorithm: str, point: list[str], test_envs: Any
    ) -> tuple[list[list[str]], list[dict[str, Any]]]:
        """How a sweep expands one data set, algorithm and grid point: the overrides added to the
        point (one list per variant, ``[[]]``: the point as it is) and the keys set per job
        (``[{"test_envs": [0]}, ...]``; ``[{}]``: none). ``test_envs`` is the sweep's
        ``--test-envs`` (``"single"``, ``"all"`` or lists)."""

    # -- disk ------------------------------------------------------------------------------
    @abstractmethod
    def last_step(self, spec: JobSpec) -> int | None:
        """The step of a job's last record, where the settings give it (``None``: known only
        once the data are read)."""

    @abstractmethod
    def record_count(self, spec: JobSpec) -> int:
        """How many records a job writes."""

    @abstractmethod
    def record_values(self, spec: JobSpec) -> list[str]:
        """The names of a record's values besides the loss and the timings."""

    @abstractmethod
    def meta_network(self, spec: JobSpec) -> torch.nn.Module:
        """The job's network, built on the meta device (for its size)."""


__all__ = ["TEST_ENV_MODES", "JobKind"]
