"""Multi-task defaults that follow their sources, ranges refused up front, and job identities that
change exactly where the computation changed."""

from __future__ import annotations

import re

import pytest

from sage_bench.cli import main
from sage_bench.config import ConfigError, default_hparams, load_job
from sage_bench.sweep.plan import Sweep

PAPER = ["experiment=paper_mtl"]


@pytest.mark.parametrize("row", ["SAMO-LS", "SAMO-MGDA", "SAMO-FairGrad", "SAGE-SAMO-LS"])
def test_samo_follows_the_trainer_of_its_data_set(row):
    city = load_job([*PAPER, "dataset=Cityscapes", f"algorithm={row}"]).hparams
    assert (city["zo_mix"], city["accumulate_previous"]) == ("layerwise", True)  # Cityscapes' trainer
    for dataset in ("NYUv2", "DigitScenes", "DigitScenes2"):
        other = default_hparams(row, dataset, "mtan")
        assert (other["zo_mix"], other["accumulate_previous"]) == ("raw", False), dataset  # NYU-v2's
    overridden = load_job([*PAPER, "dataset=Cityscapes", f"algorithm={row}", "hparams.zo_mix=raw",
                           "hparams.accumulate_previous=false"]).hparams  # fmt: skip
    assert (overridden["zo_mix"], overridden["accumulate_previous"]) == ("raw", False)


