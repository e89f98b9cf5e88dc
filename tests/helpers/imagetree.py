"""Small fabricated image trees in DomainBed's layout, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 24)) -> None:
    """A random RGB image (height, width = ``size``) saved in the format of ``path``'s suffix."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def make_tree(root: Path, envs: list[str], classes: list[str], per_class: int = 2, suffix: str = ".jpg") -> dict[str, int]:
    """``root/<env>/<class>/<i><suffix>`` for every env and class; returns images per env."""
    seed = 0
    for env in envs:
        for c in classes:
            for i in range(per_class):
                write_image(root / env / c / f"{i}{suffix}", seed)
                seed += 1
    return {env: len(classes) * per_class for env in envs}


PACS_CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
PACS_ENVS = ["art_painting", "cartoon", "photo", "sketch"]
