"""DigitScenes: an embedded multi-task data set of NYUv2's kind, made from scikit-learn's digits.

No download: every scene is rendered from the 1,797 handwritten 8x8 digits that ship inside
scikit-learn (``sage_bench.data.digits.load_digit_images``), deterministically from ``seed``,
in well under a second. A 32 x 32 scene is a tilted plane with one large digit (upsampled to
28 x 28, strokes thickened by a pixel) embossed on it, lit by a lamp at the camera:

- depth: the plane ``z = z0 + a x + b y`` (``z0`` in [1.5, 2.5] at the centre; ``a``, ``b`` in
  [-1, 1], the change across the image) minus the stroke intensity times a height in [0.4, 1.0],
  so the strokes stand out towards the camera;
- normals: from the depth's central differences with the image 2 depth units wide,
  ``n = (-dz/dx, -dz/dy, 1) / norm``, ``x`` along the image columns (the component NYUv2's flip
  augmentation negates);
- segmentation (6 classes): 0 for the background, ``1 + d // 2`` (the digit's pair: 0-1, 2-3,
  4-5, 6-7, 8-9) where the stroke intensity exceeds 0.5, ``-1`` (unlabelled, as NYUv2's holes)
  on the rim between 0.2 and 0.5;
- the image: albedo times Lambertian shading (a low light from the upper left, 10% ambient)
  times the lamp's inverse-square falloff ``(2 / z)^2``, plus 2% noise. The background's albedo
  is the same grey in every scene and each pair's digits have one saturated colour (red, green,
  blue, yellow, cyan; +-2%), so nothing but depth changes the brightness of a surface of given
  orientation: brightness tells depth, shading the normals, colour and shape the class.
  (Version 1 of the scenes hazed a random background colour: depth was confounded with it, and a
  constant predictor beat every row on depth.)
- invalid pixels: in half the scenes a random 6 x 6 square has depth 0 and normals 0 (as the
  depth sensor's holes in NYUv2); its labels are kept.

Train scenes (1,024) draw digits from the first 70% of a fixed shuffle of scikit-learn's digits
and validation scenes (256) from the rest, so validation is unseen handwriting.

SegNet-MTAN has no skip connections, so a per-pixel class must pass its 1 x 1 bottleneck at this
size; one large digit and five classes keep that learnable in a few hundred steps.

``DigitScenes`` has NYUv2's three tasks (``seg``, ``depth``, ``normal``); ``DigitScenes2``
Cityscapes' two (``seg``, ``depth``) on the same scenes. Neither has a published single-task
base, so ``DELTA_M`` is ``None``. ``train_scenes`` and ``val_scenes`` keep the first scenes of
each split (a job's default trains on 512, so that it takes less than a minute on a CPU); the
scenes themselves never change with them.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from sage_bench.data.catalog import DATA_VERSIONS
from sage_bench.data.digits import load_digit_images
from sage_bench.data.multitask import MultiTaskDataset, TensorSplit
from sage_bench.mtl.tasks import depth, normal, segmentation

SIZE = 32
DIGIT_SIZE = 28
DIGITS_PER_SCENE = 1
DIGIT_GROUPS = 5  # digits 0-1, 2-3, 4-5, 6-7, 8-9
CLASSES = 1 + DIGIT_GROUPS  # background + the groups
COLOUR_NOISE = 0.02
TRAIN_SCENES, VAL_SCENES = 1024, 256
TRAIN_DIGIT_SHARE = 0.7  # of the 1,797 digits, the first 70% (fixed shuffle) draw train scenes
LIGHT = (-1.0, -1.0, 1.0)  # towards the light, in (x, y, z) image coordinates: low, from the upper left
AMBIENT = 0.1  # share of the shading that does not depend on the normal
BACKGROUND = (0.8, 0.8, 0.8)  # the plane's albedo, the same in every scene
DIGIT_COLOURS = ((1.0, 0.1, 0.1), (0.1, 1.0, 0.1), (0.1, 0.1, 1.0), (1.0, 1.0, 0.1), (0.1, 1.0, 1.0))  # per pair
Z_NEAR, Z_FAR = 1.5, 2.5  # range of the plane's depth at the image centre
Z_REFERENCE = 2.0  # depth at which the lamp's falloff is 1
NOISE = 0.02
RELIEF = (0.4, 1.0)  # range of the digit's height above the plane
SLOPE = 1.0  # largest change of the plane's depth across the image, along x and along y
PIXEL = 2.0 / SIZE  # the image spans 2 depth units: slopes are in depth units per depth unit
HOLE = 6  # side of the square of invalid depth and normals


def _digit_strokes() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as ``DIGIT_SIZE`` stroke maps in [0, 1] and their classes (fixed order)."""
    images, labels = load_digit_images()  # (N, 1, 16, 16), shuffled once with a fixed seed
    strokes = F.interpolate(images, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False)
    strokes = F.max_pool2d(strokes, kernel_size=3, stride=1, padding=1)  # bold strokes
    return strokes[:, 0].clamp(0.0, 1.0), labels


