"""Multi-task jobs through the configuration, the runner and its checkpoints: every registered
multi-task row trains from ``sage-bench train``; a stopped job resumes to the same records."""

from __future__ import annotations

import itertools
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from sage_bench.algorithms import MULTI_TASK, algorithms, build_algorithm
from sage_bench.algorithms.multitask import LS
from sage_bench.algorithms.registry import _REGISTRY, register_algorithm
from sage_bench.cli import main
from sage_bench.config import load_job
from sage_bench.data.catalog import MULTITASK_TASKS
from sage_bench.data.nyuv2 import NYUv2
from sage_bench.errors import ConfigError
from sage_bench.hparams import HParamError
from sage_bench.mtl.tasks import metric_suffixes
from sage_bench.records import MEASUREMENT_KEYS, read_records
from sage_bench.run import checkpoint as ckpt
from sage_bench.run import run_job
from tests.test_mtl_data import make_npy_tree

TINY = ["dataset=DigitScenes", "epochs=2", "dataset.train_scenes=8", "dataset.val_scenes=16", "progress=false"]  # every class in val


def metric_keys(dataset: str) -> list[str]:
    return [f"test_{n}_{s}" for n, kind in MULTITASK_TASKS[dataset] for s in metric_suffixes(kind)]


def comparable(job_dir: Path) -> list[dict]:
    """The records without what measures the machine or names the folder."""
    out = []
    for record in read_records(job_dir):
        record = {k: v for k, v in record.items() if k not in MEASUREMENT_KEYS}
        record["args"] = {k: v for k, v in record["args"].items() if k != "output_dir"}
        out.append(record)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(algorithms(MULTI_TASK)))
