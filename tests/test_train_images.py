"""A short job on a fabricated PACS-shaped tree with a small random-init CLIP; the paper's
experiment preset; the CUDA speed settings."""

from __future__ import annotations

import pytest
import torch

from sage_bench.cli import main
from sage_bench.config import ConfigError, load_job
from sage_bench.records import read_records
from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree


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
    "dataset, steps, freq", [("PACS", 5001, 200), ("VLCS", 5001, 200), ("OfficeHome", 5001, 200),
                             ("TerraIncognita", 5001, 200), ("DomainNet", 15001, 1000)]
)  # fmt: skip
def test_paper_experiment(dataset, steps, freq):
    spec = load_job(["experiment=paper_domainbed", f"dataset={dataset}", "algorithm=ERM"])
    assert spec.backbone == "clip_vit_b16"
    assert spec.backbone_options["model"] == "ViT-B-16" and spec.backbone_options["weights"] == "openai"
    assert spec.backbone_options["head"] == "zero_shot" and spec.optimizer == "adam"
    assert spec.hparams["lr"] == 1e-6 and spec.hparams["batch_size"] == 12  # 12 per training domain
    assert (spec.settings.steps, spec.settings.checkpoint_freq) == (steps, freq)
    assert spec.precision["train"] == spec.precision["eval"] == "fp32" and spec.tf32 is False
    computed = spec.resolved_precision()
    assert computed.train is None and computed.eval is None and not computed.tf32  # float32, even for ERM
    assert spec.hparams["data_augmentation"] is True
    # the other reading of "a batch of 12": 12 in all over the source domains
    total = load_job(["experiment=paper_domainbed_total12", f"dataset={dataset}", "algorithm=ERM"])
    n_sources = (6 if dataset == "DomainNet" else 4) - 1
    assert total.hparams["batch_size"] == (2 if dataset == "DomainNet" else 4)
    assert total.hparams["batch_size"] * n_sources <= 12 and (total.settings.steps, total.settings.checkpoint_freq) == (steps, freq)
    # the user can still override
    assert load_job(["experiment=paper_domainbed", f"dataset={dataset}", "hparams.batch_size=3"]).hparams["batch_size"] == 3
    assert load_job(["experiment=paper_domainbed", f"dataset={dataset}", "steps=7"]).settings.steps == 7


def test_paper_experiment_outside_its_data_sets():
    with pytest.raises(ConfigError, match="experiment.steps.RotatedDigits"):
        load_job(["experiment=paper_domainbed", "dataset=RotatedDigits"])


def test_accelerate_applies_the_resolved_precision():
    from sage_bench.algorithms import build_algorithm
    from sage_bench.precision import resolve_precision
    from sage_bench.run.accelerate import accelerate

    net = torch.nn.Linear(2, 2)
    algorithm = build_algorithm("SAGE", net, torch.optim.SGD(net.parameters(), lr=0.1))
    accelerate(algorithm, torch.device("cpu"), resolve_precision({}, "auto", "cpu", perturbs_weights=True))
    assert algorithm.autocast_dtype is None and algorithm.eval_autocast_dtype is None  # CPU: float32
    assert algorithm.polar_dtype is None
    accelerate(algorithm, torch.device("cpu"), resolve_precision({"train": "bf16", "polar": "bf16"}, "auto", "cpu", True))
    assert algorithm.autocast_dtype == torch.bfloat16 and algorithm.polar_dtype == torch.bfloat16  # explicit: on the CPU too
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        erm = build_algorithm("ERM", net, torch.optim.SGD(net.parameters(), lr=0.1))
        accelerate(erm, torch.device("cuda"), resolve_precision({}, "auto", "cuda", perturbs_weights=False))
        assert erm.autocast_dtype == erm.eval_autocast_dtype == torch.bfloat16
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        accelerate(algorithm, torch.device("cuda"), resolve_precision({}, "auto", "cuda", perturbs_weights=True))
        assert algorithm.autocast_dtype is None and algorithm.eval_autocast_dtype == torch.bfloat16
        assert algorithm.polar_dtype == torch.bfloat16 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_weights_location_is_not_part_of_the_job_identity():
    base = ["experiment=paper_domainbed", "dataset=PACS"]
    a = load_job([*base, "backbone.pretrained=/a/open_clip_model.safetensors"])
    b = load_job([*base, "backbone.pretrained=/b/open_clip_model.safetensors"])
    assert a.job_id == b.job_id == load_job(base).job_id
    assert load_job([*base, "backbone.head=linear"]).job_id != a.job_id
