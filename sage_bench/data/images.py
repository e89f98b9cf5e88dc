"""Multi-environment image-folder data sets in DomainBed's layout.

``<data_dir>/<FOLDER>/<environment>/<class>/<image>``: environments are the sorted names of the
folders under ``<FOLDER>`` (hidden ones ignored), classes the sorted names of the folders under
the environments, images every file torchvision's ``ImageFolder`` accepts, in ``ImageFolder``'s
order. Labels come from the sorted union of class names over all environments, so they agree
across environments even if one lacks a class (DomainBed indexes each environment on its own).

Unreadable images: ``on_unreadable="error"`` (the default) stops with an error that names the
file; ``"skip"`` warns once per file and uses the next readable image of the same environment
instead, which keeps every environment's length, and so DomainBed's in/out splits, unchanged.
``load_truncated=True`` (the default, as DomainBed) decodes truncated images, filling the missing
part with grey; ``False`` treats them as unreadable.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from sage_bench.data.base import MultiDomainDataset
from sage_bench.data.transforms import Preprocess, eval_transform, train_transform
from sage_bench.errors import UserError

ON_UNREADABLE = ("error", "skip")


class DatasetNotFoundError(UserError):
    """A data set whose folder is missing or incomplete."""


class UnreadableImageError(UserError, OSError):
    """An image file that cannot be decoded."""


def list_folders(path: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``path``."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def find_images(env_dir: Path, class_to_idx: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``env_dir/<class>/``, in ``ImageFolder``'s order."""
    present = {c: i for c, i in class_to_idx.items() if (env_dir / c).is_dir()}
    return make_dataset(str(env_dir), present, extensions=IMG_EXTENSIONS, allow_empty=True)


def decode_image(path: str | os.PathLike, load_truncated: bool = True) -> Image.Image:
    """The image at ``path`` fully decoded as RGB (PIL's errors pass through)."""
    ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated  # read by PIL at decode time
    with Image.open(path) as image:
        return image.convert("RGB")


