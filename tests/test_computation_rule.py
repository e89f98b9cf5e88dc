"""One rule (``sage_bench.computation``) for the job's folder, the resume check and the
collector's rows: settings that change no number never give another folder, never refuse a
resume and never split a row; settings that change numbers always do all three."""

from __future__ import annotations

import itertools
import os
import signal

import pytest

from sage_bench.algorithms.erm import ERM
from sage_bench.algorithms.sage import SAGE
from sage_bench.collect import mtl as collect_mtl
from sage_bench.collect.selection import row_names
from sage_bench.config import load_job
from sage_bench.precision import DEFAULT_PRECISION, DEFAULT_TF32
from sage_bench.records import read_records
from sage_bench.run import checkpoint as ckpt
from sage_bench.run import run_job
from tests.test_checkpoint import comparable
from tests.test_eval_cache import _cache, _tree

DIGITS = ["dataset=RotatedDigits", "steps=12", "checkpoint_freq=5", "progress=false", "hparams.batch_size=16"]


def _record(overrides: list[str]) -> dict:
    spec = load_job(overrides)
    return {"args": spec.record_args(), "hparams": spec.hparams}


def _agree(a: list[str], b: list[str]) -> tuple[bool, bool, bool]:
    """(same folder, resumable from each other, one row) for two override lists."""
    spec_a, spec_b = load_job(a), load_job(b)
    first, second = _record(a), _record(b)
    try:
        checkpoint = ckpt.Checkpoint(1, {}, {}, {}, {}, ckpt.job_computation(spec_a.hparams, first["args"]))
        ckpt.check_computation(checkpoint, ckpt.job_computation(spec_b.hparams, second["args"]), spec_a.job_dir)
        resumable = True
    except ckpt.CheckpointMismatch:
        resumable = False
    one_row = len(set(row_names([first, second]))) == 1
    return spec_a.job_id == spec_b.job_id, resumable, one_row


PACS = ["dataset=PACS", "backbone=clip_tiny", "test_envs=[3]", "output_dir=/tmp/out"]
SAGE_DIGITS = ["algorithm=SAGE", *DIGITS]


@pytest.mark.parametrize(
    "a, b, change_numbers",
    [
        (PACS, [*PACS, "dataset.eval_cache=off"], False),
        (PACS, [*PACS, "dataset.eval_cache=require"], False),
        (PACS, [*PACS, "num_workers=0", "progress=false", "eval_batch_size=7"], False),
        (PACS, [*PACS, "backbone.pretrained=/elsewhere/weights.bin"], False),  # where the named weights lie
        # auto's values for SAGE where its perturbed gradient is the difference
        (
            [*SAGE_DIGITS, "perturbation=difference"],
            [*SAGE_DIGITS, "perturbation=difference", "precision.train=fp32", "tf32=false"],
            False,
        ),
        # perturbation=auto may train SAGE in bf16 on CUDA (linearized); fp32 keeps the difference
        (SAGE_DIGITS, [*SAGE_DIGITS, "precision.train=fp32", "tf32=false"], True),
        ([*SAGE_DIGITS, "precision.train=fp32"], [*SAGE_DIGITS, "precision.train=fp32", "perturbation=difference"], False),
        (SAGE_DIGITS, [*SAGE_DIGITS, "perturbation=linearized"], True),
        (DIGITS, [*DIGITS, "perturbation=linearized"], False),  # ERM takes no perturbed gradient
        (SAGE_DIGITS, [*SAGE_DIGITS, "precision.train=bf16"], True),
        (DIGITS, [*DIGITS, "tf32=false"], True),  # ERM: auto is TF32 on CUDA
        (PACS, [*PACS, "dataset.eval_augment=false"], True),
        (DIGITS, [*DIGITS, "steps=13"], True),
    ],
)
def test_folder_resume_and_row_follow_one_rule(a, b, change_numbers):
    assert _agree(a, b) == (not change_numbers,) * 3


def test_the_rule_reads_records_of_every_age_and_any_algorithm():
    from sage_bench.computation import args_that_count

    assert DEFAULT_PRECISION == {"train": "auto", "eval": "auto", "polar": "auto"} and DEFAULT_TF32 == "auto"
    old = {"algorithm": "SAGE", "autocast": "bf16", "dataset_options": {"eval_cache": "off"}, "device": "cuda"}
    assert args_that_count(old) == {"algorithm": "SAGE", "autocast": "bf16", "dataset_options": {}}
    unknown = {"algorithm": "NotLoadedHere", "precision": {"train": "fp32", "eval": "auto", "polar": "auto"},
               "tf32": False}  # fmt: skip
    assert args_that_count(unknown) == {"algorithm": "NotLoadedHere", **{k: unknown[k] for k in ("precision", "tf32")}}