def normals_from_depth(z: torch.Tensor) -> torch.Tensor:
    """Unit normals ``(N, 3, H, W)`` of depth maps ``(N, 1, H, W)`` (pixels ``PIXEL`` depth units
    apart; central differences inside, one-sided at the border)."""
    dz_dy, dz_dx = torch.gradient(z[:, 0], spacing=PIXEL, dim=(1, 2))
    scale = torch.rsqrt(dz_dx * dz_dx + dz_dy * dz_dy + 1)
    return torch.stack([-dz_dx * scale, -dz_dy * scale, scale], dim=1)


def _place(stroke_maps: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """``(N, DIGIT_SIZE, DIGIT_SIZE)`` maps pasted into zero ``(N, SIZE, SIZE)`` canvases with
    their top-left corners at ``corners`` ``(N, 2)``."""
    n = len(stroke_maps)
    offsets = torch.arange(DIGIT_SIZE)
    rows = corners[:, 0, None, None] + offsets[None, :, None]
    cols = corners[:, 1, None, None] + offsets[None, None, :]
    index = (rows * SIZE + cols).reshape(n, -1)
    canvas = torch.zeros(n, SIZE * SIZE)
    return canvas.scatter_(1, index, stroke_maps.reshape(n, -1)).view(n, SIZE, SIZE)


def render_scenes(
    count: int, strokes: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``count`` scenes from the digit pool ``(strokes, labels)``: images ``(N, 3, 32, 32)`` and
    targets ``seg`` ``(N, 32, 32)``, ``depth`` ``(N, 1, 32, 32)``, ``normal`` ``(N, 3, 32, 32)``."""
    g = generator
    coords = torch.linspace(-0.5, 0.5, SIZE)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    z0 = Z_NEAR + (Z_FAR - Z_NEAR) * torch.rand(count, 1, 1, generator=g)
    slopes = SLOPE * (torch.rand(count, 2, 1, 1, generator=g) * 2 - 1)
    plane = z0 + slopes[:, 0] * x + slopes[:, 1] * y  # (N, H, W)

    picks = torch.randint(len(labels), (count, DIGITS_PER_SCENE), generator=g)
    corners = torch.randint(SIZE - DIGIT_SIZE + 1, (count, DIGITS_PER_SCENE, 2), generator=g)
    heights = RELIEF[0] + (RELIEF[1] - RELIEF[0]) * torch.rand(count, DIGITS_PER_SCENE, generator=g)
    # the background's albedo is the same grey in every scene; digit pair p has colour p (+-2%)
    groups = labels[picks] // 2
    colours = torch.tensor(DIGIT_COLOURS)[groups] * (1 + COLOUR_NOISE * torch.randn(count, DIGITS_PER_SCENE, 3, generator=g))
    palette = torch.cat([torch.tensor(BACKGROUND).expand(count, 1, 3), colours.clamp(0.0, 1.0)], dim=1)

    seg = torch.zeros(count, SIZE, SIZE, dtype=torch.int64)
    relief = torch.zeros(count, SIZE, SIZE)
    covered = torch.zeros(count, SIZE, SIZE, dtype=torch.int64)
    albedo = palette[:, 0, :, None, None].expand(count, 3, SIZE, SIZE)
    for k in range(DIGITS_PER_SCENE):
        ink = _place(strokes[picks[:, k]], corners[:, k])
        relief = torch.maximum(relief, heights[:, k, None, None] * ink)
        covered += (ink > 0.2).long()
        seg = torch.where(ink > 0.5, 1 + groups[:, k, None, None], seg)
        seg = torch.where((ink > 0.2) & (ink <= 0.5), -1, seg)
        paint = ((ink - 0.35) / 0.3).clamp(0.0, 1.0)[:, None]  # the digit's colour on its strokes
        albedo = albedo * (1 - paint) + palette[:, k + 1, :, None, None] * paint
    seg[covered > 1] = -1  # where two digits overlap, the label is ambiguous
    z = (plane - relief).unsqueeze(1)
    normals = normals_from_depth(z)

    light = torch.tensor(LIGHT) / torch.linalg.vector_norm(torch.tensor(LIGHT))
    shading = AMBIENT + (1 - AMBIENT) * (normals * light.view(1, 3, 1, 1)).sum(1, keepdim=True).clamp_min(0.0)
    falloff = (Z_REFERENCE / z) ** 2  # the lamp at the camera: inverse-square in depth
    image = albedo * shading * falloff
    image = image + NOISE * torch.randn(image.shape, generator=g)

    holes = torch.rand(count, generator=g) < 0.5
    hole_corners = torch.randint(SIZE - HOLE + 1, (count, 2, 1, 1), generator=g)
    rows, cols = torch.arange(SIZE).view(1, SIZE, 1), torch.arange(SIZE).view(1, 1, SIZE)
    inside = (
        holes[:, None, None]
        & (rows >= hole_corners[:, 0]) & (rows < hole_corners[:, 0] + HOLE)
        & (cols >= hole_corners[:, 1]) & (cols < hole_corners[:, 1] + HOLE)
    )  # fmt: skip
    valid = (~inside).unsqueeze(1).to(z.dtype)
    return image, {"seg": seg, "depth": z * valid, "normal": normals * valid}


@lru_cache(maxsize=4)
def make_digit_scenes(seed: int = 0) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The train and val splits of DigitScenes for ``seed`` (cached)."""
    strokes, labels = _digit_strokes()
    cut = int(TRAIN_DIGIT_SHARE * len(labels))
    g = torch.Generator().manual_seed(seed)
    return {
        "train": render_scenes(TRAIN_SCENES, strokes[:cut], labels[:cut], g),
        "val": render_scenes(VAL_SCENES, strokes[cut:], labels[cut:], g),
    }


class DigitScenes(MultiTaskDataset):
    """Three tasks of NYUv2's kinds on 32 x 32 digit scenes (see the module docstring)."""

    TASKS = (segmentation(CLASSES), depth(), normal())
    N_EPOCHS = 2  # a job: 2 epochs of 512 scenes (configs/dataset/DigitScenes.yaml), 128 steps of 8 scenes
    BATCH_SIZE = 8
    LR = 5e-3
    N_WORKERS = 0  # in memory
    HPARAM_FAMILY = "small"
    MODEL_WIDTH = "narrow"
    DELTA_M = None
    VERSION = DATA_VERSIONS["DigitScenes"]  # raise it there whenever the scenes change

    def __init__(
        self,
        root=None,
        augment: bool = False,
        seed: int = 0,
        train_scenes: int | None = None,
        val_scenes: int | None = None,
        scene_seed: int = 0,
    ):
        """``root``, ``augment`` and ``seed`` (the augmentation's) are the multi-task data sets'
        common arguments; DigitScenes needs no folder and has no augmentation. ``train_scenes``
        / ``val_scenes``: the first that many scenes of each split (``None``: all);
        ``scene_seed``: the seed the scenes are rendered from."""
        self.check_options(train_scenes=train_scenes, val_scenes=val_scenes)
        splits = make_digit_scenes(scene_seed)
        names = [t.name for t in self.TASKS]
        self.train, self.val = (
            TensorSplit(images[:count], {name: targets[name][:count] for name in names})
            for (images, targets), count in zip(splits.values(), (train_scenes, val_scenes), strict=True)
        )
        self.input_shape = (3, SIZE, SIZE)

    @classmethod
    def check_options(cls, train_scenes: int | None = None, val_scenes: int | None = None, scene_seed: int = 0) -> None:
        for name, count, total in (("train_scenes", train_scenes, TRAIN_SCENES), ("val_scenes", val_scenes, VAL_SCENES)):
            if count is not None and not (isinstance(count, int) and 1 <= count <= total):
                raise ValueError(f"{name} must be an integer in [1, {total}] (DigitScenes renders {total}), got {count!r}")


class DigitScenes2(DigitScenes):
    """Two tasks of Cityscapes' kinds (segmentation, depth) on the DigitScenes scenes."""

    TASKS = (segmentation(CLASSES), depth())
