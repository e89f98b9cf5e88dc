"""Table 2 from multi-task records: the lineage's averaging (last 10 epochs of the shortest run,
then seeds, then Delta_m of the averages) with the spread across seeds, unfinished runs and runs
on older generated data left out, STL assembled from its per-task runs, the paper's printed and
recomputed Delta_m, and all of it without torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sage_bench.cli import main
from sage_bench.collect import find_runs
from sage_bench.collect.mtl import epoch_windows, paper_table2, render, table2_frame
from sage_bench.data.catalog import DATA_VERSIONS, MULTITASK_TASKS
from sage_bench.mtl.delta_m import DELTA_M_BASES
from sage_bench.mtl.tasks import metric_suffixes

NYU = DELTA_M_BASES["NYUv2"]


def keys(dataset: str) -> list[str]:
    return [f"{n}_{s}" for n, kind in MULTITASK_TASKS[dataset] for s in metric_suffixes(kind)]


def base_metrics(dataset: str) -> dict[str, float]:
    if dataset in DELTA_M_BASES:
        return dict(zip(DELTA_M_BASES[dataset].keys, DELTA_M_BASES[dataset].base, strict=True))
    return {k: 0.5 for k in keys(dataset)}


def write_run(root: Path, dataset: str, algorithm: str, trial: int, epochs: int, value, hparams=None, overrides=None,
              done: bool = True, planned: int | None = None, data_version: int | None = None) -> Path:  # fmt: skip
    """A run folder whose record of epoch ``e < epochs`` has ``test_<k> = value(k, e)``, planned
    for ``planned`` epochs (default: ``epochs``), on data of ``data_version`` (default: current)."""
    planned = epochs if planned is None else planned
    job_id = f"{dataset}-{algorithm}-{trial}-{planned}-{json.dumps(overrides, sort_keys=True)}"
    folder = root / job_id.replace(" ", "").replace('"', "").replace(":", "=")
    folder.mkdir(parents=True)
    args = {"dataset": dataset, "algorithm": algorithm, "trial_seed": trial, "hparams_seed": 0, "seed": trial,
            "task": "multi_task", "job_id": job_id, "output_dir": str(folder), "epochs": planned, "hparams": overrides}  # fmt: skip
    version = DATA_VERSIONS.get(dataset) if data_version is None else data_version
    if version is not None:
        args["data_version"] = version
    lines = []
    for epoch in range(epochs):
        record = {"epoch": epoch, "step": epoch, "loss": 1.0, "args": args, "hparams": {**(hparams or {}), **(overrides or {})}}
        record.update({f"test_{k}": value(k, epoch) for k in keys(dataset)})
        lines.append(json.dumps(record))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")
    if done:
        (folder / "done").write_text("done")
    return folder


def independent_delta_m(values: dict[str, float]) -> float:
    """Delta_m as the lineage's ``delta_fn`` writes it, from NYU's base."""
    terms = []
    for key, base, higher in zip(NYU.keys, NYU.base, NYU.higher_is_better, strict=True):
        sign = 1 if higher else 0
        terms.append((-1) ** sign * (values[key] - base) / base)
    return 100 * sum(terms) / len(terms)


def test_each_run_is_averaged_over_the_last_ten_epochs_then_over_seeds(tmp_path):
    base = base_metrics("NYUv2")
    for trial in (0, 1):
        write_run(tmp_path, "NYUv2", "LS", trial, 12, lambda k, e, t=trial: base[k] * (1 + 0.01 * e + 0.1 * t))
    records = find_runs(tmp_path).records
    assert windows(records) == {("NYUv2", 12): (2, 12)}
    (row,) = table2_frame(records).to_dict("records")
    # epochs 2..11 average e = 6.5; seeds 0 and 1 average t = 0.5
    expected = {k: base[k] * (1 + 0.065 + 0.05) for k in keys("NYUv2")}
    assert all(row[k] == pytest.approx(v, rel=1e-12) for k, v in expected.items())
    # the two seeds' means differ by 0.1 base: a standard deviation (ddof 1) of 0.1 base / sqrt(2)
    assert all(row[f"{k}_std"] == pytest.approx(0.1 * base[k] / math.sqrt(2), rel=1e-9) for k in keys("NYUv2"))
    seeds = [independent_delta_m({k: base[k] * (1 + 0.065 + 0.1 * t) for k in keys("NYUv2")}) for t in (0, 1)]
    assert row["delta_m_std"] == pytest.approx(np.std(seeds, ddof=1), rel=1e-9)
    assert row["runs"] == 2 and row["epochs"] == "2-11" and row["delta_m_base"] == "published"
    assert row["delta_m"] == pytest.approx(independent_delta_m(expected), rel=1e-12)
    assert row["delta_m"] == pytest.approx(100 * 0.115 * (4 - 5) / 9, rel=1e-9)  # 4 lower-, 5 higher-is-better


def windows(records, **options) -> dict:
    return {group: (w.start, w.stop) for group, w in epoch_windows(records, **options).items()}


def test_an_unfinished_run_is_left_out_with_a_warning_unless_asked_for(tmp_path):
    base = base_metrics("NYUv2")
    write_run(tmp_path, "NYUv2", "LS", 0, 15, lambda k, e: base[k] * (1 + 0.01 * e))
    unfinished = write_run(tmp_path, "NYUv2", "SAGE-LS", 0, 12, lambda k, e: base[k] * (1 - 0.01 * e), planned=15, done=False)
    records = find_runs(tmp_path).records
    with pytest.warns(UserWarning, match=f"left out {unfinished} \\(SAGE-LS, seed 0\\): unfinished, 12 of 15 epochs"):
        frame = table2_frame(records)
    (row,) = frame.to_dict("records")  # the finished row keeps its own last 10 epochs
    assert row["algorithm"] == "LS" and row["epochs"] == "5-14"
    assert row["seg_miou"] == pytest.approx(base["seg_miou"] * 1.095)

    # included: CAGrad's plot.py rule within the group, and the note names the run that sets it
    assert windows(records, include_unfinished=True) == {("NYUv2", 15): (2, 12)}
    rows = {r["algorithm"]: r for r in table2_frame(records, include_unfinished=True).to_dict("records")}
    assert rows["LS"]["seg_miou"] == pytest.approx(base["seg_miou"] * 1.065)
    assert rows["SAGE-LS"]["seg_miou"] == pytest.approx(base["seg_miou"] * 0.935)
    assert list(rows) == ["LS", "SAGE-LS"]  # Table 2's order
    text = render(records, include_unfinished=True)
    assert f"epochs 2-11 (the last 10 of the shortest run, {unfinished})" in text


def test_runs_planned_for_other_epochs_are_rows_with_their_own_window(tmp_path):
    base = base_metrics("NYUv2")
    short = write_run(tmp_path, "NYUv2", "LS", 0, 12, lambda k, e: base[k] * (1 + 0.01 * e))
    long = write_run(tmp_path, "NYUv2", "LS", 0, 15, lambda k, e: base[k] * (1 + 0.01 * e))
    records = find_runs(tmp_path).records
    assert windows(records) == {("NYUv2", 12): (2, 12), ("NYUv2", 15): (5, 15)}
    rows = {r["algorithm"]: r for r in table2_frame(records).to_dict("records")}
    assert rows["LS (epochs=12)"]["seg_miou"] == pytest.approx(base["seg_miou"] * 1.065)
    assert rows["LS (epochs=15)"]["seg_miou"] == pytest.approx(base["seg_miou"] * 1.095)
    text = render(records)
    assert str(short) in text and str(long) in text


def test_the_epoch_window_is_a_choice_and_the_note_names_its_length(tmp_path, capsys):
    base = base_metrics("NYUv2")
    write_run(tmp_path, "NYUv2", "LS", 0, 4, lambda k, e: base[k] * (1 + 0.01 * e))
    records = find_runs(tmp_path).records
    assert windows(records) == {("NYUv2", 4): (0, 4)}  # shorter than 10: all four
    assert windows(records, last=2) == {("NYUv2", 4): (2, 4)}
    (row,) = table2_frame(records, last=2).to_dict("records")
    assert row["epochs"] == "2-3" and row["seg_miou"] == pytest.approx(base["seg_miou"] * 1.025)
    assert "epochs 2-3 (the last 2 of the shortest run" in render(records, last=2)
    assert "epochs 0-3 (the last 4 of the shortest run" in render(records)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="at least 1"):
            table2_frame(records, last=bad)

    assert main(["collect", str(tmp_path), "--last-epochs", "1"]) == 0
    assert "epoch 3 (the last 1 of the shortest run" in capsys.readouterr().out
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exit_:
            main(["collect", str(tmp_path), "--last-epochs", bad])
        assert exit_.value.code == 2
        assert "--last-epochs: must be a whole number of epochs, at least 1" in capsys.readouterr().err


def test_the_collect_commands_default_window_is_the_lineages():
    import argparse

    from sage_bench.collect.mtl import LAST_EPOCHS
    from sage_bench.commands import collect

    parser = argparse.ArgumentParser()
    collect.add_parser(parser.add_subparsers())
    assert parser.parse_args(["collect", "runs"]).last_epochs == LAST_EPOCHS


def test_runs_on_older_generated_data_are_left_out(tmp_path):
    old = write_run(tmp_path, "DigitScenes", "LS", 0, 2, lambda k, e: 0.5, data_version=1)
    write_run(tmp_path, "DigitScenes", "LS", 1, 2, lambda k, e: 0.7)
    with pytest.warns(UserWarning, match=f"left out {old}: DigitScenes data of version 1, not the current 2"):
        (row,) = table2_frame(find_runs(tmp_path).records).to_dict("records")
    assert row["runs"] == 1 and row["seg_miou"] == pytest.approx(0.7)


def test_the_collect_command_includes_unfinished_runs_on_request(tmp_path, capsys):
    base = base_metrics("NYUv2")
    write_run(tmp_path, "NYUv2", "LS", 0, 10, lambda k, e: base[k])
    unfinished = write_run(tmp_path, "NYUv2", "MGDA", 0, 3, lambda k, e: base[k], planned=10, done=False)
    assert main(["collect", str(tmp_path), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "MGDA" not in captured.out and f"left out {unfinished}" in captured.err
    assert main(["collect", str(tmp_path), "--format", "csv", "--include-unfinished"]) == 0
    assert "MGDA" in capsys.readouterr().out


def test_stl_takes_each_tasks_metrics_from_the_run_that_trained_it(tmp_path):
    base = base_metrics("NYUv2")
    for task in ("seg", "depth", "normal"):
        for trial in (0, 1):
            # the task's own metrics at the base (+- 1% by seed), the others far off
            write_run(tmp_path, "NYUv2", "STL", trial, 10,
                      lambda k, e, t=task, s=trial: base[k] * (1 + 0.01 * (2 * s - 1)) if k.startswith(t) else 99.0,
                      hparams={"task": "seg"}, overrides={"task": task})  # fmt: skip
    (row,) = table2_frame(find_runs(tmp_path).records).to_dict("records")
    assert row["algorithm"] == "STL" and row["runs"] == 2
    assert all(row[k] == pytest.approx(base[k]) for k in keys("NYUv2"))
    assert row["delta_m"] == pytest.approx(0.0, abs=1e-9)


def test_runs_that_differ_in_a_setting_are_rows_of_their_own(tmp_path):
    base = base_metrics("NYUv2")
    for rho in (0.001, 0.01):
        write_run(tmp_path, "NYUv2", "SAGE-LS", 0, 10, lambda k, e: base[k], overrides={"rho": rho})
    names = list(table2_frame(find_runs(tmp_path).records)["algorithm"])
    assert names == ["SAGE-LS (hparams.rho=0.001)", "SAGE-LS (hparams.rho=0.01)"]


def test_a_data_set_without_a_published_base_takes_delta_m_against_its_stl_row(tmp_path):
    write_run(tmp_path, "DigitScenes", "LS", 0, 3, lambda k, e: 0.6)
    frame = table2_frame(find_runs(tmp_path).records)
    assert math.isnan(frame["delta_m"][0]) and frame["delta_m_base"][0] == ""
    assert "Delta_m" not in render(find_runs(tmp_path).records)
    for task in ("seg", "depth", "normal"):
        write_run(tmp_path, "DigitScenes", "STL", 0, 3, lambda k, e: 0.5, overrides={"task": task})
    frame = table2_frame(find_runs(tmp_path).records).set_index("algorithm")
    assert frame.loc["STL", "delta_m"] == pytest.approx(0.0)
    # 0.6 against 0.5: +20% on every metric; seg (2) and the shares (3) are better higher
    assert frame.loc["LS", "delta_m"] == pytest.approx(100 * 0.2 * (4 - 5) / 9)
    text = render(find_runs(tmp_path).records)
    assert "against this table's STL row" in text and "Delta_m %" in text


def test_the_paper_rows_print_their_delta_m_and_the_one_their_columns_give(tmp_path):
    paper = paper_table2().set_index(["dataset", "algorithm"])
    sage = paper.loc[("NYUv2", "SAGE-FairGrad")]
    assert sage["delta_m_printed"] == -5.63 and round(sage["delta_m"], 2) == -6.57
    assert abs(paper.loc[("NYUv2", "FairGrad"), "delta_m"] - paper.loc[("NYUv2", "FairGrad"), "delta_m_printed"]) < 0.05
    assert paper.loc[("Cityscapes", "STL"), "delta_m"] == pytest.approx(0.0, abs=1e-12)
    beyond_rounding = paper[(paper["delta_m"] - paper["delta_m_printed"]).abs() > paper["delta_m_rounding"] + 0.005]
    sage_rows = {(d, a) for d in ("NYUv2", "Cityscapes") for a in paper.loc[d].index if a.startswith("SAGE")}
    assert set(beyond_rounding.index) == sage_rows | {("NYUv2", "IMTL-G")}  # as notes/mtl-spec.md finds

    row = paper.loc[("NYUv2", "SAGE-FairGrad")]
    write_run(tmp_path, "NYUv2", "SAGE-FairGrad", 0, 10, lambda k, e: float(row[k]))
    text = render(find_runs(tmp_path).records, compare_paper=True)
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "-6.57" in lines["SAGE-FairGrad (paper)"] and "-5.63" in lines["SAGE-FairGrad (paper)"]
    assert lines["SAGE-FairGrad"].split()[1] == "40.32"  # mIoU in %, as Table 2 prints it
    assert "+0.00" in lines["SAGE-FairGrad (diff)"]
    assert "SAGE-FairGrad -5.63 printed vs -6.57" in text
    csv = render(find_runs(tmp_path).records, "csv", compare_paper=True)
    assert "delta_m_printed" in csv.splitlines()[0] and csv.count(",paper") == len(paper)


def test_nan_metrics_are_x_with_a_warning(tmp_path):
    base = base_metrics("NYUv2")
    write_run(tmp_path, "NYUv2", "LS", 0, 10, lambda k, e: math.nan if k == "seg_miou" and e == 9 else base[k])
    with pytest.warns(UserWarning, match="not finite"):
        text = render(find_runs(tmp_path).records)
    line = next(line for line in text.splitlines() if line.startswith("LS"))
    assert line.split()[1] == "X" and "X: no finite value (LS seg_miou)" in text


def test_bad_multitask_records_are_skipped_with_a_reason(tmp_path):
    folder = write_run(tmp_path, "NYUv2", "LS", 0, 2, lambda k, e: 0.5)
    bad = {"step": 0, "args": {"dataset": "NYUv2", "algorithm": "LS", "trial_seed": 0, "hparams_seed": 0, "task": "multi_task"}}
    with open(folder / "results.jsonl", "a") as f:
        f.write(json.dumps(bad) + "\n")
    with pytest.warns(UserWarning, match="no epoch number"):
        collection = find_runs(tmp_path)
    assert collection.skipped_records == 1 and len(collection.records_of("multi_task")) == 2


def write_dg_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    record = {"step": 0, "args": {"dataset": "PACS", "algorithm": "ERM", "test_envs": [0], "trial_seed": 0, "hparams_seed": 0}}
    record.update({f"env{i}_{s}_acc": 0.5 for i in range(4) for s in ("in", "out")})
    (folder / "results.jsonl").write_text(json.dumps(record) + "\n")


def test_the_collect_command_prints_both_tables_without_torch(tmp_path):
    base = base_metrics("NYUv2")
    write_run(tmp_path / "mtl", "NYUv2", "LS", 0, 10, lambda k, e: base[k])
    write_dg_run(tmp_path / "dg" / "job")
    code = (
        "from sage_bench.cli import main\n"
        f"assert main(['collect', {str(tmp_path)!r}, '--compare-paper', '--format', 'markdown']) == 0\n"
        "import sys; print('TORCH', 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Table 2 layout, dataset: NYUv2" in proc.stdout and "| LS (paper)" in proc.stdout
    assert "Dataset: PACS" in proc.stdout
    assert proc.stdout.strip().endswith("TORCH False")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_csv_and_json_of_both_kinds_at_once_write_one_file_per_kind(tmp_path, capsys, fmt):
    write_run(tmp_path / "runs" / "mtl", "NYUv2", "LS", 0, 2, lambda k, e: 0.5)
    write_dg_run(tmp_path / "runs" / "dg" / "job")
    # to standard output they would be two tables in one stream: the message says how to get both
    assert main(["collect", str(tmp_path / "runs"), "--format", fmt]) == 2
    assert f"give --output FILE.{fmt}, which writes one file per kind" in capsys.readouterr().err
    assert main(["collect", str(tmp_path / "runs"), "--format", fmt, "--output", str(tmp_path / f"table.{fmt}")]) == 0
    dg, mtl = tmp_path / f"table.domain_generalization.{fmt}", tmp_path / f"table.multi_task.{fmt}"
    assert f"wrote {dg}" in capsys.readouterr().err and not (tmp_path / f"table.{fmt}").exists()
    for path, runs in ((dg, "dg"), (mtl, "mtl")):  # each file is what collecting that kind alone writes
        assert main(["collect", str(tmp_path / "runs" / runs), "--format", fmt]) == 0
        assert path.read_text() == capsys.readouterr().out
    assert "selection" in dg.read_text() and "seg_miou" in mtl.read_text()


def test_collect_csv_has_the_lineage_units(tmp_path, capsys):
    base = base_metrics("NYUv2")
    write_run(tmp_path, "NYUv2", "MGDA", 0, 10, lambda k, e: base[k])
    assert main(["collect", str(tmp_path), "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert float(values["seg_miou"]) == pytest.approx(0.383) and float(values["delta_m"]) == pytest.approx(0.0, abs=1e-6)
    assert np.isclose(float(values["normal_angle_mean"]), 25.01)


def test_the_catalog_matches_the_multitask_classes():
    from sage_bench.data import MULTITASK_DATASETS

    assert list(MULTITASK_DATASETS) == list(MULTITASK_TASKS)
    for name, cls in MULTITASK_DATASETS.items():
        assert tuple((t.name, t.kind) for t in cls.TASKS) == MULTITASK_TASKS[name]
