"""``sage-bench data cache --backbone NAME`` builds the cache that jobs with ``backbone=NAME``
look up: the input size comes from the backbone's configuration, composed as a job composes it."""

from __future__ import annotations

from sage_bench.cli import main
from sage_bench.config import load_job
from sage_bench.data import eval_cache as ec
from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree

CLIP_TINY_SIZE = 32  # configs/backbone/clip_tiny.yaml: vision_cfg.image_size


def test_the_cache_of_a_backbone_is_the_one_its_jobs_use(tmp_path):
    make_tree(tmp_path / "PACS", PACS_ENVS, PACS_CLASSES, per_class=1)
    assert main(["data", "cache", "PACS", "--data-dir", str(tmp_path), "--backbone", "clip_tiny", "--workers", "1"]) == 0
    manifest = ec.cache_path(tmp_path, "PACS", CLIP_TINY_SIZE) / ec.MANIFEST
    assert manifest.exists()
    assert not ec.cache_path(tmp_path, "PACS", 224).exists()  # not the open_clip default of ViT-B-16
    built = manifest.stat().st_mtime_ns

    args = ["dataset=PACS", "backbone=clip_tiny", "test_envs=[3]", f"data_dir={tmp_path}", f"output_dir={tmp_path / 'out'}",
            "steps=1", "checkpoint_freq=1", "num_workers=0", "progress=false", "hparams.batch_size=2",
            "dataset.eval_augment=false", "dataset.eval_cache=require"]  # fmt: skip
    assert main(["train", *args]) == 0  # require: the job stops when it finds no usable cache
    log = (load_job(args).job_dir / "out.txt").read_text()
    assert f"evaluation cache: {manifest.parent}" in log
    assert manifest.stat().st_mtime_ns == built  # used, not rebuilt


def test_the_default_backbone_of_the_data_set_sets_the_size_and_a_bad_one_is_named(tmp_path, capsys):
    make_tree(tmp_path / "PACS", PACS_ENVS, PACS_CLASSES, per_class=1)
    assert main(["data", "cache", "PACS", "--data-dir", str(tmp_path), "--backbone", "digits_cnn", "--workers", "1"]) == 2
    assert "backbone 'digits_cnn' takes no images" in capsys.readouterr().err
    assert main(["data", "cache", "PACS", "--data-dir", str(tmp_path), "--backbone", "nonesuch", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "nonesuch" in err and "clip_tiny" in err  # the valid choices
