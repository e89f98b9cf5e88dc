"""A backbone or data set without a YAML file of its own is still a choice of its config group,
with its options at the defaults of its builder or constructor: registering it (or its catalog
line) is enough. A YAML file, where there is one, is what the group reads."""

from __future__ import annotations

import sys

import pytest

from sage_bench.config import load_job
from sage_bench.data import catalog
from sage_bench.errors import ConfigError
from sage_bench.models import registry as backbone_registry

BACKBONE_PLUGIN = '''
from torch import nn

from sage_bench.models.registry import register_backbone


class Pooled(nn.Module):
    def __init__(self, channels, width):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.n_outputs = width

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))


@register_backbone("{name}")
def build(input_shape, hparams, width: int = 6, kernel_sizes: tuple = (3, 3)):
    return Pooled(input_shape[0], width)
'''


@pytest.fixture
def plugin_backbone(tmp_path, monkeypatch):
    """A module outside the package that registers backbone ``pooled_net`` and nothing else
    (no YAML); unregistered again afterwards."""
    name, module = "pooled_net", "pooled_net_plugin"
    (tmp_path / f"{module}.py").write_text(BACKBONE_PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, module
    backbone_registry._REGISTRY.pop(name, None)
    sys.modules.pop(module, None)


def test_a_registered_backbone_without_a_yaml_file_is_a_choice_with_its_builders_defaults(plugin_backbone, tmp_path):
    name, module = plugin_backbone
    base = ["dataset=RotatedDigits", f"backbone={name}", f"plugins=[{module}]", "steps=2", f"output_dir={tmp_path}"]
    spec = load_job(base)
    assert spec.backbone == name
    assert spec.backbone_options == {"width": 6, "kernel_sizes": [3, 3]}
    assert load_job([*base, "backbone.width=4"]).backbone_options["width"] == 4
    with pytest.raises(ConfigError, match=r"backbone\.depth"):
        load_job([*base, "backbone.depth=2"])


def test_a_backbone_with_a_yaml_file_reads_the_file():
    spec = load_job(["dataset=PACS", "backbone=clip_tiny", "data_dir=/nonexistent", "steps=2"])
    assert spec.backbone_options["model_overrides"]["vision_cfg"]["image_size"] == 32  # the YAML's, no builder default


def test_a_catalogued_data_set_without_a_yaml_file_is_a_choice_with_its_constructors_defaults(monkeypatch, tmp_path):
    """A copy of RotatedDigits under a new name: its catalog line is all there is of it."""
    module = tmp_path / "tilted_digits.py"
    module.write_text(
        "from sage_bench.data.digits import RotatedDigits\n\n"
        "class TiltedDigits(RotatedDigits):\n"
        "    def __init__(self, root=None, test_envs=None, hparams=None, preprocess=None, tilt: int = 30):\n"
        "        super().__init__(root, test_envs, hparams, preprocess)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = catalog.domain_generalization("tilted_digits", "0", "15", "30")
    monkeypatch.setitem(catalog.CATALOG, "TiltedDigits", entry)
    monkeypatch.setitem(catalog.ENVIRONMENTS, "TiltedDigits", ["0", "15", "30"])
    monkeypatch.setattr(catalog, "ALL_DATASET_NAMES", [*catalog.ALL_DATASET_NAMES, "TiltedDigits"])
    import sage_bench.config.schema as schema

    monkeypatch.setattr(schema, "ALL_DATASET_NAMES", catalog.ALL_DATASET_NAMES)
    base = ["dataset=TiltedDigits", "backbone=digits_cnn", "steps=2", f"output_dir={tmp_path}"]
    spec = load_job(base)
    assert spec.dataset == "TiltedDigits" and spec.dataset_options == {"tilt": 30}
    assert load_job([*base, "dataset.tilt=15"]).dataset_options == {"tilt": 15}
    with pytest.raises(ConfigError, match=r"dataset\.nonsense"):
        load_job(["dataset=TiltedDigits", "backbone=digits_cnn", "dataset.nonsense=1", "steps=2"])