@pytest.mark.parametrize("algorithm", ["SAGE", "SAM", "SAGE-LS"])
def test_records_written_before_the_perturbation_key_count_as_the_difference(algorithm):
    """A record without ``perturbation`` (older sage-bench: the difference) is the same
    computation as a new one wherever the new one's method does not count, and differs where it
    does (``perturbation=linearized``)."""
    from sage_bench.computation import args_that_count

    data = ["dataset=DigitScenes", "epochs=1"] if algorithm == "SAGE-LS" else DIGITS
    for extra, same in (([], algorithm == "SAGE-LS"), (["precision.train=fp32"], True), (["perturbation=linearized"], False)):
        new = _record([f"algorithm={algorithm}", *data, *extra])["args"]
        old = {k: v for k, v in new.items() if k != "perturbation"}
        assert (args_that_count(old) == args_that_count(new)) is same, extra

def test_a_multi_task_row_is_not_split_by_a_precision_spelled_as_its_default():
    base = ["dataset=DigitScenes", "algorithm=LS", "epochs=1"]
    first, second = _record(base), _record([*base, "precision.eval=fp32", "precision.train=fp32"])
    assert load_job(base).job_id == load_job([*base, "precision.eval=fp32", "precision.train=fp32"]).job_id
    assert collect_mtl.run_setting(first) == collect_mtl.run_setting(second)
    assert collect_mtl.run_setting(_record([*base, "precision.train=bf16"])) != collect_mtl.run_setting(first)


def _stop_at(monkeypatch, cls, call: int) -> None:
    original, calls = cls.update, itertools.count(1)

    def update(self, minibatches):
        if next(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, minibatches)

    monkeypatch.setattr(cls, "update", update)


@pytest.mark.slow
def test_sage_stopped_with_auto_resumes_with_fp32_spelled_out(tmp_path, monkeypatch, one_thread):
    # with perturbation=difference, precision.train=fp32 tf32=false is what auto resolves to for
    # SAGE on every device (with perturbation=auto, a CUDA job may train in bf16: another job)
    sage = [*SAGE_DIGITS, "perturbation=difference"]
    reference = comparable(run_job(load_job([*sage, f"output_dir={tmp_path / 'ref'}"])))
    spec = load_job([*sage, f"output_dir={tmp_path / 'out'}"])
    _stop_at(monkeypatch, SAGE, 7)
    with pytest.raises(ckpt.JobInterrupted):
        run_job(spec)
    monkeypatch.undo()
    spelled = load_job([*sage, f"output_dir={tmp_path / 'out'}", "precision.train=fp32", "tf32=false"])
    assert spelled.job_dir == spec.job_dir
    run_job(spelled)  # today: CheckpointMismatch (args.precision, args.tf32)
    assert "resumed from the checkpoint before step 7" in (spec.job_dir / "out.txt").read_text()
    records = comparable(spec.job_dir)
    assert [{k: v for k, v in r.items() if k != "args"} for r in records] == [
        {k: v for k, v in r.items() if k != "args"} for r in reference
    ]
    assert len(set(row_names(read_records(spec.job_dir) + read_records(tmp_path / "ref" / spec.job_id)))) == 1


@pytest.mark.slow
def test_a_pacs_job_stopped_with_the_cache_resumes_without_it(tmp_path, monkeypatch, one_thread):
    _tree(tmp_path, per_class=3)
    _cache(tmp_path)
    base = ["dataset=PACS", "backbone=clip_tiny", "test_envs=[3]", f"data_dir={tmp_path}", f"output_dir={tmp_path / 'out'}",
            "steps=5", "checkpoint_freq=2", "num_workers=0", "progress=false", "hparams.batch_size=4",
            "hparams.lr=1e-3", "dataset.eval_augment=false"]  # fmt: skip
    spec = load_job(base)
    _stop_at(monkeypatch, ERM, 3)
    with pytest.raises(ckpt.JobInterrupted):
        run_job(spec)
    monkeypatch.undo()
    run_job(load_job([*base, "dataset.eval_cache=off"]))  # today: CheckpointMismatch, exit 2
    assert "resumed from the checkpoint before step 3" in (spec.job_dir / "out.txt").read_text()
    records = read_records(spec.job_dir)
    assert [r["step"] for r in records] == [0, 2, 4]
    assert {r["args"]["dataset_options"]["eval_cache"] for r in records} == {"auto", "off"}
    assert len(set(row_names(records))) == 1  # one row: ERM
