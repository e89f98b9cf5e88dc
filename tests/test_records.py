"""The on-disk record format."""

from __future__ import annotations

import json

import pytest

from sage_bench.records import (
    append_record,
    is_done,
    iter_records,
    job_hash,
    mark_done,
    read_records,
)


def test_job_hash_is_md5_of_sorted_json():
    import hashlib

    args = {"b": 1, "a": [1, 2]}
    assert job_hash(args) == hashlib.md5(json.dumps(args, sort_keys=True).encode()).hexdigest()
    assert job_hash({"a": [1, 2], "b": 1}) == job_hash(args)


def test_append_and_read(tmp_path):
    append_record(tmp_path, {"step": 0, "env0_in_acc": 0.5})
    append_record(tmp_path, {"step": 1, "env0_in_acc": 0.75})
    assert [r["step"] for r in read_records(tmp_path)] == [0, 1]
    assert not is_done(tmp_path)
    mark_done(tmp_path)
    assert is_done(tmp_path) and (tmp_path / "done").read_text() == "done"


def test_non_finite_accuracy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        append_record(tmp_path, {"step": 0, "env0_in_acc": float("nan")})


def test_truncated_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"step": 0}\n{"step": 1, "env0_in\n[1, 2]\n{"step": 2}\n')
    bad = []
    with pytest.warns(UserWarning) as caught:
        records = list(iter_records(path, bad))
    messages = [str(w.message) for w in caught]
    assert any("results.jsonl:2" in m for m in messages)
    assert any("results.jsonl:3" in m for m in messages)
    assert [r["step"] for r in records] == [0, 2]
    assert [b.line_number for b in bad] == [2, 3]
