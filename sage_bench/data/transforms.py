"""DomainBed's image transforms, with the input size and normalisation of the chosen backbone.

DomainBed resizes evaluation images to 224x224 (no crop) and augments training images with a
random resized crop, a horizontal flip, colour jitter and random grayscale, then normalises with
ImageNet's statistics. Here the same pipeline takes its size and statistics from a
``Preprocess`` that the backbone provides (``sage_bench.models.backbone_preprocess``): ImageNet's
for ResNets, CLIP's for CLIP models.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """What a backbone expects: square images of ``image_size`` pixels, normalised per channel."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)


def eval_resize(preprocess: Preprocess) -> transforms.Resize:
    """The deterministic part of evaluation: a resize to a square (aspect ratio not kept). Its
    uint8 output is what the evaluation cache stores (``sage_bench.data.eval_cache``)."""
    size = preprocess.image_size
    return transforms.Resize((size, size))


def eval_transform(preprocess: Preprocess) -> transforms.Compose:
    """DomainBed's evaluation transform: resize to a square (aspect ratio not kept), normalise."""
    return transforms.Compose(
        [
            eval_resize(preprocess),
            transforms.ToTensor(),
            transforms.Normalize(mean=preprocess.mean, std=preprocess.std),
        ]
    )


def train_transform(preprocess: Preprocess) -> transforms.Compose:
    """DomainBed's training augmentation (used when ``hparams['data_augmentation']``)."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(preprocess.image_size, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(),
            transforms.ToTensor(),
            transforms.Normalize(mean=preprocess.mean, std=preprocess.std),
        ]
    )
