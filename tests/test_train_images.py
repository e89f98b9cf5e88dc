"""A short job on a fabricated PACS-shaped tree with a small random-init CLIP; the paper's
experiment preset; the CUDA speed settings."""

from __future__ import annotations

import pytest
import torch

from sage_bench.cli import main
from sage_bench.config import ConfigError, load_job
from sage_bench.records import read_records
from tests.imagetree import PACS_CLASSES, PACS_ENVS, make_tree


def test_train_tiny_clip_on_pacs_shaped_tree(tmp_path, capsys):
    make_tree(tmp_path / "data" / "PACS", PACS_ENVS, PACS_CLASSES, per_class=2)
    args = ["dataset=PACS", "backbone=clip_tiny", "test_envs=[3]", f"data_dir={tmp_path / 'data'}",
            f"output_dir={tmp_path / 'out'}", "steps=4", "checkpoint_freq=2", "num_workers=0",
            "progress=false", "hparams.batch_size=4", "hparams.lr=1e-3"]  # fmt: skip
    assert main(["train", *args]) == 0
    job_dir = load_job(args).job_dir
    records = read_records(job_dir)
    assert [r["step"] for r in records] == [0, 2, 3]
    for r in records:
        assert {f"env{i}_{s}_acc" for i in range(4) for s in ("in", "out")} <= set(r)
        assert r["args"]["backbone"] == "clip_tiny" and r["args"]["dataset"] == "PACS"
        assert r["hparams"]["data_augmentation"] is True
    assert (job_dir / "done").exists()


def test_train_without_the_data_says_how_to_get_it(tmp_path, capsys):
    code = main(["train", "dataset=OfficeHome", "backbone=clip_tiny", f"data_dir={tmp_path}",
                 f"output_dir={tmp_path / 'out'}", "progress=false"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "office_home") in err
    assert f"sage-bench download OfficeHome --data-dir {tmp_path}" in err


@pytest.mark.parametrize(
    "dataset, batch_size", [("PACS", 4), ("VLCS", 4), ("OfficeHome", 4), ("TerraIncognita", 4), ("DomainNet", 2)]
)
def test_paper_experiment(dataset, batch_size):
    spec = load_job(["experiment=paper_domainbed", f"dataset={dataset}", "algorithm=ERM"])
    assert spec.backbone == "clip_vit_b16"
    assert spec.backbone_options["model"] == "ViT-B-16" and spec.backbone_options["weights"] == "openai"
    assert spec.backbone_options["head"] == "zero_shot" and spec.optimizer == "adam"
    assert spec.hparams["lr"] == 1e-6 and spec.hparams["batch_size"] == batch_size
    n_sources = (6 if dataset == "DomainNet" else 4) - 1
    assert batch_size * n_sources <= 12  # the paper's 12 images a step, over the source domains
    assert spec.steps == 5001 and spec.hparams["data_augmentation"] is True
    # the user can still override
    assert load_job(["experiment=paper_domainbed", f"dataset={dataset}", "hparams.batch_size=3"]).hparams["batch_size"] == 3


def test_paper_experiment_outside_its_data_sets():
    with pytest.raises(ConfigError, match="batch_size_per_domain.RotatedDigits"):
        load_job(["experiment=paper_domainbed", "dataset=RotatedDigits"])


def test_speed_settings():
    from sage_bench.algorithms import build_algorithm
    from sage_bench.run.accelerate import accelerate

    assert load_job([]).autocast == "bf16" and load_job([]).tf32 and not load_job([]).compile
    with pytest.raises(ConfigError, match="'autocast'.*bf16, none"):
        load_job(["autocast=fp8"])
    net = torch.nn.Linear(2, 2)
    algorithm = build_algorithm("ERM", net, torch.optim.SGD(net.parameters(), lr=0.1))
    accelerate(algorithm, torch.device("cpu"))
    assert algorithm.autocast_dtype is None  # CPU runs stay in full precision
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        accelerate(algorithm, torch.device("cuda"), autocast="bf16", tf32=True)
        assert algorithm.autocast_dtype == torch.bfloat16
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        accelerate(algorithm, torch.device("cuda"), autocast="none", tf32=False)
        assert algorithm.autocast_dtype is None and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_weights_location_is_not_part_of_the_job_identity():
    base = ["experiment=paper_domainbed", "dataset=PACS"]
    a = load_job([*base, "backbone.pretrained=/a/open_clip_model.safetensors"])
    b = load_job([*base, "backbone.pretrained=/b/open_clip_model.safetensors"])
    assert a.job_id == b.job_id == load_job(base).job_id
    assert load_job([*base, "backbone.head=linear"]).job_id != a.job_id
