"""Backbones and heads: CLIP's image tower and zero-shot head, ResNet-50, weights that are missing."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sage_bench.config import ConfigError, load_job
from sage_bench.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from sage_bench.models import WeightsNotFoundError, backbone_preprocess, build_network
from sage_bench.models.clip import CLIPImageEncoder, ZeroShotHead
from sage_bench.records import read_records

TINY = OmegaConf.to_container(OmegaConf.load("sage_bench/configs/backbone/clip_tiny.yaml"))["model_overrides"]
CLASSES = ["dog", "elephant", "house"]


def _tiny_network(head="zero_shot", prompts=("a photo of a {}.",), seed=0):
    torch.manual_seed(seed)
    return build_network(
        "clip_tiny", (3, 32, 32), len(CLASSES), {}, head=head, class_names=CLASSES,
        model="ViT-B-16", weights=None, model_overrides=TINY, prompts=list(prompts),
    )  # fmt: skip


def _reference_model(seed=0):
    torch.manual_seed(seed)
    return open_clip.create_model("ViT-B-16", pretrained=None, **TINY).eval()


@pytest.mark.parametrize("prompts", [("a photo of a {}.",), ("a photo of a {}.", "a sketch of a {}.")])
def test_zero_shot_head_gives_clip_logits(prompts):
    network = _tiny_network(prompts=prompts).eval()
    reference = _reference_model()
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=reference.context_length)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        image = F.normalize(reference.encode_image(x), dim=-1)
        text = []
        for name in CLASSES:
            e = F.normalize(reference.encode_text(tokenizer([p.format(name) for p in prompts])), dim=-1)
            text.append(F.normalize(e.mean(0), dim=-1))
        expected = reference.logit_scale.exp() * image @ torch.stack(text).T
        logits = network(x)
    assert logits.shape == (5, 3)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_only_the_image_tower_is_kept_and_trained():
    network = _tiny_network()
    featurizer = network.featurizer
    assert isinstance(featurizer, CLIPImageEncoder) and isinstance(network.head, ZeroShotHead)
    assert not featurizer.has_text_encoder  # the text tower was freed once the head was built
    reference = _reference_model()
    n_visual = sum(p.numel() for p in reference.visual.parameters())
    n_head = 3 * featurizer.n_outputs + 3
    assert sum(p.numel() for p in network.parameters()) == n_visual + n_head
    assert all(k.startswith(("featurizer.visual.", "head.")) for k in network.state_dict())
    loss = network(torch.randn(2, 3, 32, 32)).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in network.parameters())


def test_linear_head_and_zero_shot_needs_clip():
    network = _tiny_network(head="linear")
    assert isinstance(network.head, torch.nn.Linear) and network.head.in_features == 32
    assert not network.featurizer.has_text_encoder
    with pytest.raises(ConfigError, match="zero_shot needs a CLIP backbone"):
        build_network("digits_cnn", (1, 16, 16), 3, {}, head="zero_shot", class_names=CLASSES)


def test_preprocessing_without_building():
    clip = backbone_preprocess("clip_vit_b16", {"model": "ViT-B-16", "weights": "openai", "head": "zero_shot"})
    assert clip.image_size == 224 and clip.mean == CLIP_MEAN and clip.std == CLIP_STD
    tiny = backbone_preprocess("clip_tiny", {"weights": None, "model_overrides": TINY})
    assert tiny.image_size == 32 and tiny.mean == CLIP_MEAN
    resnet = backbone_preprocess("resnet50", {"weights": "imagenet"})
    assert resnet.image_size == 224 and resnet.mean == IMAGENET_MEAN and resnet.std == IMAGENET_STD
    assert backbone_preprocess("digits_cnn", {}) is None


def test_resnet50_freezes_batchnorm_and_uses_dropout():
    network = build_network("resnet50", (3, 224, 224), 4, {"resnet_dropout": 0.5}, weights=None)
    network.train()
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert network.featurizer.n_outputs == 2048 and network.featurizer.dropout.p == 0.5


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached weights and no downloads."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    torch_home = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch"))
    monkeypatch.setenv("SAGE_BENCH_OFFLINE", "1")
    yield tmp_path
    torch.hub.set_dir(torch_home)


def test_missing_clip_weights_say_where_and_how(empty_caches):
    with pytest.raises(WeightsNotFoundError) as info:
        build_network("clip_vit_b16", (3, 224, 224), 3, {}, head="zero_shot", class_names=CLASSES)
    message = str(info.value)
    assert str(empty_caches / "hf") in message  # where it looked
    assert "backbone.pretrained=" in message
    assert "hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors" in message
    assert "models--timm--vit_base_patch16_clip_224.openai" in message


def test_missing_resnet_weights_say_where_and_how(empty_caches):
    with pytest.raises(WeightsNotFoundError) as info:
        build_network("resnet50", (3, 224, 224), 3, {})
    message = str(info.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert str(empty_caches / "torch" / "checkpoints" / "resnet50-0676ba61.pth") in message


def test_missing_pretrained_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsNotFoundError, match=f"backbone.pretrained={missing}: no such file"):
        build_network("clip_vit_b16", (3, 224, 224), 3, {}, head="linear", pretrained=str(missing))


def test_pretrained_file_is_loaded(tmp_path):
    torch.manual_seed(3)
    source = open_clip.create_model("ViT-B-16", pretrained=None, **TINY)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    network = build_network(
        "clip", (3, 32, 32), 3, {}, head="linear", model="ViT-B-16", weights="openai",
        pretrained=str(path), model_overrides=TINY,
    )  # fmt: skip
    for name, value in source.visual.state_dict().items():
        assert torch.equal(network.featurizer.visual.state_dict()[name], value)


def test_missing_weights_stop_a_train_run_with_exit_code_2(empty_caches, tmp_path, capsys):
    from sage_bench.cli import main
    from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree

    make_tree(tmp_path / "data" / "PACS", PACS_ENVS, PACS_CLASSES, per_class=1)
    code = main(["train", "dataset=PACS", f"data_dir={tmp_path / 'data'}", f"output_dir={tmp_path / 'out'}",
                 "num_workers=0", "progress=false"])  # fmt: skip
    assert code == 2
    assert "hf download timm/vit_base_patch16_clip_224.openai" in capsys.readouterr().err


def test_backbone_options_are_checked():
    with pytest.raises(ConfigError, match="unknown option.*backbone.pretraind.*valid options"):
        load_job(["dataset=PACS", "+backbone.pretraind=/x"])
    with pytest.raises(ConfigError, match="backbone.head.*linear, zero_shot"):
        load_job(["dataset=PACS", "backbone.head=cosine"])


@pytest.mark.slow
def test_vit_b16_forward_backward_at_224():
    """The real ViT-B-16 architecture (random weights, nothing downloaded) on a CPU."""
    torch.manual_seed(0)
    network = build_network("clip", (3, 224, 224), 3, {}, head="zero_shot", class_names=CLASSES,
                            model="ViT-B-16", weights=None)  # fmt: skip
    assert network.featurizer.n_outputs == 512
    assert sum(p.numel() for p in network.featurizer.parameters()) == pytest.approx(86.2e6, rel=0.01)
    x = torch.randn(2, 3, 224, 224)
    logits = network(x)
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    grad = network.featurizer.visual.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


# timm models whose pooled output (``head_hidden_size``) is wider than their last feature map
# (``num_features``), from timm's own model list, and one whose two sizes agree
TIMM_HEADS = [
    "mobilenetv3_small_050.lamb_in1k", "ghostnet_100.in1k", "lcnet_050.ra2_in1k", "hgnetv2_b0.ssld_stage2_ft_in1k",
    "mobilenetv4_conv_small.e2400_r224_in1k", "efficientnet_b0.ra_in1k",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("model_name", TIMM_HEADS)
def test_timm_backbones_whose_pooled_output_is_not_num_features_train(model_name):
    from sage_bench.algorithms.erm import ERM

    torch.manual_seed(0)
    network = build_network("timm", (3, 64, 64), 3, {}, model_name=model_name, weights=False)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    assert network.featurizer(x).shape == (4, network.featurizer.n_outputs)
    algorithm = ERM(network, torch.optim.SGD(network.parameters(), lr=0.1), {})
    before = [p.detach().clone() for p in network.head.parameters()]
    loss = algorithm.update([(x, y)])["loss"]
    assert math.isfinite(loss) and network(x).shape == (4, 3)
    assert all(not torch.equal(a, b) for a, b in zip(before, network.head.parameters(), strict=True))


@pytest.mark.slow
def test_the_train_command_trains_a_timm_backbone_whose_head_widens_the_features(tmp_path):
    from sage_bench.cli import main
    from tests.test_eval_cache import _tree

    _tree(tmp_path)
    args = ["dataset=PACS", "backbone=timm", "backbone.model_name=mobilenetv3_small_050.lamb_in1k", "backbone.weights=false",
            "test_envs=[3]", f"data_dir={tmp_path}", f"output_dir={tmp_path / 'out'}", "steps=2", "checkpoint_freq=1",
            "num_workers=0", "progress=false", "hparams.batch_size=4"]  # fmt: skip
    assert main(["train", *args]) == 0
    assert len(read_records(load_job(args).job_dir)) == 2
