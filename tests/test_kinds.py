"""The kinds of job: every layer's table names the same kinds, a job is a common core plus its
kind's settings, and no module imports itself back."""

from __future__ import annotations

import dataclasses
import graphlib

import grimp
import pytest

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


def test_no_module_of_the_package_imports_itself_back():
    """No import cycle between any two modules, imports inside functions included (a package and
    its own modules too, which the layers contract of pyproject.toml, run by ``lint-imports`` in
    CI, does not look at)."""
    graph = grimp.build_graph("sage_bench", cache_dir=None)
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    try:
        tuple(graphlib.TopologicalSorter(imports).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
