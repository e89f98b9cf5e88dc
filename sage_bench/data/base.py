"""The shape every data set shares: a list of environments (domains), DomainBed-style."""

from __future__ import annotations

from typing import ClassVar

from torch.utils.data import Dataset


class MultiDomainDataset:
    """A data set made of environments; ``dataset[i]`` is environment ``i`` (a torch ``Dataset``).

    Subclasses set the class attributes (DomainBed's names) and fill ``self.datasets``,
    ``self.input_shape``, ``self.num_classes`` and ``self.class_names`` in ``__init__``, which
    takes ``(root, test_envs, hparams, preprocess=None, **dataset_options)``: ``preprocess`` is
    the backbone's image size and normalisation (``sage_bench.data.transforms.Preprocess``).
    """

    ENVIRONMENTS: ClassVar[list[str]] = []
    N_STEPS: ClassVar[int] = 5001  # default number of training steps
    CHECKPOINT_FREQ: ClassVar[int] = 100  # default steps between checkpoints
    N_WORKERS: ClassVar[int] = 8  # default data-loading worker processes
    HPARAM_FAMILY: ClassVar[str] = "large"  # "small" (embedded digits) or "large" (real images)
    DEFAULT_BACKBONE: ClassVar[str] = "clip_vit_b16"

    datasets: list[Dataset]
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str]

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)

    @classmethod
    def known_environment_sizes(cls) -> list[int] | None:
        """The number of examples of each environment, in index order, known without reading
        the data (the smallest published count where versions differ); ``None`` if unknown."""
        return None

    @property
    def environment_names(self) -> list[str]:
        """The environments' labels in index order, as DomainBed prints them."""
        return list(self.ENVIRONMENTS)