class ImageFolderEnvironment(Dataset):
    """One environment: ``(transform(image), label)`` pairs from a list of files."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        on_unreadable: str = "error",
        load_truncated: bool = True,
        dataset_name: str = "",
    ):
        if on_unreadable not in ON_UNREADABLE:
            raise UserError(
                f"bad value for 'dataset.on_unreadable': {on_unreadable!r}; valid choices: "
                + ", ".join(ON_UNREADABLE)
            )
        # numpy arrays, not lists of Python objects: worker processes then share the pages
        # instead of copying them as reference counts change (DomainNet has 586,575 paths)
        self.paths = np.array([os.fsencode(path) for path, _ in samples], dtype=np.bytes_)
        self.targets = np.array([label for _, label in samples], dtype=np.int64)
        self.transform = transform
        self.on_unreadable = on_unreadable
        self.load_truncated = load_truncated
        self.dataset_name = dataset_name
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _unreadable(self, path: str, exc: Exception) -> UnreadableImageError:
        name = self.dataset_name or "NAME"
        return UnreadableImageError(
            f"cannot read image {path}: {exc}. `sage-bench data check {name} --data-dir DIR` lists "
            "every unreadable image; replace or delete the file, or set dataset.on_unreadable=skip "
            "to train without it"
        )

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self)):
            position = (index + offset) % len(self)
            path, label = os.fsdecode(self.paths[position]), int(self.targets[position])
            try:
                image = decode_image(path, self.load_truncated)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                if self.on_unreadable == "error":
                    raise self._unreadable(path, exc) from exc
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(f"skipping unreadable image {path}: {exc}", stacklevel=2)
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, label
        raise UserError(f"no readable image in the environment of {os.fsdecode(self.paths[index])}")


class MultiEnvironmentImageFolder(MultiDomainDataset):
    """A DomainBed image-folder data set under ``<root>/<FOLDER>``.

    Subclasses set ``FOLDER`` (DomainBed's folder name), ``ENVIRONMENTS`` (DomainBed's labels),
    ``ENV_FOLDERS`` (the environment folders, sorted), ``NUM_CLASSES`` and ``EXPECTED_IMAGES``
    (images per environment folder in the published data set; ``ALTERNATIVE_IMAGES`` holds
    other published versions). Training environments get DomainBed's augmentation when
    ``hparams['data_augmentation']``; the test environments never do.
    """

    FOLDER: ClassVar[str] = ""
    ENV_FOLDERS: ClassVar[list[str]] = []
    NUM_CLASSES: ClassVar[int] = 0
    EXPECTED_IMAGES: ClassVar[dict[str, int]] = {}
    ALTERNATIVE_IMAGES: ClassVar[dict[str, dict[str, int]]] = {}
    N_STEPS = 5001
    CHECKPOINT_FREQ = 300
    N_WORKERS = 8
    HPARAM_FAMILY = "large"
    DEFAULT_BACKBONE = "clip_vit_b16"

    @classmethod
    def known_environment_sizes(cls) -> list[int] | None:
        versions = [cls.EXPECTED_IMAGES, *cls.ALTERNATIVE_IMAGES.values()]
        if not all(version.keys() >= set(cls.ENV_FOLDERS) for version in versions):
            return None
        return [min(version[folder] for version in versions) for folder in cls.ENV_FOLDERS]

    def __init__(
        self,
        root: str | os.PathLike,
        test_envs: Sequence[int] = (),
        hparams: Mapping[str, Any] | None = None,
        preprocess: Preprocess | None = None,
        on_unreadable: str = "error",
        load_truncated: bool = True,
    ):
        hparams = hparams or {}
        preprocess = preprocess or Preprocess()
        self.data_dir = Path(root)
        self.root = self.locate(root)
        class_names = self.find_classes(self.root)
        class_to_idx = {c: i for i, c in enumerate(class_names)}
        augment = bool(hparams.get("data_augmentation", True))
        self.datasets = []
        for i, env in enumerate(self.ENV_FOLDERS):
            samples = find_images(self.root / env, class_to_idx)
            if not samples:
                raise DatasetNotFoundError(
                    f"{self.name()} environment folder {self.root / env} holds no images; "
                    f"`sage-bench data check {self.name()} --data-dir {self.data_dir}` tells what is wrong"
                )
            use_train = augment and i not in test_envs
            transform = train_transform(preprocess) if use_train else eval_transform(preprocess)
            self.datasets.append(
                ImageFolderEnvironment(samples, transform, on_unreadable, load_truncated, self.name())
            )
        self.folder_class_names = class_names
        self.class_names = [readable_class_name(c) for c in class_names]
        self.num_classes = len(class_names)
        self.input_shape = preprocess.input_shape

    @classmethod
    def name(cls) -> str:
        return cls.__name__

    @classmethod
    def download_command(cls, data_dir: str | os.PathLike) -> str:
        return f"sage-bench download {cls.name()} --data-dir {data_dir}"

    @classmethod
    def locate(cls, data_dir: str | os.PathLike) -> Path:
        """``<data_dir>/<FOLDER>`` with every environment folder in it, or an error that says
        where it looked and how to get the data."""
        root = Path(data_dir) / cls.FOLDER
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"{cls.name()} not found: no folder {root}. Download it with\n"
                f"    {cls.download_command(data_dir)}\n"
                "or point data_dir= (or the SAGE_BENCH_DATA environment variable) at the folder "
                f"that holds {cls.FOLDER}/"
            )
        found = list_folders(root)
        missing = [env for env in cls.ENV_FOLDERS if env not in found]
        if missing:
            raise DatasetNotFoundError(
                f"{cls.name()} at {root} is incomplete: missing environment folder(s) "
                f"{', '.join(missing)} (found: {', '.join(found) or 'none'}). Re-run\n"
                f"    {cls.download_command(data_dir)} --force\n"
                f"or check it with `sage-bench data check {cls.name()} --data-dir {data_dir}`"
            )
        extra = [f for f in found if f not in cls.ENV_FOLDERS]
        if extra:
            raise DatasetNotFoundError(
                f"{cls.name()} at {root} has unexpected folder(s) {', '.join(extra)}; DomainBed's "
                f"environments are {', '.join(cls.ENV_FOLDERS)}. Move the others out of {root}"
            )
        return root

    @classmethod
    def find_classes(cls, root: Path) -> list[str]:
        """Sorted union of the class folders of every environment (a warning if they differ)."""
        per_env = {env: set(list_folders(root / env)) for env in cls.ENV_FOLDERS}
        names = sorted(set().union(*per_env.values()))
        for env, classes in per_env.items():
            if classes != set(names):
                warnings.warn(
                    f"{cls.name()}: environment {env} lacks class folder(s) "
                    f"{', '.join(sorted(set(names) - classes))}",
                    stacklevel=3,
                )
        return names


def readable_class_name(folder: str) -> str:
    """A class folder name as words for a text prompt: ``Alarm_Clock`` -> ``alarm clock``."""
    return folder.replace("_", " ").replace("-", " ").strip().lower()
