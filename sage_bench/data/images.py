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

Symbolic links under a class folder are followed as ``ImageFolder`` follows them, except a link
that leads out of the data set's folder (``<data_dir>/<FOLDER>``, where it really is, or the
environment or class folder it is read through), one that loops back to a folder it lies in,
one to a folder already read (which would count its images twice) and a broken one: those are
skipped with a warning, and ``sage-bench data check`` lists them (``scan_images``).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

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


@dataclass
class ImageScan:
    """The images of one environment folder, and the symbolic links not followed."""

    samples: list[tuple[str, int]] = field(default_factory=list)  # (path, label)
    skipped_links: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_class(class_dir: str, allowed: Sequence[str], skipped: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """``(folder, file names)`` of every folder read under ``class_dir``, as ``os.walk`` with
    ``followlinks=True`` would list them, less the links that the module docstring excludes."""
    walked: list[tuple[str, list[str]]] = []
    read: list[str] = []  # real paths of the folders read
    links: list[tuple[str, str, str]] = []  # (link, target, real path of the folder it lies in)

    def walk(path: str, real: str) -> None:
        read.append(real)
        files = []
        with os.scandir(path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not os.path.exists(target):
                        skipped.append((entry.path, "broken link"))
                    elif not any(_within(target, folder) for folder in allowed):
                        skipped.append((entry.path, f"leads out of the data set's folder, to {target}"))
                    elif os.path.isdir(target):
                        links.append((entry.path, target, real))
                    else:
                        files.append(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    walk(entry.path, os.path.join(real, entry.name))
                else:
                    files.append(entry.name)
        walked.append((path, files))

    walk(class_dir, os.path.realpath(class_dir))
    # links to folders last, once every real folder is known: a link to one of them would read
    # its images twice
    while links:
        link, target, parent = links.pop(0)
        if _within(parent, target):
            skipped.append((link, f"loops back to {target}, a folder it lies in"))
        elif any(_within(target, folder) for folder in read):
            skipped.append((link, f"leads to {target}, a folder already read"))
        else:
            walk(link, target)
    return sorted(walked)


def scan_images(env_dir: Path, class_to_idx: Mapping[str, int], data_root: Path | None = None) -> ImageScan:
    """Every image under ``env_dir/<class>/`` in ``ImageFolder``'s order (sorted folders, then
    sorted names), and the links not followed; ``data_root``: the data set's folder (default:
    ``env_dir``'s parent)."""
    data_root = Path(data_root) if data_root is not None else Path(env_dir).parent
    scan = ImageScan()
    for name in sorted(class_to_idx):
        class_dir = Path(env_dir) / name
        if not class_dir.is_dir():
            continue
        allowed = [os.path.realpath(p) for p in (data_root, env_dir, class_dir)]
        for folder, files in _walk_class(str(class_dir), allowed, scan.skipped_links):
            for file in sorted(files):
                if has_file_allowed_extension(file, IMG_EXTENSIONS):
                    scan.samples.append((os.path.join(folder, file), class_to_idx[name]))
    return scan


def find_images(env_dir: Path, class_to_idx: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``env_dir/<class>/``, in ``ImageFolder``'s order
    (links excluded as ``scan_images`` says)."""
    return scan_images(env_dir, class_to_idx).samples


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

    def with_transform(self, transform: Callable | None) -> ImageFolderEnvironment:
        """The same images (the file list is shared, not copied) through another transform."""
        other = copy.copy(self)
        other.transform = transform
        other._warned = set()
        return other

    def unreadable_error(self, path: str, exc: Exception | str) -> UnreadableImageError:
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
                    raise self.unreadable_error(path, exc) from exc
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

    ``eval_augment`` says how training environments are evaluated: ``True`` (DomainBed) through
    the training augmentation, as they are trained on; ``False`` through the deterministic
    evaluation transform, as several DomainBed forks do (``evaluation_environment``).
    ``eval_cache`` (``auto``, ``off``, ``require``) is taken with the other ``dataset.*`` options
    and read by the job's evaluation (``sage_bench.run.evaluation``), not here: whether
    deterministic evaluations read their pixels from ``sage-bench data cache``.
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
        eval_augment: bool = True,
        eval_cache: str = "auto",
    ):
        hparams = hparams or {}
        preprocess = preprocess or Preprocess()
        self.data_dir = Path(root)
        self.root = self.locate(root)
        class_names = self.find_classes(self.root)
        class_to_idx = {c: i for i, c in enumerate(class_names)}
        augment = bool(hparams.get("data_augmentation", True))
        self.load_truncated = load_truncated
        self.on_unreadable = on_unreadable
        self.datasets = []
        self.eval_datasets: list[ImageFolderEnvironment] = []
        self.eval_augmented: list[bool] = []  # whether environment i is evaluated through augmentation
        skipped: list[tuple[str, str]] = []
        for i, env in enumerate(self.ENV_FOLDERS):
            scan = scan_images(self.root / env, class_to_idx, self.root)
            samples = scan.samples
            skipped += scan.skipped_links
            if not samples:
                raise DatasetNotFoundError(
                    f"{self.name()} environment folder {self.root / env} holds no images; "
                    f"`sage-bench data check {self.name()} --data-dir {self.data_dir}` tells what is wrong"
                )
            use_train = augment and i not in test_envs
            transform = train_transform(preprocess) if use_train else eval_transform(preprocess)
            environment = ImageFolderEnvironment(samples, transform, on_unreadable, load_truncated, self.name())
            self.datasets.append(environment)
            if use_train and not eval_augment:
                environment = environment.with_transform(eval_transform(preprocess))
            self.eval_datasets.append(environment)
            self.eval_augmented.append(use_train and eval_augment)
        if skipped:
            path, why = skipped[0]
            warnings.warn(
                f"{self.name()}: {len(skipped)} symbolic link(s) not followed, e.g. {path} ({why}); "
                f"`sage-bench data check {self.name()} --data-dir {self.data_dir}` lists them",
                stacklevel=2,
            )
        self.folder_class_names = class_names
        self.class_names = [readable_class_name(c) for c in class_names]
        self.num_classes = len(class_names)
        self.input_shape = preprocess.input_shape

    def evaluation_environment(self, index: int) -> ImageFolderEnvironment:
        return self.eval_datasets[index]

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
