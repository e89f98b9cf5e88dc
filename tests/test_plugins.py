"""Algorithms from outside the package: an installed package's entry point, or a module named
by ``plugins=[...]``, registers an algorithm that then works as ``algorithm=<name>``, with the
built-in algorithms' validation and messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sage_bench.algorithms.registry import _REGISTRY, PluginError
from sage_bench.config import load_job
from sage_bench.errors import ConfigError
from sage_bench.records import read_records

PLUGIN = '''
import torch.nn.functional as F

from sage_bench.algorithms import Algorithm, register_algorithm
from sage_bench.algorithms.base import concat
from sage_bench.hparams import UNIT_INTERVAL, HParam, const


def space(context):
    return {{"smoothing": HParam(0.1, const(0.1), "label smoothing", range=UNIT_INTERVAL)}}


@register_algorithm("{name}", space=space)
class SmoothedERM(Algorithm):
    def update(self, minibatches):
        x, y = concat(minibatches)
        loss = F.cross_entropy(self.predict(x), y, label_smoothing=self.hparams["smoothing"])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {{"loss": loss.item()}}
'''


def install_plugin_package(site: Path, package: str, algorithm: str) -> None:
    """What ``pip install`` leaves for a package with an entry point in the group
    ``sage_bench.algorithms``: the module, and a ``.dist-info`` with ``entry_points.txt``."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(PLUGIN.format(name=algorithm))
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[sage_bench.algorithms]\n{package} = {package}\n")


