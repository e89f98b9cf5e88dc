"""OpenAI's CLIP weights need QuickGELU: the model built for them has it, whatever open_clip's
version records (random initialisation: nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

from sage_bench.models import clip

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _activations(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if "GELU" in type(m).__name__}


def test_openai_weights_get_quick_gelu():
    model = clip.create_clip_model("ViT-B-16", "openai", checkpoint=None, model_overrides=TINY)
    assert _activations(model.visual) == {"QuickGELU"} and _activations(model.transformer) == {"QuickGELU"}
    x = torch.linspace(-3, 3, 7)
    act = next(m for m in model.visual.modules() if type(m).__name__ == "QuickGELU")
    assert torch.allclose(act(x), x * torch.sigmoid(1.702 * x))  # not GELU's x * Phi(x)
    assert _activations(clip.create_clip_model("ViT-B-16", None, None, TINY).visual) == {"GELU"}  # random init: GELU


def test_quick_gelu_even_where_open_clip_does_not_record_it(monkeypatch):
    # open_clip before 2.29: the pretrained config has no quick_gelu entry
    original = clip._pretrained_cfg
    monkeypatch.setattr(clip, "_pretrained_cfg", lambda m, w: {k: v for k, v in original(m, w).items() if k != "quick_gelu"})
    assert clip.uses_quick_gelu("ViT-B-16", "openai")
    model = clip.create_clip_model("ViT-B-16", "openai", checkpoint=None, model_overrides=TINY)
    assert _activations(model.visual) == {"QuickGELU"}


@pytest.mark.slow
def test_the_papers_vit_b16_is_built_with_quick_gelu():
    """The full ViT-B/16 of backbone=clip_vit_b16 (weights=openai), randomly initialised."""
    model = clip.create_clip_model("ViT-B-16", "openai", checkpoint=None)
    assert _activations(model.visual) == {"QuickGELU"}
    assert sum(p.numel() for p in model.visual.parameters()) > 85_000_000
