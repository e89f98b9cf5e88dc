"""CLIP backbones from open_clip: the image tower as featurizer, and a zero-shot head.

Only the image tower trains. The text tower exists only while the head is built: a
``zero_shot`` head is initialised from the CLIP text embeddings of class-name prompts, scaled by
CLIP's logit scale (the usual CLIP protocol for domain generalization, as in WiSE-FT), and then
the text tower is freed. With a ``linear`` head it is freed at once.

``weights`` names open_clip's pretrained tag (``openai`` for the paper's CLIP ViT-B/16); the file
is found by ``sage_bench.models.weights.resolve_weights`` (``pretrained=/path/file`` overrides).
OpenAI's weights were trained with QuickGELU; the model built for them always has it
(``uses_quick_gelu``), whatever open_clip's version says.
``weights=None`` gives random initialisation, which with ``model_overrides`` (e.g. a tiny
``vision_cfg``/``text_cfg``) builds small models that run the same code on a CPU in tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sage_bench.data.transforms import CLIP_MEAN, CLIP_STD, Preprocess
from sage_bench.errors import ConfigError
from sage_bench.models.registry import register_backbone
from sage_bench.models.weights import WeightFile, resolve_weights

DEFAULT_PROMPTS = ("a photo of a {}.",)


def _pretrained_cfg(model: str, weights: str | None) -> dict[str, Any]:
    import open_clip

    if weights is None:
        return {}
    cfg = open_clip.get_pretrained_cfg(model, weights)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ConfigError(f"open_clip has no weights {weights!r} for {model}; valid choices: {tags}")
    return cfg


def _model_cfg(model: str, model_overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ConfigError(f"unknown open_clip model {model!r}; valid choices: {', '.join(open_clip.list_models())}")
    return {**cfg, **dict(model_overrides or {})}


def clip_weight_file(model: str, weights: str) -> WeightFile:
    """Where open_clip publishes the weights ``weights`` of ``model``."""
    cfg = _pretrained_cfg(model, weights)
    hub = cfg.get("hf_hub", "").strip("/")
    parts = hub.split("/")  # "org/name" or "org/name/file"
    repo = "/".join(parts[:2]) if hub else None
    filenames = (parts[2],) if len(parts) > 2 else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    url = None if repo else cfg.get("url") or None  # open_clip prefers the hub copy
    return WeightFile(f"CLIP {model} ({weights})", hf_repo=repo, hf_filenames=filenames, url=url)


def uses_quick_gelu(model: str, weights: str | None) -> bool:
    """Whether the model for ``weights`` needs QuickGELU (``x * sigmoid(1.702 x)``) in place of GELU.

    OpenAI trained its CLIP models with QuickGELU. open_clip records that in the pretrained
    config (``quick_gelu``) only from version 2.29 on; before, a model built for an OpenAI weight
    file (not through open_clip's own ``pretrained="openai"`` path) gets GELU and loads the weights
    without complaint, with silently wrong features. So QuickGELU is forced for ``openai``
    weights on every version, and used wherever open_clip's config asks for it.
    """
    if weights is None:
        return False
    return weights == "openai" or bool(_pretrained_cfg(model, weights).get("quick_gelu", False))


def create_clip_model(
    model: str, weights: str | None, checkpoint: str | None, model_overrides: Mapping[str, Any] | None = None
) -> nn.Module:
    """open_clip's ``model`` with QuickGELU where ``weights`` need it, loaded from ``checkpoint``
    (a file; ``None``: random initialisation)."""
    import open_clip

    return open_clip.create_model(
        model,
        pretrained=checkpoint,
        force_quick_gelu=uses_quick_gelu(model, weights),
        **dict(model_overrides or {}),
    )


def clip_preprocess(
    model: str = "ViT-B-16", weights: str | None = "openai", model_overrides: Mapping[str, Any] | None = None, **_: Any
) -> Preprocess:
    """Input size and normalisation of a CLIP model, without building it."""
    size = _model_cfg(model, model_overrides)["vision_cfg"]["image_size"]
    if not isinstance(size, int):
        size = int(size[0])
    cfg = _pretrained_cfg(model, weights)
    return Preprocess(
        image_size=size, mean=tuple(cfg.get("mean", CLIP_MEAN)), std=tuple(cfg.get("std", CLIP_STD))
    )


class ZeroShotHead(nn.Module):
    """Logits ``W normalize(features) + b``; built by ``CLIPImageEncoder.zero_shot_head`` with
    ``W = logit_scale * normalize(text embeddings)`` and ``b = 0``, so at initialisation the
    logits are CLIP's zero-shot logits. ``W`` and ``b`` train like a linear head's."""

    def __init__(self, text_embeddings: torch.Tensor, logit_scale: float):
        super().__init__()
        num_classes, dim = text_embeddings.shape
        self.linear = nn.Linear(dim, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(logit_scale * F.normalize(text_embeddings.float(), dim=-1))
            self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(F.normalize(features, dim=-1))


class CLIPImageEncoder(nn.Module):
    """CLIP's image tower: images -> image embeddings of size ``n_outputs``.

    Until ``release_text_encoder`` it also holds CLIP's text tower, outside its module tree (so
    it is not trained, saved or moved), for ``zero_shot_head``.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS):
        super().__init__()
        self.visual = clip_model.visual
        self.n_outputs = int(clip_model.visual.output_dim)
        clip_model.visual = nn.Identity()  # the rest of the model is the text tower
        self.__dict__["_text_model"] = clip_model
        self.__dict__["_tokenizer"] = tokenizer
        self.prompts = tuple(prompts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    @property
    def has_text_encoder(self) -> bool:
        return self.__dict__.get("_text_model") is not None

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """One normalised embedding per class: the mean of its prompts' normalised embeddings."""
        if not self.has_text_encoder:
            raise RuntimeError("the text tower was released; build the head before releasing it")
        text_model, tokenizer = self.__dict__["_text_model"], self.__dict__["_tokenizer"]
        text_model.eval()
        embeddings = []
        for name in class_names:
            tokens = tokenizer([p.format(name) for p in self.prompts])
            e = text_model.encode_text(tokens, normalize=True).float().mean(dim=0)
            embeddings.append(F.normalize(e, dim=-1))
        return torch.stack(embeddings)

    def logit_scale(self) -> float:
        return float(self.__dict__["_text_model"].logit_scale.detach().exp())

    def zero_shot_head(self, class_names: Sequence[str]) -> ZeroShotHead:
        """A head whose initial logits are CLIP's zero-shot logits for ``class_names``."""
        return ZeroShotHead(self.text_embeddings(class_names), self.logit_scale())

    def release_text_encoder(self) -> None:
        """Free the text tower (the head is built)."""
        self.__dict__["_text_model"] = None
        self.__dict__["_tokenizer"] = None


@register_backbone("clip_vit_b16", preprocess=clip_preprocess)  # the paper's: open_clip ViT-B-16, OpenAI weights
@register_backbone("clip", preprocess=clip_preprocess)  # any open_clip model and weights
@register_backbone("clip_tiny", preprocess=clip_preprocess)  # a small random-init CLIP for tests and smoke runs
def build_clip(
    input_shape: Sequence[int],
    hparams: Mapping[str, Any],
    model: str = "ViT-B-16",
    weights: str | None = "openai",
    pretrained: str | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
) -> CLIPImageEncoder:
    """An open_clip model's image tower (with its text tower kept for the head).

    ``weights``: open_clip's pretrained tag, or ``None`` for random initialisation;
    ``pretrained``: a local file with those weights (else the caches, else a download).
    """
    import open_clip

    checkpoint = None
    if weights is not None:
        checkpoint = str(resolve_weights(clip_weight_file(model, weights), pretrained))
    elif pretrained is not None:
        raise ConfigError("backbone.pretrained is set but backbone.weights is null; name the weights, e.g. weights=openai")
    clip_model = create_clip_model(model, weights, checkpoint, model_overrides)
    tokenizer = open_clip.get_tokenizer(model, context_length=clip_model.context_length)
    return CLIPImageEncoder(clip_model, tokenizer, prompts)
