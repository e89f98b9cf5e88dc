"""The kinds of job: every layer's table names the same kinds, a job is a common core plus its
kind's settings, and the modules that the lower layers rest on import nothing from above."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import sage_bench
from sage_bench.collect.kinds import COLLECTORS
from sage_bench.config import (
    JOB_KINDS,
    DGSettings,
    JobSpec,
    MultiTaskSettings,
    dataset_kind,
    load_job,
)
from sage_bench.data.catalog import ALL_DATASET_NAMES
from sage_bench.kinds import KINDS, kind_of
from sage_bench.records import DOMAIN_GENERALIZATION, MULTI_TASK, record_task
from sage_bench.run.loops import LOOPS

PACKAGE = Path(sage_bench.__file__).parent


def test_every_layer_knows_the_same_kinds():
    assert set(KINDS) == set(JOB_KINDS) == set(LOOPS) == set(COLLECTORS) == {DOMAIN_GENERALIZATION, MULTI_TASK}
    for task in KINDS:
        assert JOB_KINDS[task].kind is KINDS[task] and COLLECTORS[task].kind is KINDS[task]


def test_every_data_set_has_a_kind():
    assert {dataset_kind(name).task for name in ALL_DATASET_NAMES} == set(KINDS)


def test_a_record_without_a_task_is_domain_generalization():
    assert kind_of(None).task == DOMAIN_GENERALIZATION and kind_of("something else").task == DOMAIN_GENERALIZATION
    assert kind_of(MULTI_TASK).float32_auto and not kind_of(DOMAIN_GENERALIZATION).float32_auto


def test_the_core_of_a_job_has_no_setting_of_a_kind():
    core = {f.name for f in dataclasses.fields(JobSpec)}
    for settings in (DGSettings, MultiTaskSettings):
        assert not core & {f.name for f in dataclasses.fields(settings)}, settings


@pytest.mark.parametrize(
    ("overrides", "settings"),
    [(["dataset=RotatedDigits", "algorithm=ERM"], DGSettings), (["dataset=DigitScenes", "algorithm=LS"], MultiTaskSettings)],
)
def test_a_job_carries_its_kind_into_its_records(tmp_path, overrides, settings):
    spec = load_job([*overrides, f"output_dir={tmp_path}"])
    assert isinstance(spec.settings, settings) and spec.task == settings.TASK
    args = spec.record_args()
    assert record_task({"args": args}) == spec.task == dataset_kind(spec.dataset).task
    for field in dataclasses.fields(settings):  # every setting of the kind is recorded
        assert field.name in args or field.name == "test_grad_cosine_freq", field.name


def _imported_modules(path: Path) -> set[str]:
    """Every ``sage_bench`` module a file imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sage_bench"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("sage_bench"))
    return names


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("hparams.py", {"sage_bench.errors", "sage_bench.seeding"}),
        ("kinds.py", {"sage_bench.records"}),
        ("precision.py", {"sage_bench.errors"}),
    ],
)
def test_the_bottom_modules_import_nothing_from_above(module, allowed):
    imported = {name.rsplit(".", 1)[0] if name.rsplit(".", 1)[0] in allowed else name
                for name in _imported_modules(PACKAGE / module)}  # fmt: skip
    assert imported <= allowed, imported - allowed


def test_the_configuration_never_imports_the_runner_the_sweeps_or_the_collector():
    for path in (PACKAGE / "config").glob("*.py"):
        layers = {m.split(".")[1] for m in _imported_modules(path) if m.count(".")}
        above = layers & {"run", "sweep", "collect", "reproduce", "commands"}
        assert not above, (path.name, above)
