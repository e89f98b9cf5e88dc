"""NYUv2 and Cityscapes as the MTAN lineage preprocessed them (``.npy`` files, one per image).

Layout (the one every repository of the lineage reads, from MTAN's Dropbox archives)::

    <data_dir>/nyuv2/{train,val}/{image,label,depth,normal}/<i>.npy        i = 0 .. N-1
    <data_dir>/cityscapes/{train,val}/{image,label_7,depth}/<i>.npy

``N`` is the number of ``image/*.npy`` files (795 / 654 for NYUv2, 2975 / 500 for
Cityscapes). ``image`` is ``H x W x 3`` float, ``label`` ``H x W`` float class indices with
``-1`` unlabelled (13 classes; Cityscapes' ``label_7``: 7 classes), ``depth`` ``H x W x 1``
(0 invalid; Cityscapes: inverse depth), ``normal`` ``H x W x 3`` unit vectors (0 invalid).
NYUv2 is 288 x 384, Cityscapes 128 x 256. The training split gets the lineage's augmentation.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from sage_bench.data.images import DatasetNotFoundError
from sage_bench.data.multitask import AugmentedSplit, Item, MultiTaskDataset, ScaleCropFlip
from sage_bench.mtl.tasks import Task, depth, normal, segmentation

SPLITS = ("train", "val")


class NpySplit(Dataset):
    """One split folder: ``<split>/<modality>/<i>.npy`` for each modality of ``folders``."""

    def __init__(self, path: Path, folders: dict[str, str], tasks: list[Task]):
        self.path = path
        self.folders = folders  # task name (and "image") -> folder name
        self.tasks = tasks
        self.length = len(fnmatch.filter(os.listdir(path / "image"), "*.npy"))

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the evaluation split is not augmented."""

    def __len__(self) -> int:
        return self.length

    def load(self, key: str, index: int) -> np.ndarray:
        return np.load(self.path / self.folders[key] / f"{index}.npy")

    def __getitem__(self, index: int) -> Item:
        image = torch.from_numpy(np.moveaxis(self.load("image", index), -1, 0)).float()
        targets = {}
        for task in self.tasks:
            array = self.load(task.name, index)
            if task.kind == "segmentation":
                targets[task.name] = torch.from_numpy(np.asarray(array)).long()
            else:
                targets[task.name] = torch.from_numpy(np.moveaxis(array, -1, 0)).float()
        return image, targets


class NpyMultiTaskDataset(MultiTaskDataset):
    """A data set in the lineage's ``.npy`` layout under ``<data_dir>/<FOLDER>``."""

    FOLDER: ClassVar[str] = ""
    FOLDERS: ClassVar[dict[str, str]] = {}  # task name (and "image") -> modality folder
    RESOLUTION: ClassVar[tuple[int, int]] = (0, 0)
    EXPECTED_IMAGES: ClassVar[dict[str, int]] = {}  # samples per split
    AUGMENTATION = True
    ALTERNATIVE_IMAGES: ClassVar[dict[str, dict[str, int]]] = {}

    def __init__(self, root: str | os.PathLike, augment: bool = True, seed: int = 0):
        self.data_dir = Path(root)
        self.root = self.locate(root)
        tasks = self.tasks
        train = NpySplit(self.root / "train", self.FOLDERS, tasks)
        self.train = AugmentedSplit(train, ScaleCropFlip(tasks), seed) if augment else train
        self.val = NpySplit(self.root / "val", self.FOLDERS, tasks)
        self.input_shape = (3, *self.RESOLUTION)

    @classmethod
    def download_command(cls, data_dir: str | os.PathLike) -> str:
        return f"sage-bench download {cls.name()} --data-dir {data_dir}"

    @classmethod
    def npy_shapes(cls) -> dict[str, tuple[int, ...]]:
        """The array shape stored in each modality folder: ``H x W x C``, labels ``H x W``."""
        h, w = cls.RESOLUTION
        shapes = {cls.FOLDERS["image"]: (h, w, 3)}
        for task in cls.TASKS:
            shapes[cls.FOLDERS[task.name]] = (h, w) if task.kind == "segmentation" else (h, w, task.channels)
        return shapes

    @classmethod
    def count(cls, root: Path) -> dict[str, int] | None:
        """Samples (``image/*.npy`` files) per split under ``root``; ``None`` if a split or
        modality folder is missing."""
        counts = {}
        for split in SPLITS:
            if not all((root / split / folder).is_dir() for folder in cls.FOLDERS.values()):
                return None
            counts[split] = len(fnmatch.filter(os.listdir(root / split / "image"), "*.npy"))
        return counts

    @classmethod
    def locate(cls, data_dir: str | os.PathLike) -> Path:
        """``<data_dir>/<FOLDER>`` with every split and modality folder, or an error that says
        where it looked and how to get the data."""
        root = Path(data_dir) / cls.FOLDER
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"{cls.name()} not found: no folder {root}. Download it with\n"
                f"    {cls.download_command(data_dir)}\n"
                "or point data_dir= (or the SAGE_BENCH_DATA environment variable) at the folder "
                f"that holds {cls.FOLDER}/"
            )
        missing = [
            str(root / split / folder)
            for split in SPLITS
            for folder in cls.FOLDERS.values()
            if not (root / split / folder).is_dir()
        ]
        if missing:
            raise DatasetNotFoundError(
                f"{cls.name()} at {root} is incomplete: missing folder(s) {', '.join(missing)}. "
                f"Re-run\n    {cls.download_command(data_dir)} --force\nor check it with "
                f"`sage-bench data check {cls.name()} --data-dir {data_dir}`"
            )
        return root


class NYUv2(NpyMultiTaskDataset):
    """NYUv2 (MTAN's preprocessing): 13-class segmentation, depth, surface normals; 288 x 384."""

    TASKS = (segmentation(13), depth(), normal())
    FOLDER = "nyuv2"
    FOLDERS = {"image": "image", "seg": "label", "depth": "depth", "normal": "normal"}
    RESOLUTION = (288, 384)
    EXPECTED_IMAGES = {"train": 795, "val": 654}
    BATCH_SIZE = 2
    DELTA_M = "NYUv2"


class Cityscapes(NpyMultiTaskDataset):
    """Cityscapes (MTAN's preprocessing): 7-class segmentation and inverse depth; 128 x 256."""

    TASKS = (segmentation(7), depth())
    FOLDER = "cityscapes"
    FOLDERS = {"image": "image", "seg": "label_7", "depth": "depth"}
    RESOLUTION = (128, 256)
    EXPECTED_IMAGES = {"train": 2975, "val": 500}
    BATCH_SIZE = 8
    DELTA_M = "Cityscapes"


NPY_DATASETS: dict[str, type[NpyMultiTaskDataset]] = {cls.__name__: cls for cls in (NYUv2, Cityscapes)}