def test_every_multitask_row_trains_on_digit_scenes_from_the_cli(tmp_path, capsys, name):
    assert main(["train", *TINY, f"algorithm={name}", f"output_dir={tmp_path}"]) == 0
    (job_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (job_dir / "done").exists() and not (job_dir / "checkpoint.pt").exists()
    records = read_records(job_dir)
    assert [(r["epoch"], r["step"]) for r in records] == [(0, 0), (1, 1)]  # 8 scenes: one batch an epoch
    for record in records:
        assert record["args"]["task"] == "multi_task" and record["args"]["algorithm"] == name
        assert all(math.isfinite(record[k]) for k in metric_keys("DigitScenes")), record
        assert all(f"test_{t}_loss" in record for t in ("seg", "depth", "normal"))
        assert math.isfinite(record["loss"]) and all(f"loss_{t}" in record for t in ("seg", "depth", "normal"))
        assert "delta_m" not in record  # DigitScenes has no published base
    assert records[0]["lr"] == records[1]["lr"] == 5e-3
    assert records[0]["loss"] != records[1]["loss"]  # it trained


def test_the_job_knows_its_task_from_the_data_set(tmp_path):
    spec = load_job(["dataset=DigitScenes", "algorithm=SAGE-FairGrad", "trial_seed=2", f"output_dir={tmp_path}"])
    assert spec.task == "multi_task" and spec.seed == 2  # the lineage's seeds are the trial seeds
    assert (spec.settings.epochs, spec.settings.lr_step_epochs, spec.settings.lr_gamma) == (2, 100, 0.5)
    assert spec.backbone == "mtan" and spec.backbone_options == {"width": "narrow"}
    assert spec.hparams["batch_size"] == 8 and spec.hparams["rho"] == 1e-4 and "data_augmentation" not in spec.hparams
    args = spec.record_args()
    assert args["task"] == "multi_task" and "test_envs" not in args and "steps" not in args
    identity = spec.identity()
    assert identity["task"] == "multi_task" and identity["epochs"] == 2
    assert load_job(["dataset=DigitScenes", "algorithm=SAGE-FairGrad", "trial_seed=2", "epochs=3"]).job_id != spec.job_id
    # auto precision of a multi-task row: float32, TF32 off, on any device
    assert spec.resolved_precision_on("cuda").describe() == {"train": "float32", "eval": "float32", "polar": "bfloat16", "tf32": False}
    explicit = load_job(["dataset=DigitScenes", "algorithm=SAGE-FairGrad", "trial_seed=2", "precision.train=fp32",
                         "precision.eval=fp32", "tf32=false", f"output_dir={tmp_path}"])  # fmt: skip
    assert explicit.job_id == spec.job_id  # what auto gives anyway
    nyu = load_job(["dataset=NYUv2", "algorithm=LS"])
    assert nyu.hparams["data_augmentation"] is True and nyu.backbone_options == {"width": "paper"}
    assert (nyu.settings.epochs, nyu.hparams["batch_size"], nyu.hparams["lr"]) == (200, 2, 1e-4)


def test_the_paper_preset(tmp_path):
    for dataset, batch in (("NYUv2", 2), ("Cityscapes", 8)):
        spec = load_job(["experiment=paper_mtl", f"dataset={dataset}", "algorithm=SAGE-FairGrad"])
        assert (spec.settings.epochs, spec.settings.lr_step_epochs, spec.settings.lr_gamma) == (200, 100, 0.5)
        assert (spec.hparams["lr"], spec.hparams["batch_size"], spec.hparams["weight_decay"]) == (1e-4, batch, 0.0)
        assert spec.optimizer == "adam" and spec.backbone_options == {"width": "paper"}
        assert (spec.hparams["rho"], spec.hparams["gamma"]) == (1e-4, 1e-5)
    with pytest.raises(ConfigError, match="experiment=paper_mtl is set for the data sets NYUv2, Cityscapes"):
        load_job(["experiment=paper_mtl", "dataset=DigitScenes", "algorithm=LS"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["dataset=DigitScenes", "algorithm=ERM"],
         r"algorithm=ERM is a domain-generalization algorithm and dataset=DigitScenes a multi-task data set; "
         r"algorithms for DigitScenes: STL, LS, MGDA, FairGrad, .*SAGE-SAMO-FairGrad.* \(ERM runs on RotatedDigits"),
        (["dataset=RotatedDigits", "algorithm=SAGE-LS"],
         r"algorithm=SAGE-LS is a multi-task algorithm and dataset=RotatedDigits a domain-generalization data set; "
         r"algorithms for RotatedDigits: .*ERM.*SAGE \(SAGE-LS runs on DigitScenes, DigitScenes2, NYUv2, Cityscapes\)"),
        (["dataset=DigitScenes", "algorithm=LS", "steps=10"], "steps=10 does not apply to DigitScenes.*epochs=N"),
        (["dataset=DigitScenes", "algorithm=LS", "test_envs=[1]"], "multi-task data sets have no environments"),
        (["dataset=DigitScenes", "algorithm=LS", "eval_batch_size=4"], "evaluate with the training batch size"),
        (["dataset=RotatedDigits", "algorithm=ERM", "epochs=3"], "epochs=3 does not apply to RotatedDigits.*steps=N"),
        (["dataset=RotatedDigits", "algorithm=ERM", "lr_gamma=0.1"], "lr_gamma=0.1 does not apply"),
        (["dataset=DigitScenes", "algorithm=LS", "backbone=digits_cnn"], "takes backbone=mtan"),
        (["dataset=RotatedDigits", "algorithm=ERM", "backbone=mtan"], "network of the multi-task data sets"),
        (["dataset=DigitScenes", "algorithm=LS", "backbone.width=wide"], "valid choices: paper, narrow"),
        (["dataset=DigitScenes", "algorithm=LS", "dataset.train_scenes=0"], r"train_scenes must be an integer in \[1, 1024\]"),
        (["dataset=DigitScenes", "algorithm=LS", "+dataset.scenes=3"], "valid options: scene_seed, train_scenes, val_scenes"),
        (["dataset=DigitScenes", "algorithm=LS", "epochs=0"], "'epochs': must be >= 1"),
        (["dataset=DigitScenes", "algorithm=LS", "lr_gamma=1.5"], r"'lr_gamma': must be in \(0, 1\]"),
        (["dataset=DigitScenes2", "algorithm=STL", "hparams.task=normal"], "valid choices: seg, depth"),
    ],
)  # fmt: skip
def test_what_does_not_fit_a_multitask_job_is_refused(tmp_path, capsys, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_job([*overrides, f"output_dir={tmp_path}"])
    assert main(["train", *overrides, f"output_dir={tmp_path}", "--dry-run"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_builders_refuse_the_other_kind():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(HParamError, match="LS is a multi-task algorithm: build it with build_multitask_algorithm"):
        build_algorithm("LS", net, torch.optim.SGD(net.parameters(), 0.1))


# -- stop and resume --------------------------------------------------------------------------

# 3 steps per epoch; the learning rate halves every epoch; SAGE's noise large enough to matter
RESUME = [
    "dataset=DigitScenes", "algorithm=SAGE-FairGrad", "epochs=3", "dataset.train_scenes=24", "dataset.val_scenes=16",
    "lr_step_epochs=1", "lr_gamma=0.5", "hparams.gamma=0.01", "progress=false",
]  # fmt: skip


def signal_at_update(monkeypatch, cls: type, call: int, signum: int = signal.SIGTERM) -> None:
    """Make the process receive ``signum`` during the ``call``-th training step of ``cls``."""
    original = cls.update
    calls = itertools.count(1)

    def update(self, x, targets):
        if next(calls) == call:
            os.kill(os.getpid(), signum)
        return original(self, x, targets)

    monkeypatch.setattr(cls, "update", update)


@pytest.fixture(scope="module")
def resume_reference(tmp_path_factory) -> list[dict]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return comparable(run_job(load_job([*RESUME, f"output_dir={tmp_path_factory.mktemp('ref')}"]), console=False))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
@pytest.mark.parametrize("call, next_step, kept", [(5, 5, 1), (6, 6, 2)], ids=["mid-epoch", "epoch-end"])
def test_sigterm_then_resume_gives_the_records_of_an_uninterrupted_run(
    tmp_path, monkeypatch, resume_reference, call, next_step, kept
):
    from sage_bench.algorithms.sage_mtl import SAGEMultiTask

    assert [r["lr"] for r in resume_reference] == [5e-3, 2.5e-3, 1.25e-3]
    spec = load_job([*RESUME, f"output_dir={tmp_path}"])
    signal_at_update(monkeypatch, SAGEMultiTask, call)
    with pytest.raises(ckpt.JobInterrupted) as stopped:
        run_job(spec, console=False)
    assert stopped.value.next_step == next_step  # step 4 is mid-epoch 1; step 5 ends it
    assert [r["epoch"] for r in read_records(spec.job_dir)] == list(range(kept))
    assert (spec.job_dir / ckpt.CHECKPOINT_FILE).exists() and not (spec.job_dir / "err.txt").exists()
    monkeypatch.undo()
    run_job(spec, console=False)
    assert comparable(spec.job_dir) == resume_reference
    assert f"resumed from the checkpoint before step {next_step}" in (spec.job_dir / "out.txt").read_text()


@pytest.mark.slow
def test_an_augmented_data_set_with_loader_workers_resumes_exactly(tmp_path, monkeypatch):
    """NYU-v2's layout (a tiny generated tree at 32 x 32) with its augmentation and two loader
    workers: a job stopped mid-epoch writes what an uninterrupted one writes."""
    monkeypatch.setattr(NYUv2, "RESOLUTION", (32, 32))
    make_npy_tree(tmp_path / "data" / "nyuv2", NYUv2, {"train": 12, "val": 4}, resolution=(32, 32))
    common = ["dataset=NYUv2", "algorithm=LS", "epochs=2", "backbone.width=narrow", "hparams.batch_size=4",
              "num_workers=2", "progress=false", f"data_dir={tmp_path / 'data'}"]  # fmt: skip
    reference = comparable(run_job(load_job([*common, f"output_dir={tmp_path / 'a'}"]), console=False))
    assert len(reference) == 2 and all(math.isfinite(r["delta_m"]) for r in reference)
    spec = load_job([*common, f"output_dir={tmp_path / 'b'}"])
    with monkeypatch.context() as patch:
        signal_at_update(patch, LS, 2)  # step 1, mid-epoch 0
        with pytest.raises(ckpt.JobInterrupted):
            run_job(spec, console=False)
    run_job(spec, console=False)
    assert comparable(spec.job_dir) == reference


# -- a row's own per-epoch hook and state ------------------------------------------------------


class _EpochCounter(LS):
    """LS that counts epochs in its own state (``end_epoch``, ``get_extra_state``)."""

    def __init__(self, network, optimizer, hparams, loss_fn):
        super().__init__(network, optimizer, hparams, loss_fn)
        self.ended: list[int] = []

    def update(self, x, targets):
        return {**super().update(x, targets), "epochs_ended": float(len(self.ended))}

    def end_epoch(self, epoch):
        self.ended.append(epoch)

    def get_extra_state(self):
        return {**super().get_extra_state(), "ended": list(self.ended)}

    def set_extra_state(self, state):
        super().set_extra_state(state)
        self.ended = list(state["ended"])


@pytest.fixture
def epoch_counter():
    register_algorithm("EpochCounterForTest", space=lambda context: {}, task=MULTI_TASK)(_EpochCounter)
    try:
        yield
    finally:
        del _REGISTRY["EpochCounterForTest"]


@pytest.mark.slow
def test_a_rows_epoch_hook_and_state_survive_a_resume(tmp_path, monkeypatch, epoch_counter):
    common = ["dataset=DigitScenes", "algorithm=EpochCounterForTest", "epochs=3", "dataset.train_scenes=16",
              "dataset.val_scenes=8", "progress=false"]  # fmt: skip
    spec = load_job([*common, f"output_dir={tmp_path}"])
    signal_at_update(monkeypatch, _EpochCounter, 3)  # step 2, the first of epoch 1
    with pytest.raises(ckpt.JobInterrupted):
        run_job(spec, console=False)
    monkeypatch.undo()
    run_job(spec, console=False)
    records = read_records(spec.job_dir)
    # epoch e's steps saw e ended epochs: the hook ran after each epoch, its count was checkpointed
    assert [r["epochs_ended"] for r in records] == [0.0, 1.0, 2.0]


def test_records_are_json_with_nan_where_the_lineage_gives_nan(tmp_path):
    from sage_bench.records import append_record

    append_record(tmp_path, {"epoch": 0, "test_seg_miou": float("nan")})
    (record,) = read_records(tmp_path)
    assert math.isnan(record["test_seg_miou"]) and "NaN" in (tmp_path / "results.jsonl").read_text()
    with pytest.raises(ValueError, match="non-finite accuracy"):
        append_record(tmp_path, {"env0_in_acc": float("nan")})


def test_the_keys_of_one_kind_of_job_default_to_what_the_other_kind_needs():
    from omegaconf import OmegaConf

    from sage_bench.config import compose_config
    from sage_bench.config.dg import DG_ONLY
    from sage_bench.config.mtl import MULTITASK_ONLY

    cfg = compose_config([])
    for key, (default, _) in {**DG_ONLY, **MULTITASK_ONLY}.items():
        value = cfg[key]
        assert (OmegaConf.to_container(value) if OmegaConf.is_config(value) else value) == default, key
