"""Optional wandb tracking: one run per job, and never a reason for a job to fail."""

from __future__ import annotations

import socket
import sys
import types

import pytest

from sage_bench.config import load_job
from sage_bench.errors import ConfigError
from sage_bench.records import read_records
from sage_bench.run import run_job, tracking

SHORT = ["steps=12", "checkpoint_freq=5", "progress=false", "hparams.batch_size=16"]


class FakeRun:
    def __init__(self, calls: dict, **kwargs):
        self.calls = calls
        self.id = kwargs["id"]
        calls["init"] = kwargs
        calls["log"] = []

    def log(self, metrics, step):
        if self.calls.get("fail_log"):
            raise RuntimeError("server said no")
        self.calls["log"].append((step, metrics))

    def finish(self, exit_code=0):
        self.calls["finish"] = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in ``wandb`` module that records what the job sends it."""
    calls: dict = {}
    module = types.ModuleType("wandb")

    def init(**kwargs):
        if calls.get("fail_init"):
            raise RuntimeError("no network")
        return FakeRun(calls, **kwargs)

    module.init = init
    module.Settings = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_one_run_per_job_with_config_and_every_record(tmp_path, fake_wandb):
    spec = load_job(
        [
            *SHORT,
            f"output_dir={tmp_path}",
            "wandb.mode=offline",
            "wandb.group=digits",
            "wandb.project=p",
        ]
    )
    job_dir = run_job(spec)
    init = fake_wandb["init"]
    assert (init["mode"], init["group"], init["project"]) == ("offline", "digits", "p")
    assert init["dir"] == str(job_dir) and init["resume"] == "allow"
    assert init["config"]["job_id"] == spec.job_id and init["config"]["hparams"] == spec.hparams
    records = read_records(job_dir)
    assert [step for step, _ in fake_wandb["log"]] == [r["step"] for r in records] == [0, 5, 10, 11]
    for (_, metrics), record in zip(fake_wandb["log"], records, strict=True):
        assert metrics["env0_out_acc"] == record["env0_out_acc"] and "args" not in metrics
    assert fake_wandb["finish"] == 0
    # the id follows the folder: a resumed job continues its run, another sweep gets another
    assert (
        init["id"]
        == tracking.run_id(job_dir)
        != tracking.run_id(tmp_path / "elsewhere" / spec.job_id)
    )


@pytest.mark.parametrize("failure", ["fail_init", "fail_log"])
def test_a_wandb_failure_never_fails_the_job(tmp_path, fake_wandb, failure):
    fake_wandb[failure] = True
    spec = load_job([*SHORT, f"output_dir={tmp_path}", "wandb.mode=online"])
    job_dir = run_job(spec)
    assert (job_dir / "done").exists() and len(read_records(job_dir)) == 4
    assert "tracking stops, training goes on" in (job_dir / "out.txt").read_text()


def test_wandb_not_installed_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    job_dir = run_job(load_job([*SHORT, f"output_dir={tmp_path}", "wandb.mode=offline"]))
    assert (job_dir / "done").exists()
    assert "pip install 'sage-bench[wandb]'" in (job_dir / "out.txt").read_text()


def test_off_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    job_dir = run_job(load_job([*SHORT, f"output_dir={tmp_path}"]))
    assert "wandb" not in (job_dir / "out.txt").read_text()


def test_auto_mode_is_offline_without_a_key_or_a_server(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert tracking.resolve_mode("auto") == "offline"  # a server, but no key
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        assert tracking.resolve_mode("auto") == "online"
    # the server is gone: the key alone is not enough
    assert tracking.resolve_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login user password secret\n")
    (tmp_path / ".netrc").chmod(0o600)  # as `wandb login` writes it
    monkeypatch.delenv("WANDB_API_KEY")
    assert tracking.has_api_key()
    assert tracking.resolve_mode("offline") == "offline"


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="wandb.mode.*valid choices: off, auto, offline, online"):
        load_job(["wandb.mode=sometimes"])


def test_real_wandb_offline_run_is_written_in_the_job_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    job_dir = run_job(load_job([*SHORT, f"output_dir={tmp_path}", "wandb.mode=offline"]))
    assert (job_dir / "done").exists()
    runs = list((job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