def sage_bench(*args: str, pythonpath: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("sage-bench")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sage_bench.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_an_installed_plugin_package_adds_an_algorithm_to_sage_bench_train(tmp_path):
    site = tmp_path / "site"
    install_plugin_package(site, "sage_demo_plugin", "SmoothedERM")
    common = ["algorithm=SmoothedERM", "steps=2", "checkpoint_freq=1", "progress=false", "hparams.batch_size=8"]

    done = sage_bench("train", *common, "hparams.smoothing=0.2", f"output_dir={tmp_path / 'runs'}", pythonpath=site)
    assert done.returncode == 0, done.stderr
    job_dir = Path(done.stdout.strip().splitlines()[-1])
    records = read_records(job_dir)
    assert [r["step"] for r in records] == [0, 1]
    assert records[-1]["args"]["algorithm"] == "SmoothedERM"
    assert records[-1]["hparams"]["smoothing"] == 0.2

    refused = sage_bench("train", *common, "hparams.smoothing=2", "--dry-run", pythonpath=site)
    assert refused.returncode == 2
    assert "hparams.smoothing=2.0 is out of range: must be in [0, 1] (label smoothing)" in refused.stderr
    unknown = sage_bench("train", "algorithm=SmoothedERM", "hparams.smoothness=0.2", "--dry-run", pythonpath=site)
    assert unknown.returncode == 2
    assert "unknown hyperparameter 'smoothness'; valid names: batch_size, lr, smoothing, weight_decay" in unknown.stderr


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A module ``sage_demo_module`` on ``sys.path`` that registers ``ModuleERM``; unregistered
    afterwards."""
    (tmp_path / "sage_demo_module.py").write_text(PLUGIN.format(name="ModuleERM"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "sage_demo_module"
    _REGISTRY.pop("ModuleERM", None)
    sys.modules.pop("sage_demo_module", None)


def test_plugins_key_imports_a_module_before_the_algorithm_is_chosen(plugin_module, tmp_path):
    with pytest.raises(ConfigError, match="unknown algorithm 'ModuleERM'; valid choices: CDANN, CORAL"):
        load_job(["algorithm=ModuleERM", f"output_dir={tmp_path}"])
    spec = load_job([f"plugins=[{plugin_module}]", "algorithm=ModuleERM", f"output_dir={tmp_path}"])
    assert spec.algorithm == "ModuleERM" and spec.hparams["smoothing"] == 0.1
    assert spec.plugins == (plugin_module,) and spec.record_args()["plugins"] == [plugin_module]
    assert "plugins" not in spec.identity()  # where an algorithm comes from is not what it computes
    with pytest.raises(ConfigError, match=r"hparams.smoothing=-1.0 is out of range: must be in \[0, 1\]"):
        load_job([f"plugins=[{plugin_module}]", "algorithm=ModuleERM", "hparams.smoothing=-1"])


def test_a_plugin_that_cannot_be_imported_or_a_bad_plugins_value_is_reported(tmp_path):
    with pytest.raises(PluginError, match=r"cannot import the plugin module 'no_such_module_x' .*PYTHONPATH"):
        load_job(["plugins=[no_such_module_x]", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"bad value for 'plugins': 'plugins=some_module'; give a list"):
        load_job(["plugins=some_module", f"output_dir={tmp_path}"])
    assert "plugins" not in load_job([f"output_dir={tmp_path}"]).record_args()  # none: records as before


HEADER = "from sage_bench.algorithms import register_algorithm\nfrom sage_bench.algorithms.erm import ERM\nfrom sage_bench.hparams import HParam, UNIT_INTERVAL, const\n"  # fmt: skip
BROKEN = {
    "raises": ("raise RuntimeError('no GPU driver found')\n", "Raising",
               ["the plugin module 'broken_raises' failed to import: RuntimeError: no GPU driver found",
                "broken_raises.py, line 4", "fix the module"]),
    "syntax": ("def f(:\n", "Syntax",
               ["the plugin module 'broken_syntax' has a syntax error", "broken_syntax.py, line 4", "fix the module"]),
    "twice": ("@register_algorithm('ERM')\nclass Mine(ERM):\n    pass\n", "ERM",
              ["the plugin module 'broken_twice' registers an algorithm under a name that is taken",
               "algorithm 'ERM' is registered twice", "broken_twice.Mine", "give the second another name"]),
    "shared": ("@register_algorithm('SharedLR', space=lambda c: {'lr': HParam(0.1, const(0.1))})\nclass S(ERM):\n    pass\n",
               "SharedLR", ["algorithm 'SharedLR' (broken_shared) declares a hyperparameter 'lr', which is a shared one",
                            "give it another name in its space function"]),
    "space_raises": ("def space(c):\n    raise KeyError('family')\n@register_algorithm('SpaceRaises', space=space)\nclass S(ERM):\n    pass\n",
                     "SpaceRaises", ["the hyperparameter space of algorithm 'SpaceRaises' (broken_space_raises) raised KeyError",
                                     "fix its space function"]),
    "space_list": ("@register_algorithm('SpaceList', space=lambda c: [HParam(0.1, const(0.1))])\nclass S(ERM):\n    pass\n",
                   "SpaceList", ["the hyperparameter space of algorithm 'SpaceList' (broken_space_list) returned list",
                                 "a space function returns a dict {name: HParam(...)}"]),
    "default": ("@register_algorithm('BadDefault', space=lambda c: {'smoothing': HParam(5.0, const(5.0), 'label smoothing', range=UNIT_INTERVAL)})\nclass S(ERM):\n    pass\n",
                "BadDefault", ["the default of hparams.smoothing that algorithm 'BadDefault' (broken_default) declares is 5.0",
                               "outside its own range (must be in [0, 1]", "a bug of its hyperparameter space, not of this command"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_exits_2_naming_the_plugin_the_problem_and_the_fix(tmp_path, case):
    body, algorithm, said = BROKEN[case]
    module = f"broken_{case}"
    (tmp_path / f"{module}.py").write_text(HEADER + body)
    done = sage_bench("train", f"plugins=[{module}]", f"algorithm={algorithm}", f"output_dir={tmp_path / 'out'}",
                      "--dry-run", pythonpath=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "hparams.smoothing=5.0 is out of range" not in done.stderr
    for text in said:
        assert text in done.stderr, done.stderr


def test_a_plugin_default_out_of_its_range_can_be_set_by_the_user(tmp_path, monkeypatch):
    (tmp_path / "bad_default_ok.py").write_text(HEADER + BROKEN["default"][0].replace("BadDefault", "BadDefaultOK"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        spec = load_job(["plugins=[bad_default_ok]", "algorithm=BadDefaultOK", "hparams.smoothing=0.2"])
        assert spec.hparams["smoothing"] == 0.2
    finally:
        _REGISTRY.pop("BadDefaultOK", None)
        sys.modules.pop("bad_default_ok", None)
