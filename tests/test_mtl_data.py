"""NYUv2 / Cityscapes readers, augmentation, data check and download on tiny generated trees."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sage_bench.cli import main
from sage_bench.data.check import check_dataset, format_report
from sage_bench.data.download import DownloadError, Installer, expand_names
from sage_bench.data.images import DatasetNotFoundError
from sage_bench.data.multitask import ScaleCropFlip
from sage_bench.data.nyuv2 import Cityscapes, NYUv2
from tests.reference import mtl as ref
from tests.test_download import ArchiveServer

SMALL = (8, 12)


def make_npy_tree(root: Path, cls, counts: dict[str, int], resolution=SMALL, seed: int = 0) -> None:
    """``root/{train,val}/<modality>/<i>.npy`` with random contents in the lineage's formats."""
    rng = np.random.default_rng(seed)
    h, w = resolution
    classes = cls.TASKS[0].channels
    for split, n in counts.items():
        for i in range(n):
            arrays = {"image": rng.random((h, w, 3), dtype=np.float32)}
            label = rng.integers(-1, classes, (h, w)).astype(np.float32)
            arrays[cls.FOLDERS["seg"]] = label
            depth = (rng.random((h, w, 1), dtype=np.float32) * 4 + 0.5) * (rng.random((h, w, 1)) > 0.2)
            arrays["depth"] = depth.astype(np.float32)
            if "normal" in cls.FOLDERS:
                normal = rng.standard_normal((h, w, 3)).astype(np.float32)
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal *= rng.random((h, w, 1)) > 0.2
                arrays["normal"] = normal.astype(np.float32)
            for folder, array in arrays.items():
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / split / folder / f"{i}.npy", array)


@pytest.fixture
def nyu(tmp_path, monkeypatch):
    monkeypatch.setattr(NYUv2, "RESOLUTION", SMALL)
    monkeypatch.setattr(NYUv2, "EXPECTED_IMAGES", {"train": 4, "val": 3})
    make_npy_tree(tmp_path / "data" / "nyuv2", NYUv2, {"train": 4, "val": 3})
    return tmp_path / "data"


class _LineageDraws:
    """The lineage's random draws (Python's global ``random`` for the scale and crop, torch's
    global generator for the flip) behind the ``random.Random`` interface ``ScaleCropFlip`` uses."""

    randint = staticmethod(random.randint)

    @staticmethod
    def random() -> float:
        return torch.rand(1).item()


@pytest.mark.parametrize("seed", range(6))
def test_nyuv2_items_match_the_lineage(nyu, seed):
    ds = NYUv2(nyu)
    assert len(ds.train) == 4 and len(ds.val) == 3 and ds.input_shape == (3, *SMALL)
    split = str(nyu / "nyuv2" / "train")
    augment = ScaleCropFlip(ds.tasks)
    for index in range(4):
        random.seed(seed)
        torch.manual_seed(seed)
        image, label, depth, normal = ref.nyuv2_getitem(split, index, augmentation=True)
        random.seed(seed)
        torch.manual_seed(seed)
        ours_image, ours = augment(*ds.train.base[index], _LineageDraws())
        assert torch.equal(ours_image, image)
        assert ours["seg"].dtype == torch.int64 and torch.equal(ours["seg"], label.long())
        assert torch.equal(ours["depth"], depth) and torch.equal(ours["normal"], normal)
    # evaluation items are the files as they are
    image, label, depth, normal = ref.nyuv2_getitem(str(nyu / "nyuv2" / "val"), 2, augmentation=False)
    ours_image, ours = ds.val[2]
    assert torch.equal(ours_image, image) and torch.equal(ours["seg"], label.long())
    assert torch.equal(ours["depth"], depth) and torch.equal(ours["normal"], normal)


def test_augmentation_depends_only_on_seed_epoch_and_index(nyu):
    a, b = NYUv2(nyu, seed=3), NYUv2(nyu, seed=3)
    a.train.set_epoch(5)
    b.train.set_epoch(5)
    for i in (3, 0, 2):  # any order
        assert torch.equal(a.train[i][0], b.train[i][0])
    draws = set()
    for epoch in range(12):
        a.train.set_epoch(epoch)
        draws.add(a.train[1][0].sum().item())
    assert len(draws) > 3  # scales, crops and flips vary over epochs


def test_flip_negates_normal_x_and_scale_divides_depth():
    task_list = list(NYUv2.TASKS)
    augment = ScaleCropFlip(task_list)
    image = torch.rand(3, 4, 6)
    targets = {
        "seg": torch.randint(0, 13, (4, 6)),
        "depth": torch.full((1, 4, 6), 3.0),
        "normal": torch.tensor([0.6, 0.0, 0.8]).view(3, 1, 1).expand(3, 4, 6).clone(),
    }

    class Fixed:  # scale 1.5, crop at (0, 0), flip
        def randint(self, low, high):
            return 2 if high == 2 else 0

        def random(self):
            return 0.0

    _, out = augment(image, targets, Fixed())
    assert torch.allclose(out["depth"], torch.full((1, 4, 6), 2.0))
    assert torch.allclose(out["normal"][0], torch.full((4, 6), -0.6))
    assert torch.allclose(out["normal"][2], torch.full((4, 6), 0.8))


