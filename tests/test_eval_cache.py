"""The evaluation cache: the same pixels as decoding, the same accuracies as a job without it,
and never used when stale, partial or damaged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sage_bench.cli import main
from sage_bench.config import load_job
from sage_bench.data import PACS
from sage_bench.data import eval_cache as ec
from sage_bench.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess, eval_transform
from sage_bench.records import MEASUREMENT_KEYS, read_records
from sage_bench.units import format_bytes
from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree, write_image

SIZE = 32  # clip_tiny's input size


def _tree(root, per_class=2):
    make_tree(root / "PACS", PACS_ENVS, PACS_CLASSES, per_class=per_class)
    # photo-like sizes and modes that decode differently: wide, tall, greyscale, PNG
    write_image(root / "PACS" / "photo" / "dog" / "wide.jpg", 100, size=(37, 90))
    write_image(root / "PACS" / "sketch" / "dog" / "tall.png", 101, size=(81, 23))
    Image.fromarray(np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)).save(root / "PACS" / "cartoon" / "dog" / "grey.jpg")
    return root


def _cache(data_dir, *extra):
    assert main(["data", "cache", "PACS", "--data-dir", str(data_dir), "--image-size", str(SIZE), "--workers", "1", *extra]) == 0


def _pacs(data_dir, **options):
    return PACS(str(data_dir), test_envs=(), hparams={"data_augmentation": False}, preprocess=Preprocess(SIZE), **options)


def test_cached_pixels_normalised_on_the_device_equal_the_decoded_inputs(tmp_path):
    _tree(tmp_path)
    _cache(tmp_path)
    dataset = _pacs(tmp_path)
    cache, why = ec.open_cache(dataset, SIZE)
    assert cache is not None, why
    preprocess = Preprocess(SIZE, CLIP_MEAN, CLIP_STD)
    transform = eval_transform(preprocess)
    for env in range(4):
        environment = dataset.datasets[env]
        indices = list(range(len(environment)))[::-1]  # any order, as a split's
        loader = ec.cached_loader(ec.CachedSplit(cache.pixels(env), environment.targets, indices), preprocess,
                                  batch_size=5, device=torch.device("cpu"))  # fmt: skip
        x, y = map(torch.cat, zip(*loader, strict=False))
        environment.transform = transform
        expected = torch.stack([environment[i][0] for i in indices])
        assert x.dtype == expected.dtype and torch.equal(x, expected)  # bit for bit
        assert y.tolist() == [int(environment.targets[i]) for i in indices]


def _train(tmp_path, out, *extra):
    args = ["dataset=PACS", "backbone=clip_tiny", "test_envs=[3]", f"data_dir={tmp_path}", f"output_dir={tmp_path / out}",
            "steps=5", "checkpoint_freq=2", "num_workers=0", "progress=false", "hparams.batch_size=4",
            "hparams.lr=1e-3", "dataset.eval_augment=false", *extra]  # fmt: skip
    code = main(["train", *args])
    spec = load_job(args)
    return code, spec, (read_records(spec.job_dir) if code == 0 else None)


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in (*MEASUREMENT_KEYS, "args")} for r in records]


@pytest.mark.slow
def test_a_cached_job_records_what_an_uncached_one_does(tmp_path):
    _tree(tmp_path, per_class=3)
    _cache(tmp_path)
    code, cached_spec, cached = _train(tmp_path, "cached", "dataset.eval_cache=require")
    assert code == 0
    assert "evaluation: cache: env0_in" in (cached_spec.job_dir / "out.txt").read_text()
    code, plain_spec, plain = _train(tmp_path, "plain", "dataset.eval_cache=off")
    assert code == 0 and plain_spec.job_id == cached_spec.job_id
    assert "files: env0_in" in (plain_spec.job_dir / "out.txt").read_text()
    assert _comparable(cached) == _comparable(plain)  # accuracies and the training path (loss)
    assert len({r["env3_in_acc"] for r in plain} | {r["loss"] for r in plain}) > 2
    assert all(r["eval_time"] > 0 for r in cached)


def test_stale_partial_and_damaged_caches_are_never_used(tmp_path):
    _tree(tmp_path)
    _cache(tmp_path)
    path = ec.cache_path(tmp_path, "PACS", SIZE)
    assert ec.open_cache(_pacs(tmp_path), SIZE)[0] is not None

    # another transform: truncated images unreadable instead of grey
    assert "load_truncated is True" in ec.open_cache(_pacs(tmp_path, load_truncated=False), SIZE)[1]
    # a changed folder
    extra = tmp_path / "PACS" / "photo" / "horse" / "new.jpg"
    write_image(extra, 7)
    assert "image count of environment photo changed" in ec.open_cache(_pacs(tmp_path), SIZE)[1]
    (tmp_path / "PACS" / "photo" / "horse" / "0.jpg").unlink()  # as many images, another list
    assert "file list of environment photo changed" in ec.open_cache(_pacs(tmp_path), SIZE)[1]
    _cache(tmp_path)  # rebuilt in place
    assert ec.open_cache(_pacs(tmp_path), SIZE)[0] is not None

    # damaged: one changed byte, then a truncated file
    file = path / "env2.u8"
    original = file.read_bytes()
    flipped = bytearray(original)
    flipped[len(original) // 2] ^= 0xFF
    file.write_bytes(bytes(flipped))
    assert "env2.u8 does not match its digest" in ec.open_cache(_pacs(tmp_path), SIZE)[1]
    file.write_bytes(original[:-100])
    assert f"env2.u8 has {len(original) - 100} bytes, not {len(original)}" in ec.open_cache(_pacs(tmp_path), SIZE)[1]
    # partial: a build killed before its manifest was written
    (path / "manifest.json").unlink()
    assert "an incomplete one" in ec.open_cache(_pacs(tmp_path), SIZE)[1]
    shutil.rmtree(path)
    assert ec.open_cache(_pacs(tmp_path), SIZE)[1] == f"none at {path}"


def test_a_damaged_cache_falls_back_or_stops_the_job(tmp_path, capsys):
    _tree(tmp_path)
    _cache(tmp_path)
    manifest = ec.cache_path(tmp_path, "PACS", SIZE) / "manifest.json"
    manifest.write_text(manifest.read_text()[:-20])
    code, spec, _ = _train(tmp_path, "require", "dataset.eval_cache=require", "steps=1")
    assert code == 2
    err = capsys.readouterr().err
    assert "dataset.eval_cache=require" in err and "unreadable manifest" in err
    assert f"sage-bench data cache PACS --data-dir {tmp_path} --image-size {SIZE}" in err
    code, spec, _ = _train(tmp_path, "auto", "steps=1")
    assert code == 0
    assert "evaluation cache: not used (the cache at" in (spec.job_dir / "out.txt").read_text()


def test_unreadable_images_are_replaced_as_without_the_cache(tmp_path, capsys):
    _tree(tmp_path)
    bad = tmp_path / "PACS" / "art_painting" / "dog" / "0.jpg"
    bad.write_bytes(b"not an image")
    _cache(tmp_path)
    cache, _ = ec.open_cache(_pacs(tmp_path), SIZE)
    assert list(cache.unreadable(0)) == [0]
    # skip: the next readable image of the environment stands in, as ImageFolderEnvironment does
    dataset = _pacs(tmp_path, on_unreadable="skip")
    assert ec.readable_indices([0, 3], cache.unreadable(0), len(dataset.datasets[0]), "skip", None) == [1, 3]
    with pytest.warns(UserWarning, match="skipping unreadable"):
        expected = dataset.datasets[0][0][0]
    loader = ec.cached_loader(ec.CachedSplit(cache.pixels(0), dataset.datasets[0].targets, [1]), Preprocess(SIZE),
                              batch_size=4, device=torch.device("cpu"))  # fmt: skip
    assert torch.equal(next(iter(loader))[0][0], expected)
    # error: the job stops naming the file, as it does without the cache
    code, _, _ = _train(tmp_path, "error", "steps=1", "dataset.eval_cache=require", "test_envs=[0]")
    assert code == 2 and f"cannot read image {bad}" in capsys.readouterr().err


def test_the_disk_need_is_stated_and_a_small_disk_refused(tmp_path, capsys, monkeypatch):
    _tree(tmp_path)
    need = sum(len(env) for env in _pacs(tmp_path).datasets) * 3 * SIZE * SIZE
    monkeypatch.setattr(ec, "free_bytes", lambda path: need // 2)
    code = main(["data", "cache", "PACS", "--data-dir", str(tmp_path), "--image-size", str(SIZE)])
    captured = capsys.readouterr()
    assert code == 2
    # in units that show the numbers (a small cache is not "0.00 GB")
    assert f"need {format_bytes(need)}" in captured.out and f"({format_bytes(need // 2)} free there)" in captured.out
    assert f"needs {format_bytes(need)}" in captured.err and f"has {format_bytes(need // 2)} free" in captured.err
    assert "0.00 GB" not in captured.out + captured.err and "SAGE_BENCH_CACHE_DIR" in captured.err
    assert not ec.cache_path(tmp_path, "PACS", SIZE).exists()


def test_cache_dir_from_the_environment_and_an_up_to_date_cache_is_kept(tmp_path, capsys, monkeypatch):
    _tree(tmp_path / "data")
    monkeypatch.setenv("SAGE_BENCH_CACHE_DIR", str(tmp_path / "elsewhere"))
    _cache(tmp_path / "data")
    manifest = tmp_path / "elsewhere" / "PACS" / f"{SIZE}px" / "manifest.json"
    written = json.loads(manifest.read_text())["created"], manifest.stat().st_mtime_ns
    _cache(tmp_path / "data", "--verify")
    out = capsys.readouterr().out
    assert "is up to date" in out and "every byte and every image's checksum checked" in out
    assert (json.loads(manifest.read_text())["created"], manifest.stat().st_mtime_ns) == written
    assert not (tmp_path / "data" / ".sage-bench-cache").exists()


def test_eval_augment_false_evaluates_training_environments_without_augmentation(tmp_path):
    _tree(tmp_path)
    torch.manual_seed(0)
    domainbed = PACS(str(tmp_path), test_envs=[3], hparams={}, preprocess=Preprocess(SIZE))
    forks = PACS(str(tmp_path), test_envs=[3], hparams={}, preprocess=Preprocess(SIZE), eval_augment=False)
    assert domainbed.eval_augmented == [True, True, True, False] and forks.eval_augmented == [False] * 4
    # DomainBed: a training environment is evaluated as it is trained on, with random augmentation
    assert domainbed.evaluation_environment(0) is domainbed.datasets[0]
    assert not torch.equal(domainbed.evaluation_environment(0)[0][0], domainbed.evaluation_environment(0)[0][0])
    # the forks: the deterministic evaluation transform; training still augments
    evaluated = forks.evaluation_environment(0)
    assert torch.equal(evaluated[0][0], evaluated[0][0])
    assert torch.equal(evaluated[0][0], forks.evaluation_environment(3).transform(Image.open(evaluated.paths[0]).convert("RGB")))
    assert not torch.equal(forks.datasets[0][0][0], forks.datasets[0][0][0])
    assert evaluated.paths is forks.datasets[0].paths  # one file list in memory


def test_cache_command_without_the_data_says_how_to_get_it(tmp_path, capsys):
    assert main(["data", "cache", "VLCS", "--data-dir", str(tmp_path)]) == 2
    assert f"sage-bench download VLCS --data-dir {tmp_path}" in capsys.readouterr().err
    assert main(["data", "cache", "RotatedDigits", "--data-dir", str(tmp_path)]) == 2
    assert "valid choices: PACS, VLCS" in capsys.readouterr().err
