"""Multi-task dense-prediction data sets: images with one target map per task, train and val.

A ``MultiTaskDataset`` has ``TASKS`` (``sage_bench.mtl.Task``: name, kind, channels) and two
splits, ``dataset.train`` and ``dataset.val``, whose items are ``(image, targets)``: a float
image ``(3, H, W)`` and a dict by task name of

- segmentation: int64 labels ``(H, W)``, ``-1`` where unlabelled;
- depth: float ``(1, H, W)``, ``0`` where invalid;
- normal: float ``(3, H, W)`` unit vectors, ``0`` where invalid.

The training split of a data set read from disk gets the lineage's augmentation (see
``ScaleCropFlip``); call ``dataset.train.set_epoch(epoch)`` before each epoch: the random draws
of item ``i`` depend only on ``(seed, epoch, i)``, so an epoch is the same whatever the order,
the workers or a resume.
"""

from __future__ import annotations

import random
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sage_bench.mtl.tasks import Task
from sage_bench.seeding import seed_hash

Item = tuple[torch.Tensor, dict[str, torch.Tensor]]


class ScaleCropFlip:
    """The lineage's training augmentation (``RandomScaleCrop`` and the flip in ``__getitem__``).

    A scale ``sc`` from ``(1.0, 1.2, 1.5)``; a crop of ``int(H / sc) x int(W / sc)`` at a random
    offset, resized back to ``H x W`` (image and normals bilinear with ``align_corners=True``,
    labels and depth nearest); depth divided by ``sc`` (a closer look at the same scene); then a
    horizontal flip with probability 1/2 that negates the normals' x component. Normals are not
    renormalised after interpolation, as there.

    The lineage draws the scale and offsets from Python's global ``random`` and the flip from
    torch's global generator; here all four come from ``rng`` in the same order and with the same
    distributions.
    """

    SCALES = (1.0, 1.2, 1.5)

    def __init__(self, tasks: list[Task]):
        self.tasks = tasks

    def __call__(self, image: torch.Tensor, targets: dict[str, torch.Tensor], rng: random.Random) -> Item:
        height, width = image.shape[-2:]
        sc = self.SCALES[rng.randint(0, len(self.SCALES) - 1)]
        h, w = int(height / sc), int(width / sc)
        i = rng.randint(0, height - h)
        j = rng.randint(0, width - w)
        flip = rng.random() < 0.5

        def resize(t: torch.Tensor, mode: str) -> torch.Tensor:
            crop = t[None, :, i : i + h, j : j + w]
            if mode == "bilinear":
                return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=True)[0]
            return F.interpolate(crop, size=(height, width), mode="nearest")[0]

        image = resize(image, "bilinear")
        out = {}
        for task in self.tasks:
            t = targets[task.name]
            if task.kind == "segmentation":
                t = resize(t[None].to(image.dtype), "nearest")[0].to(torch.int64)
            elif task.kind == "depth":
                t = resize(t, "nearest") / sc
            else:
                t = resize(t, "bilinear")
            out[task.name] = t
        if flip:
            image = torch.flip(image, dims=[2])
            for task in self.tasks:
                t = torch.flip(out[task.name], dims=[-1])
                if task.kind == "normal":
                    t[0] = -t[0]
                out[task.name] = t
        return image, out


class AugmentedSplit(Dataset):
    """Wraps a split so item ``i`` of epoch ``e`` is augmented with draws seeded by
    ``(seed, e, i)``."""

    def __init__(self, base: Dataset, augment: ScaleCropFlip, seed: int = 0):
        self.base = base
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Item:
        image, targets = self.base[index]
        return self.augment(image, targets, random.Random(seed_hash(self.seed, self.epoch, index)))


class TensorSplit(Dataset):
    """A split held in memory: ``images`` ``(N, C, H, W)`` and one tensor per task."""

    def __init__(self, images: torch.Tensor, targets: dict[str, torch.Tensor]):
        if any(len(t) != len(images) for t in targets.values()):
            raise ValueError("every target tensor needs one entry per image")
        self.images = images
        self.targets = targets

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: in-memory splits are not augmented."""

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        return self.images[index], {name: t[index] for name, t in self.targets.items()}


class MultiTaskDataset:
    """A multi-task data set with ``train`` and ``val`` splits (see the module docstring).

    Class attributes give its tasks and the lineage's protocol for it: ``N_EPOCHS``,
    ``BATCH_SIZE`` (train and test), ``LR`` and ``LR_STEP_EPOCHS`` (Adam, halved every so many
    epochs), ``MODEL_WIDTH`` (``"paper"`` or ``"narrow"`` MTAN), ``AUGMENTATION`` (whether the
    training split has the lineage's augmentation), ``DEFAULT_BACKBONE`` (the network a job
    builds) and ``DELTA_M`` (the name of its ``Delta_m`` base in ``sage_bench.mtl.DELTA_M_BASES``,
    or ``None`` when there is no published single-task base). ``VERSION``: for a data set that
    is generated (the embedded DigitScenes), the version of its generator, raised whenever its
    data change; it enters the identity and the records' ``args`` of every job on it, so a job
    on older data is neither resumed nor collected beside newer ones (``None``: files on disk).

    The constructor takes ``(root, augment, seed)``: the data folder, whether the training split
    is augmented and the seed of the augmentation's draws (the job's), then the data set's own
    options (``dataset.*`` keys of a job).
    """

    TASKS: ClassVar[tuple[Task, ...]] = ()
    N_EPOCHS: ClassVar[int] = 200
    BATCH_SIZE: ClassVar[int] = 2
    LR: ClassVar[float] = 1e-4  # Adam, no weight decay
    LR_STEP_EPOCHS: ClassVar[int] = 100  # StepLR: the learning rate halves every this many epochs
    N_WORKERS: ClassVar[int] = 4
    HPARAM_FAMILY: ClassVar[str] = "large"
    MODEL_WIDTH: ClassVar[str] = "paper"
    AUGMENTATION: ClassVar[bool] = False
    DEFAULT_BACKBONE: ClassVar[str] = "mtan"
    DELTA_M: ClassVar[str | None] = None
    VERSION: ClassVar[int | None] = None

    train: Dataset
    val: Dataset
    input_shape: tuple[int, int, int]

    @property
    def tasks(self) -> list[Task]:
        return list(self.TASKS)

    @classmethod
    def check_options(cls, **options) -> None:
        """Raise ``ValueError`` for an option value the constructor would refuse (checked when
        a job is configured, before it runs); none by default."""

    @classmethod
    def name(cls) -> str:
        return cls.__name__