def test_cityscapes_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(Cityscapes, "RESOLUTION", SMALL)
    make_npy_tree(tmp_path / "cityscapes", Cityscapes, {"train": 2, "val": 2})
    ds = Cityscapes(tmp_path, augment=False)
    image, targets = ds.train[1]
    assert image.shape == (3, *SMALL) and set(targets) == {"seg", "depth"}
    label = np.load(tmp_path / "cityscapes" / "train" / "label_7" / "1.npy")
    assert torch.equal(targets["seg"], torch.from_numpy(label).long())
    assert [t.name for t in ds.tasks] == ["seg", "depth"] and ds.tasks[0].channels == 7


def test_missing_data_says_where_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)no folder .*nyuv2.*sage-bench download NYUv2 --data-dir"):
        NYUv2(tmp_path)
    (tmp_path / "nyuv2" / "train" / "image").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)incomplete: missing folder\(s\) .*train/label.*--force"):
        NYUv2(tmp_path)


def test_data_check(nyu, capsys):
    report = check_dataset("NYUv2", nyu)
    assert report.usable and not report.warnings and report.decoded
    assert [e.images for e in report.environments] == [4, 3]
    text = format_report(report)
    assert "split" in text and "samples" in text and "usable" in text
    # a missing sample, a misshapen file, and counts off the published ones
    (nyu / "nyuv2" / "val" / "depth" / "1.npy").unlink()
    np.save(nyu / "nyuv2" / "train" / "normal" / "0.npy", np.zeros((3, 3, 3), dtype=np.float32))
    report = check_dataset("NYUv2", nyu)
    assert not report.usable
    problems = "\n".join(report.problems)
    assert "val/depth does not hold 0.npy .. 2.npy like image/: missing 1.npy" in problems
    assert any("shape (3, 3, 3), expected (8, 12, 3)" in d for _, d in report.unreadable)
    assert main(["data", "check", "NYUv2", "--data-dir", str(nyu)]) == 1
    assert "NOT USABLE" in capsys.readouterr().out
    report = check_dataset("Cityscapes", nyu)
    assert not report.usable and "sage-bench download Cityscapes" in report.problems[0]


def test_group_names():
    assert expand_names(["mtl"]) == ["NYUv2", "Cityscapes"]
    assert expand_names(["PACS", "domainbed"])[:2] == ["PACS", "VLCS"] and len(expand_names(["all"])) == 7
    with pytest.raises(DownloadError, match="valid choices: .*NYUv2, Cityscapes, or all, domainbed, mtl"):
        expand_names(["NYU"])


def _dropbox_zip(tree: Path, archive: Path, nested: bool) -> None:
    """A Dropbox folder download: the folder's files at the zip's top level. ``nested``: the
    folder holds one zip of ``nyuv2/{train,val}`` instead."""
    if nested:
        inner = archive.with_name("inner.zip")
        _dropbox_zip(tree, inner, nested=False)
        with zipfile.ZipFile(archive, "w") as z:
            z.write(inner, "nyuv2.zip")
        inner.unlink()
        return
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(tree.rglob("*")):
            z.write(f, f.relative_to(tree))


@pytest.mark.parametrize("nested", [False, True])
def test_download_nyuv2_from_a_mirror_and_from_archives(tmp_path, monkeypatch, nested):
    monkeypatch.setattr(NYUv2, "RESOLUTION", SMALL)
    monkeypatch.setattr(NYUv2, "EXPECTED_IMAGES", {"train": 3, "val": 2})
    make_npy_tree(tmp_path / "src", NYUv2, {"train": 3, "val": 2})
    (tmp_path / "served").mkdir()
    _dropbox_zip(tmp_path / "src", tmp_path / "served" / "nyuv2.zip", nested)
    server = ArchiveServer(tmp_path / "served")
    try:
        data = tmp_path / "data"
        code = main(["download", "mtl", "--data-dir", str(data), "--mirror", server.url, "--no-progress"])
        # Cityscapes is not served: NYUv2 is installed first, then the error names the fix
        assert code == 2
        assert [p for p, _ in server.requests] == ["/nyuv2.zip", "/cityscapes.zip"]
    finally:
        server.close()
    ds = NYUv2(data)
    assert len(ds.train) == 3 and len(ds.val) == 2
    assert check_dataset("NYUv2", data).usable
    assert (data / "nyuv2" / ".sage-bench.json").is_file()
    # offline: the same archive from a folder, into another data dir
    other = Installer(tmp_path / "data2", archives=tmp_path / "served", log=lambda s: None)
    assert other.install("NYUv2") == tmp_path / "data2" / "nyuv2"
    # the wrong archive is refused with what it lacked
    (tmp_path / "bad").mkdir()
    with zipfile.ZipFile(tmp_path / "bad" / "nyuv2.zip", "w") as z:
        z.writestr("train/image/0.npy", b"")
    with pytest.raises(DownloadError, match=r"did not contain the folders \{train,val\}/image"):
        Installer(tmp_path / "data3", archives=tmp_path / "bad", log=lambda s: None).install("NYUv2")
