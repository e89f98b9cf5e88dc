"""``eval_splits=selection`` evaluates only what model selection reads, and gives the same
selected models and tables as ``all`` on the same runs."""

from __future__ import annotations

import pytest

from sage_bench.collect import find_runs, render, sweep_accs
from sage_bench.collect.loading import record_problem
from sage_bench.collect.selection import GroupKey
from sage_bench.config import load_job
from sage_bench.records import MEASUREMENT_KEYS, read_records
from sage_bench.run import run_job
from tests.helpers.imagetree import PACS_CLASSES, PACS_ENVS, make_tree

TIMINGS = MEASUREMENT_KEYS


def _run(overrides: list[str]):
    spec = load_job([*overrides, "progress=false", "device=cpu"])
    run_job(spec, console=False)
    return spec, read_records(spec.job_dir)


def _same_except_left_out(full: list[dict], selected: list[dict], test_envs: list[int]) -> None:
    assert len(full) == len(selected)
    for a, b in zip(full, selected, strict=True):
        left_out = {f"env{i}_in_acc" for i in range(8) if i not in test_envs} & set(a)
        assert left_out and not left_out & set(b)
        assert {k: v for k, v in a.items() if k not in left_out and k not in TIMINGS and k != "args"} == {
            k: v for k, v in b.items() if k not in TIMINGS and k != "args"
        }
        assert record_problem(b) is None


@pytest.mark.slow
def test_same_records_and_tables_as_all(tmp_path):
    """ColoredDigits, test environment 0 alone and with each other one (what leave-one-out
    needs), two configurations: the records agree on every split both evaluate, and every
    selection method selects the same and gives the same table."""
    records = {"all": [], "selection": []}
    for test_envs in ("[0]", "[0,1]", "[0,2]"):
        for hparams_seed in (0, 1):
            base = ["dataset=ColoredDigits", "algorithm=ERM", f"test_envs={test_envs}", f"hparams_seed={hparams_seed}",
                    "steps=3", "checkpoint_freq=2", "hparams.batch_size=16", "backbone.channels=[8,8,8,8]"]  # fmt: skip
            spec_all, full = _run([*base, f"output_dir={tmp_path / 'all'}"])
            spec_sel, selected = _run([*base, f"output_dir={tmp_path / 'selection'}", "eval_splits=selection"])
            assert spec_all.job_id != spec_sel.job_id
            _same_except_left_out(full, selected, spec_all.settings.test_envs)
            records["all"] += full
            records["selection"] += selected
    for method in ("training-domain", "leave-one-out", "oracle"):
        chosen = {mode: sweep_accs(method, find_runs(tmp_path / mode).records) for mode in records}
        assert chosen["all"] == chosen["selection"] and list(chosen["all"]) == [GroupKey(0, "ColoredDigits", "ERM", 0)]
        tables = {mode: render(find_runs(tmp_path / mode).records, method, "csv") for mode in records}
        assert tables["all"] == tables["selection"]


@pytest.mark.slow
def test_training_path_is_unchanged_when_training_draws_from_the_global_generator(tmp_path):
    """Augmentation decoded in this process (num_workers=0) draws from the global generator
    between checkpoints, so a left-out split must draw what its loader would have drawn."""
    make_tree(tmp_path / "data" / "PACS", PACS_ENVS, PACS_CLASSES, per_class=2)
    base = ["dataset=PACS", "backbone=clip_tiny", "test_envs=[3]", f"data_dir={tmp_path / 'data'}", "steps=5",
            "checkpoint_freq=2", "num_workers=0", "hparams.batch_size=4", "hparams.lr=1e-3",
            "dataset.eval_augment=false"]  # fmt: skip
    _, full = _run([*base, f"output_dir={tmp_path / 'all'}"])
    _, selected = _run([*base, f"output_dir={tmp_path / 'selection'}", "eval_splits=selection"])
    _same_except_left_out(full, selected, [3])
    assert len({r["loss"] for r in full}) == len(full)  # training moved


def test_selection_records_without_args_say_so_are_still_refused():
    record = {"step": 0, "args": {"dataset": "Toy", "algorithm": "ERM", "test_envs": [0], "trial_seed": 0,
                                  "hparams_seed": 0}, "env0_in_acc": 0.5, "env0_out_acc": 0.5, "env1_out_acc": 0.5}  # fmt: skip
    assert "env1_in_acc" in record_problem(record)
    record["args"]["eval_splits"] = "selection"
    assert record_problem(record) is None
    del record["env0_in_acc"]  # a test environment's in-split is always needed
    assert "env0_in_acc" in record_problem(record)
