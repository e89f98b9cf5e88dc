"""ImageNet CNNs: DomainBed's ResNet-50, and any timm model by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sage_bench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from sage_bench.errors import ConfigError
from sage_bench.models.registry import register_backbone
from sage_bench.models.weights import WeightFile, resolve_weights

RESNET50_IMAGENET = WeightFile(
    description="torchvision ResNet-50 (ImageNet, IMAGENET1K_V1 as DomainBed)",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
)


class ResNetFeaturizer(nn.Module):
    """DomainBed's ``ResNet`` featurizer: torchvision's ResNet-50 without its classifier
    (2048 features), dropout ``hparams['resnet_dropout']`` on the features, and every
    BatchNorm layer kept in eval mode (running statistics frozen) even while training."""

    def __init__(self, resnet: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.n_outputs = resnet.fc.in_features
        resnet.fc = nn.Identity()
        self.network = resnet
        self.dropout = nn.Dropout(dropout)
        self.freeze_bn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.network(x))

    def train(self, mode: bool = True) -> ResNetFeaturizer:
        super().train(mode)
        self.freeze_bn()
        return self

    def freeze_bn(self) -> None:
        for module in self.network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()


def imagenet_preprocess(**_: Any) -> Preprocess:
    return Preprocess(224, IMAGENET_MEAN, IMAGENET_STD)


@register_backbone("resnet50", preprocess=imagenet_preprocess)  # DomainBed's ResNet-50 (ImageNet, frozen BatchNorm)
def build_resnet50(
    input_shape: Sequence[int], hparams: Mapping[str, Any], weights: str | None = "imagenet", pretrained: str | None = None
) -> ResNetFeaturizer:
    """DomainBed's ResNet-50; ``weights=None`` for random initialisation."""
    import torchvision

    resnet = torchvision.models.resnet50()
    if weights is not None:
        if weights != "imagenet":
            raise ConfigError(f"bad value for 'backbone.weights': {weights!r}; valid choices: imagenet, null")
        path = resolve_weights(RESNET50_IMAGENET, pretrained)
        resnet.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return ResNetFeaturizer(resnet, float(hparams.get("resnet_dropout", 0.0)))


# ---------------------------------------------------------------------------------------------
# Any timm model by name.


def _timm_cfg(model_name: str) -> dict[str, Any]:
    import timm

    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is None:
        raise ConfigError(
            f"unknown timm model {model_name!r}; `python -c \"import timm; print(timm.list_models(pretrained=True))\"` lists them"
        )
    return cfg.to_dict()


class TimmFeaturizer(nn.Module):
    """A timm model without its classifier: images -> pooled features (``n_outputs``).

    The pooled output's size is timm's ``head_hidden_size`` where the model has one: it differs
    from ``num_features`` (the last feature map's channels) in models whose head adds a layer
    after pooling (MobileNetV3, GhostNet, LCNet, HGNetV2, ...); older timm versions have only
    ``num_features``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.n_outputs = int(getattr(model, "head_hidden_size", None) or model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def timm_preprocess(model_name: str = "resnet50.a1_in1k", **_: Any) -> Preprocess:
    cfg = _timm_cfg(model_name)
    return Preprocess(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))


@register_backbone("timm", preprocess=timm_preprocess)  # any timm model by name
def build_timm(
    input_shape: Sequence[int],
    hparams: Mapping[str, Any],
    model_name: str = "resnet50.a1_in1k",
    weights: bool = True,
    pretrained: str | None = None,
) -> TimmFeaturizer:
    """``timm.create_model(model_name, num_classes=0)``, with its pretrained weights when
    ``weights`` (from ``pretrained=/path/file``, the caches, or a download)."""
    import timm

    cfg = _timm_cfg(model_name)
    overlay = None
    if weights:
        source = WeightFile(
            description=f"timm {model_name}",
            hf_repo=cfg.get("hf_hub_id") or None,
            hf_filenames=("model.safetensors", "pytorch_model.bin"),
            url=None if cfg.get("hf_hub_id") else (cfg.get("url") or None),
        )
        overlay = {"file": str(resolve_weights(source, pretrained))}
    model = timm.create_model(
        model_name, pretrained=bool(weights), pretrained_cfg_overlay=overlay, num_classes=0
    )
    return TimmFeaturizer(model)
