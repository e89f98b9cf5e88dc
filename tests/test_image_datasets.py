"""The five DomainBed image data sets: layout discovery, environments, labels, transforms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sage_bench.data import DATASETS, PACS, VLCS, DomainNet, OfficeHome, TerraIncognita
from sage_bench.data.images import DatasetNotFoundError, UnreadableImageError
from sage_bench.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree, write_image

# DomainBed's datasets.py and its paper: folder, environment labels, totals, classes, checkpoint frequency
DOMAINBED = {
    "PACS": ("PACS", ["A", "C", "P", "S"], 9991, 7, 300),
    "VLCS": ("VLCS", ["C", "L", "S", "V"], 10729, 5, 300),
    "OfficeHome": ("office_home", ["A", "C", "P", "R"], 15588, 65, 300),
    "TerraIncognita": ("terra_incognita", ["L100", "L38", "L43", "L46"], 24788, 10, 300),
    "DomainNet": ("domain_net", ["clip", "info", "paint", "quick", "real", "sketch"], 586575, 345, 1000),
}


@pytest.mark.parametrize("name", list(DOMAINBED))
def test_domainbed_constants(name):
    folder, labels, total, num_classes, freq = DOMAINBED[name]
    cls = DATASETS[name]
    assert cls.FOLDER == folder and cls.ENVIRONMENTS == labels
    assert cls.ENV_FOLDERS == sorted(cls.ENV_FOLDERS)  # environment order = sorted folder names
    assert [f[0].upper() for f in cls.ENV_FOLDERS] == [lab[0].upper() for lab in labels]
    assert sum(cls.EXPECTED_IMAGES.values()) == total and cls.NUM_CLASSES == num_classes
    assert (cls.N_STEPS, cls.CHECKPOINT_FREQ) == (5001, freq)
    assert cls.HPARAM_FAMILY == "large" and cls.DEFAULT_BACKBONE == "clip_vit_b16"


def test_terra_incognita_records_both_published_sizes():
    assert [sum(v.values()) for v in TerraIncognita.ALTERNATIVE_IMAGES.values()] == [24330]


@pytest.fixture
def pacs_dir(tmp_path):
    make_tree(tmp_path / "PACS", PACS_ENVS, PACS_CLASSES)
    return tmp_path


def test_layout_discovery(pacs_dir):
    (pacs_dir / "PACS" / ".cache").mkdir()  # hidden folders are not environments
    ds = PACS(pacs_dir, test_envs=[0], hparams={"data_augmentation": False})
    assert len(ds) == 4 and ds.environment_names == ["A", "C", "P", "S"]
    assert ds.num_classes == 7 and ds.class_names == PACS_CLASSES and ds.input_shape == (3, 224, 224)
    for i, env in enumerate(PACS_ENVS):
        assert len(ds[i]) == 14
        # labels follow the sorted class folders, images the ImageFolder order
        paths = [p.decode() for p in ds[i].paths]
        expected = [str(pacs_dir / "PACS" / env / c / f"{k}.jpg") for c in PACS_CLASSES for k in range(2)]
        assert paths == expected
        assert list(ds[i].targets) == [PACS_CLASSES.index(p.split("/")[-2]) for p in paths]
    x, y = ds[2][5]
    assert x.shape == (3, 224, 224) and y == 2


def test_labels_agree_when_an_environment_lacks_a_class(tmp_path):
    make_tree(tmp_path / "PACS", PACS_ENVS, PACS_CLASSES, per_class=1)
    for f in (tmp_path / "PACS" / "sketch" / "dog").iterdir():
        f.unlink()
    (tmp_path / "PACS" / "sketch" / "dog").rmdir()
    with pytest.warns(UserWarning, match="sketch lacks class folder"):
        ds = PACS(tmp_path)
    assert ds.num_classes == 7
    assert sorted(set(ds[3].targets.tolist())) == list(range(1, 7))  # "elephant" is still label 1


def test_missing_dataset_names_path_and_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        VLCS(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "VLCS") in message
    assert f"sage-bench download VLCS --data-dir {tmp_path}" in message


def test_missing_environment_folder_is_named(tmp_path):
    make_tree(tmp_path / "office_home", ["Art", "Clipart", "Product"], ["Bed"], per_class=1)
    with pytest.raises(DatasetNotFoundError, match="missing environment folder.*Real World"):
        OfficeHome(tmp_path)


def _manual_eval(path, size, mean, std):
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy((array - np.array(mean)) / np.array(std)).permute(2, 0, 1).float()


@pytest.mark.parametrize("preprocess", [Preprocess(224, IMAGENET_MEAN, IMAGENET_STD), Preprocess(32, CLIP_MEAN, CLIP_STD)])
def test_eval_transform_is_resize_and_backbone_normalisation(pacs_dir, preprocess):
    ds = PACS(pacs_dir, test_envs=[1], hparams={"data_augmentation": True}, preprocess=preprocess)
    x, _ = ds[1][3]  # test environment: never augmented
    expected = _manual_eval(ds[1].paths[3].decode(), preprocess.image_size, preprocess.mean, preprocess.std)
    assert x.shape == (3, preprocess.image_size, preprocess.image_size)
    assert torch.allclose(x, expected, atol=0.02)  # PIL vs torchvision antialiasing: tiny differences


def test_augmentation_only_on_training_environments(pacs_dir):
    size = 32
    pre = Preprocess(size, CLIP_MEAN, CLIP_STD)
    ds = PACS(pacs_dir, test_envs=[0], hparams={"data_augmentation": True}, preprocess=pre)
    torch.manual_seed(0)
    train_draws = [ds[1][0][0] for _ in range(4)]
    assert any(not torch.equal(train_draws[0], d) for d in train_draws[1:])  # random crops / jitter
    assert torch.equal(ds[0][0][0], ds[0][0][0])  # the test environment is deterministic
    plain = PACS(pacs_dir, test_envs=[0], hparams={"data_augmentation": False}, preprocess=pre)
    assert torch.equal(plain[1][0][0], plain[1][0][0])
    expected = _manual_eval(plain[1].paths[0].decode(), size, CLIP_MEAN, CLIP_STD)
    assert torch.allclose(plain[1][0][0], expected, atol=0.02)


def test_unreadable_image_error_or_skip(pacs_dir):
    bad = pacs_dir / "PACS" / "photo" / "dog" / "0.jpg"
    bad.write_bytes(b"not an image")
    ds = PACS(pacs_dir, hparams={"data_augmentation": False}, preprocess=Preprocess(16))
    with pytest.raises(UnreadableImageError) as info:
        ds[2][0]
    assert str(bad) in str(info.value) and "dataset.on_unreadable=skip" in str(info.value)
    skipping = PACS(pacs_dir, hparams={"data_augmentation": False}, preprocess=Preprocess(16), on_unreadable="skip")
    with pytest.warns(UserWarning, match="skipping unreadable image .*0.jpg"):
        x, y = skipping[2][0]
    nxt, _ = skipping[2][1]  # the next image of the same environment stands in
    assert torch.equal(x, nxt) and y == 0 and len(skipping[2]) == 14
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per file
        skipping[2][0]


def test_truncated_image_loads_as_domainbed_unless_disabled(pacs_dir):
    path = pacs_dir / "PACS" / "cartoon" / "dog" / "0.jpg"
    write_image(path, seed=1, size=(64, 64))
    path.write_bytes(path.read_bytes()[:-200])
    ds = PACS(pacs_dir, hparams={"data_augmentation": False}, preprocess=Preprocess(16))
    assert ds[1][0][0].shape == (3, 16, 16)
    strict = PACS(pacs_dir, hparams={"data_augmentation": False}, preprocess=Preprocess(16), load_truncated=False)
    with pytest.raises(UnreadableImageError, match="truncated"):
        strict[1][0]


def test_bad_on_unreadable_value(pacs_dir):
    with pytest.raises(Exception, match="on_unreadable.*error, skip"):
        PACS(pacs_dir, on_unreadable="ignore")


def test_domain_net_and_terra_folders(tmp_path):
    counts = make_tree(tmp_path / "domain_net", DomainNet.ENV_FOLDERS, ["aircraft_carrier", "zebra"], per_class=1)
    ds = DomainNet(tmp_path, hparams={"data_augmentation": False}, preprocess=Preprocess(16))
    assert [len(e) for e in ds] == list(counts.values())
    assert ds.class_names == ["aircraft carrier", "zebra"]  # prompt-ready names
    make_tree(tmp_path / "terra_incognita", TerraIncognita.ENV_FOLDERS, ["bird", "empty"], per_class=1)
    assert TerraIncognita(tmp_path).environment_names == ["L100", "L38", "L43", "L46"]