def test_the_cityscapes_defaults_show_in_a_dry_run(tmp_path, capsys):
    assert main(["train", *PAPER, "dataset=Cityscapes", "algorithm=SAMO-LS", f"output_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hparams.zo_mix: layerwise" in out and "hparams.accumulate_previous: True" in out
    assert main(["train", *PAPER, "dataset=Cityscapes", "algorithm=SAMO-LS", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "#   zo_mix: layerwise" in out and "#   accumulate_previous: True" in out
    assert main(["reproduce", "table2", "--dry-run", "--output-dir", str(tmp_path / "t2"), "--algorithms", "SAMO-LS"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^Cityscapes\s+SAMO-LS\s+.*zo_mix=layerwise accumulate_previous=True$", out, re.M)
    assert re.search(r"^NYUv2\s+SAMO-LS\s+.*zo_mix=raw accumulate_previous=False$", out, re.M)


def test_sage_x_descends_as_x_and_carries_no_zeroth_order_knobs():
    for row in ("SAGE-LS", "SAGE-MGDA", "SAGE-FairGrad"):
        hparams = default_hparams(row, "Cityscapes", "mtan")
        assert hparams["descent"] == "base"
        assert not {"ascent", "beta", "zo_eps", "zo_mix", "accumulate_previous"} & set(hparams)
    samo = default_hparams("SAGE-SAMO-LS", "NYUv2", "mtan")
    assert samo["descent"] == "samo" and samo["ascent"] == "samo" and samo["beta"] == 0.5


OUT_OF_RANGE = [
    ("SAGE-LS", "hparams.rho=-1", r"hparams.rho=-1.0 is out of range: must be in \[0, inf\)"),
    ("SAGE-LS", "hparams.gamma=-1", r"hparams.gamma=-1.0 is out of range: must be in \[0, inf\)"),
    ("SAGE-LS", "hparams.ns_steps=0", r"hparams.ns_steps=0 is out of range: must be in \[1, inf\)"),
    ("SAGE-SAMO-MGDA", "hparams.beta=1.5", r"hparams.beta=1.5 is out of range: must be in \[0, 1\]"),
    ("SAGE-SAMO-MGDA", "hparams.zo_eps=0", r"hparams.zo_eps=0.0 is out of range: must be in \(0, inf\)"),
    ("SAMO-LS", "hparams.rho=-0.001", r"hparams.rho=-0.001 is out of range"),
    ("SAMO-LS", "hparams.beta=-0.1", r"hparams.beta=-0.1 is out of range"),
    ("FairGrad", "hparams.alpha=-1", r"hparams.alpha=-1.0 is out of range: must be in \(0, inf\)"),
    ("SAGE-FairGrad", "hparams.alpha=0", r"hparams.alpha=0.0 is out of range"),
    ("MoCo", "hparams.beta=5", r"hparams.beta=5.0 is out of range: must be in \(0, 1\]"),
]  # fmt: skip


@pytest.mark.parametrize("row, override, message", OUT_OF_RANGE, ids=[f"{r} {o}" for r, o, _ in OUT_OF_RANGE])
def test_out_of_range_values_stop_a_job_and_a_sweep_before_anything_is_made(tmp_path, row, override, message):
    with pytest.raises(ConfigError, match=message):
        load_job(["dataset=DigitScenes", f"algorithm={row}", override, f"output_dir={tmp_path}"])
    name, value = override.split("=")
    sweep = Sweep(tmp_path / "sweep", ["DigitScenes"], [row], overrides=[f"{name}={value},{value}"],
                  hparams_seeds=[0], trial_seeds=[0])  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        sweep.jobs()
    assert not any(tmp_path.iterdir())


def test_the_command_line_exits_with_2_on_an_out_of_range_value(tmp_path, capsys):
    command = ["train", "dataset=DigitScenes", "algorithm=SAGE-LS", "hparams.rho=-1", "hparams.gamma=-1"]
    assert main([*command, f"output_dir={tmp_path}"]) == 2
    assert "hparams.rho=-1.0 is out of range" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# Folder names of multi-task jobs before SAGE-X's descent, SAMO's Cityscapes defaults and the
# DigitScenes scenes changed: jobs whose computation did not change keep them.
KEPT = {
    "NYUv2 LS": ([*PAPER, "dataset=NYUv2", "algorithm=LS"], "3c597c5fc9cac99208a91268d16154f1"),
    "NYUv2 SAMO-LS": ([*PAPER, "dataset=NYUv2", "algorithm=SAMO-LS"], "6b3ea75b46a30469086186e2574711ca"),
    "NYUv2 SAGE-SAMO-MGDA": (
        [*PAPER, "dataset=NYUv2", "algorithm=SAGE-SAMO-MGDA", "trial_seed=1"], "7da281fb522d798b70652d0dbc1c4f07"
    ),
    "Cityscapes FairGrad": ([*PAPER, "dataset=Cityscapes", "algorithm=FairGrad"], "0a4d687d4d3e2dc4e65a4daa0fae4930"),
    # SAGE-LS now descends as LS by default: the folder of the job that asked for that before
    "NYUv2 SAGE-LS": ([*PAPER, "dataset=NYUv2", "algorithm=SAGE-LS"], "0182ffd6fb4e832221441b517c11c260"),
}
CHANGED = {
    "NYUv2 SAGE-LS (it descended as SAMO-LS)": ([*PAPER, "dataset=NYUv2", "algorithm=SAGE-LS"], "7a2bf4f1a310aca7a5bcd5a8f0f99c06"),
    "Cityscapes SAMO-LS (NYU-v2's trainer)": (
        [*PAPER, "dataset=Cityscapes", "algorithm=SAMO-LS"], "a12743d75e511b98a1901302cc37022d"
    ),
    "DigitScenes LS (the old scenes)": (["dataset=DigitScenes", "algorithm=LS"], "36944e6faf0fa0e9c45c84a7fbafe7e2"),
}


@pytest.mark.parametrize("name", list(KEPT))
def test_jobs_whose_computation_did_not_change_keep_their_folder(name):
    overrides, expected = KEPT[name]
    assert load_job(overrides).job_id == expected


@pytest.mark.parametrize("name", list(CHANGED))
def test_jobs_whose_computation_changed_get_a_new_folder(name):
    overrides, former = CHANGED[name]
    spec = load_job(overrides)
    assert spec.job_id != former


def test_digit_scenes_jobs_record_the_version_of_their_scenes():
    spec = load_job(["dataset=DigitScenes", "algorithm=LS"])
    assert spec.record_args()["data_version"] == 2 and spec.identity()["dataset"]["version"] == 2
    assert "data_version" not in load_job([*PAPER, "dataset=NYUv2", "algorithm=LS"]).record_args()
