"""Embedded multi-domain data sets built from scikit-learn's handwritten digits (no download).

scikit-learn ships 1,797 real 8x8 handwritten digits (the UCI optical-digits test set) inside
the installed package. They are upsampled to 16x16 (bilinear) and dealt into environments
round-robin after one fixed shuffle, as DomainBed deals MNIST; the recipes per environment
are DomainBed's:

- ``RotatedDigits``: environment ``k`` rotates every image by 0, 15, 30, 45, 60 or 75 degrees
  (DomainBed's RotatedMNIST angles; bilinear, zero fill). Ten classes.
- ``ColoredDigits``: DomainBed's ColoredMNIST recipe. The label is ``digit < 5``, flipped with
  probability 0.25; a colour (which of two channels holds the digit) equals the label, flipped
  with probability 0.1, 0.2 and 0.9 in the three environments. Colour predicts the label 90% and
  80% of the time in the first two environments and 10% in the third, so a model that leans
  on colour instead of shape fails out of domain.

Difference from DomainBed, on purpose: DomainBed shuffles MNIST with the job's global seed, so
jobs with different seeds see different environments. Here the shuffle and the colour draws use
a fixed seed, so every job of a sweep sees the same environments and only the in/out split
(``trial_seed``) and training randomness (``seed``) vary.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from torchvision.transforms.functional import InterpolationMode, rotate

from sage_bench.data.base import MultiDomainDataset

IMAGE_SIZE = 16
_DATA_SEED = 0  # fixed: environments are a property of the data set, not of a job


@lru_cache(maxsize=1)
def load_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as float images ``(N, 1, 16, 16)`` in [0, 1] and labels ``(N,)``,
    in one fixed shuffled order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp_(0.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DATA_SEED))
    return images[order].contiguous(), labels[order].contiguous()


class _DigitsDataset(MultiDomainDataset):
    N_STEPS = 501
    CHECKPOINT_FREQ = 50
    N_WORKERS = 0  # in memory: worker processes would only add overhead
    HPARAM_FAMILY = "small"
    DEFAULT_BACKBONE = "digits_cnn"
    ENV_PARAMETERS: list[float] = []

    def __init__(
        self,
        root: str | None = None,
        test_envs: list[int] | None = None,
        hparams: dict | None = None,
        preprocess=None,  # a backbone's image preprocessing; unused: the tensors are made here
    ):
        images, labels = load_digit_images()
        n_envs = len(self.ENV_PARAMETERS)
        self.datasets = [
            self.make_environment(images[i::n_envs], labels[i::n_envs], param, i)
            for i, param in enumerate(self.ENV_PARAMETERS)
        ]

    def make_environment(
        self, images: torch.Tensor, labels: torch.Tensor, param: float, index: int
    ) -> TensorDataset:
        raise NotImplementedError

    @classmethod
    def known_environment_sizes(cls) -> list[int]:
        n_images, n_envs = len(load_digit_images()[1]), len(cls.ENV_PARAMETERS)
        return [len(range(i, n_images, n_envs)) for i in range(n_envs)]


class RotatedDigits(_DigitsDataset):
    """Digits rotated by 0-75 degrees, one angle per environment (DomainBed's RotatedMNIST)."""

    ENVIRONMENTS = ["0", "15", "30", "45", "60", "75"]
    ENV_PARAMETERS = [0.0, 15.0, 30.0, 45.0, 60.0, 75.0]

    def __init__(self, root=None, test_envs=None, hparams=None, preprocess=None):
        super().__init__(root, test_envs, hparams)
        self.input_shape = (1, IMAGE_SIZE, IMAGE_SIZE)
        self.num_classes = 10
        self.class_names = [str(d) for d in range(10)]

    def make_environment(self, images, labels, angle, index):
        rotated = rotate(images, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])
        return TensorDataset(rotated, labels)


class ColoredDigits(_DigitsDataset):
    """Binary ``digit < 5`` with a colour cue that flips across environments (ColoredMNIST)."""

    ENVIRONMENTS = ["+90%", "+80%", "-90%"]
    ENV_PARAMETERS = [0.1, 0.2, 0.9]  # probability that the colour disagrees with the label

    def __init__(self, root=None, test_envs=None, hparams=None, preprocess=None):
        super().__init__(root, test_envs, hparams)
        self.input_shape = (2, IMAGE_SIZE, IMAGE_SIZE)
        self.num_classes = 2
        self.class_names = ["5-9", "0-4"]

    def make_environment(self, images, digits, flip_colour, index):
        g = torch.Generator().manual_seed(_DATA_SEED + 1 + index)
        labels = (digits < 5).long()
        labels = labels ^ (torch.rand(len(labels), generator=g) < 0.25).long()
        colours = labels ^ (torch.rand(len(labels), generator=g) < flip_colour).long()
        coloured = torch.zeros(len(images), 2, IMAGE_SIZE, IMAGE_SIZE)
        coloured[torch.arange(len(images)), colours] = images[:, 0]
        return TensorDataset(coloured, labels)
