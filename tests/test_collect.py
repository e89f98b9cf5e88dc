"""The collector: DomainBed's model selection on hand-built records whose answers are worked
out here, robust reading, every output format, Table 1 beside the paper's, figures."""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sage_bench.cli import main
from sage_bench.collect import find_runs, render, results_frame, sweep_accs, table1_frame
from sage_bench.collect.loading import mixed_settings
from sage_bench.collect.plots import selected_curves, write_figures
from sage_bench.collect.selection import GroupKey
from sage_bench.collect.tables import pivot

FIVE = ["PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"]


def rec(dataset, algorithm, test_envs, step, in_acc, out_acc, trial=0, hseed=0, overrides=None, hparams=None, **extra):
    """A DomainBed record; ``in_acc``/``out_acc``: per-environment accuracies."""
    r = {"step": step, "args": {
        "dataset": dataset, "algorithm": algorithm, "test_envs": list(test_envs),
        "trial_seed": trial, "hparams_seed": hseed, "hparams": overrides, **extra,
    }, "hparams": hparams or {}}  # fmt: skip
    for i, (a, b) in enumerate(zip(in_acc, out_acc, strict=True)):
        r[f"env{i}_in_acc"] = a
        r[f"env{i}_out_acc"] = b
    return r


def write_run(folder, records, done=True):
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if done:
        (folder / "done").write_text("done")


# ---------------------------------------------------------------- one worked sweep, three methods
#
# Data set "Toy" (3 environments), ERM, test environment 0. Trial 0 has two configurations
# (hparams_seed 0 and 1), each with a run on test env [0] and the leave-one-out runs [0, 1] and
# [0, 2], checkpoints at steps 0 and 1. Trial 1 has one run on [0] with one checkpoint.
#
# trial 0, hparams_seed 0:
#   [0] step 0: test (env0 in) 0.50, training-domain val mean(0.70, 0.80) = 0.75, env0 out 0.60
#   [0] step 1: test 0.55,           val mean(0.60, 0.70) = 0.65,                 env0 out 0.90
#   leave-one-out val: step 0 mean(0.40, 0.40) = 0.40; step 1 mean(0.80, 0.60) = 0.70
#   -> training-domain (0.75, 0.50); leave-one-out (0.70, 0.55); oracle, last step (0.90, 0.55)
# trial 0, hparams_seed 1:
#   [0] step 0: test 0.30, val 0.72, env0 out 0.95;  step 1: test 0.35, val 0.74, env0 out 0.50
#   leave-one-out val: step 0 0.90, step 1 0.65
#   -> training-domain (0.74, 0.35); leave-one-out (0.90, 0.30); oracle (0.50, 0.35)
# chosen in trial 0: training-domain 0.50 (seed 0), leave-one-out 0.30 (seed 1), oracle 0.55 (seed 0)
# trial 1: training-domain and oracle 0.70; leave-one-out nothing (no two-test-env runs)
#
# The two-test-env records carry 0.99 everywhere else: were they taken as checkpoints of
# their own, training-domain validation and the oracle would pick them.

WORKED = {  # selection -> (accuracies over trials for test env 0)
    "training-domain": [0.50, 0.70],
    "leave-one-out": [0.30],
    "oracle": [0.55, 0.70],
}


def worked_sweep():
    records = []
    for hseed, steps in {
        0: [((0.50, 0.60, 0.70, 0.80), 0.40, 0.40), ((0.55, 0.90, 0.60, 0.70), 0.80, 0.60)],
        1: [((0.30, 0.95, 0.72, 0.72), 0.90, 0.90), ((0.35, 0.50, 0.74, 0.74), 0.65, 0.65)],
    }.items():
        for step, ((test, out0, out1, out2), loo1, loo2) in enumerate(steps):
            records.append(rec("Toy", "ERM", [0], step, [test, 0.99, 0.99], [out0, out1, out2], hseed=hseed))
            records.append(rec("Toy", "ERM", [0, 1], step, [0.99, loo1, 0.99], [0.99, 0.99, 0.99], hseed=hseed))
            records.append(rec("Toy", "ERM", [0, 2], step, [0.99, 0.99, loo2], [0.99, 0.99, 0.99], hseed=hseed))
    records.append(rec("Toy", "ERM", [0], 0, [0.70, 0.1, 0.1], [0.5, 0.5, 0.5], trial=1))
    return records


def expected(accs):
    """DomainBed's format_mean: 100 * mean and 100 * np.std(accs / sqrt(n)), population std."""
    accs = np.asarray(accs)
    return 100 * accs.mean(), 100 * np.sqrt(np.mean((accs - accs.mean()) ** 2)) / np.sqrt(len(accs))


@pytest.mark.parametrize("method", list(WORKED))
def test_worked_sweep_groups(method):
    accs = sweep_accs(method, worked_sweep())
    want = {GroupKey(t, "Toy", "ERM", 0): a for t, a in enumerate(WORKED[method])}
    assert accs == want  # the pair runs make groups for envs 1 and 2 too, with nothing to select


@pytest.mark.parametrize("method", list(WORKED))
def test_worked_sweep_in_every_format(method):
    records = worked_sweep()
    mean, sem = expected(WORKED[method])
    n = len(WORKED[method])

    rows = pd.read_csv(io.StringIO(render(records, method, "csv")), keep_default_na=False, dtype=str)
    cell = rows[(rows.dataset == "Toy") & (rows.env == "0")].iloc[0]
    assert (cell.selection, cell.algorithm) == (method, "ERM")
    assert float(cell["mean"]) == pytest.approx(mean, abs=1e-4)
    assert float(cell["sem"]) == pytest.approx(sem, abs=1e-4)
    assert int(cell["trials"]) == n
    for env in ("1", "2", "Avg"):  # no data for envs 1 and 2, so no data-set average either
        row = rows[(rows.dataset == "Toy") & (rows.env == env)].iloc[0]
        assert (row["mean"], row["sem"]) == ("", "")
    # Averages: each trial averages the environments it has (only env 0 here)
    toy = rows[(rows.dataset == "Averages") & (rows.env == "Toy")].iloc[0]
    assert float(toy["mean"]) == pytest.approx(mean, abs=1e-4) and int(toy["trials"]) == n

    json_rows = json.loads(render(records, method, "json"))
    assert len(json_rows) == len(rows)
    (j,) = [r for r in json_rows if r["dataset"] == "Toy" and r["env"] == "0"]
    assert j["mean"] == pytest.approx(mean) and j["sem"] == pytest.approx(sem) and j["trials"] == n
    (x,) = [r for r in json_rows if r["dataset"] == "Toy" and r["env"] == "Avg"]
    assert x["mean"] is None and x["sem"] is None

    printed = f"{mean:.1f} +/- {sem:.1f}"
    text = render(records, method, "text")
    row = [line for line in text.splitlines() if line.startswith("ERM")][0]  # Toy's table comes first
    assert re.split(r"\s{2,}", row) == ["ERM", printed, "X", "X", "X"]
    markdown = render(records, method, "markdown")
    assert re.search(rf"\| ERM +\| {re.escape(printed)} +\| X +\| X +\| X +\|", markdown)
    latex = render(records, method, "latex")
    assert f"ERM & {mean:.1f} $\\pm$ {sem:.1f} & X & X & X \\\\" in latex


def test_selection_all_prints_the_three_methods():
    csv = pd.read_csv(io.StringIO(render(worked_sweep(), "all", "csv")), keep_default_na=False)
    assert list(dict.fromkeys(csv.selection)) == ["training-domain", "leave-one-out", "oracle"]
    text = render(worked_sweep(), "all", "text")
    for name in ("training-domain validation set", "leave-one-domain-out cross-validation", "test-domain validation set (oracle)"):
        assert f"Dataset: Toy, model selection method: {name}" in text
        assert f"Averages, model selection method: {name}" in text


# ---------------------------------------------------------------- selection details


def test_ties_follow_domainbed():
    # checkpoint tie within a run: the earliest record wins
    run = [rec("Toy", "ERM", [0], 0, [0.2, 0, 0], [0, 0.5, 0.5]), rec("Toy", "ERM", [0], 1, [0.9, 0, 0], [0, 0.5, 0.5])]
    assert sweep_accs("training-domain", run)[GroupKey(0, "Toy", "ERM", 0)] == 0.2
    # configuration tie: the largest hparams_seed wins (sorted ascending, reversed), whatever the input order
    tie = [
        rec("Toy", "ERM", [0], 0, [0.1, 0, 0], [0, 0.5, 0.5], hseed=2),
        rec("Toy", "ERM", [0], 0, [0.3, 0, 0], [0, 0.5, 0.5], hseed=7),
        rec("Toy", "ERM", [0], 0, [0.2, 0, 0], [0, 0.5, 0.5], hseed=4),
    ]
    for records in (tie, tie[::-1]):
        assert sweep_accs("training-domain", records)[GroupKey(0, "Toy", "ERM", 0)] == 0.3
        assert sweep_accs("oracle", records)[GroupKey(0, "Toy", "ERM", 0)] == 0.3  # out-split 0 ties too
    # leave-one-out: tied steps -> the smallest step, even when its records come last
    loo = [
        rec("Toy", "ERM", [0], 5, [0.8, 0, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 1], 5, [0, 0.5, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0], 2, [0.4, 0, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 1], 2, [0, 0.5, 0], [0, 0, 0]),
    ]
    two_envs = [dict(r) for r in loo]
    for r in two_envs:  # a 2-environment data set: validation is env 1 alone
        del r["env2_in_acc"], r["env2_out_acc"]
    assert sweep_accs("leave-one-out", two_envs)[GroupKey(0, "Toy", "ERM", 0)] == 0.4


def test_oracle_uses_the_last_checkpoint_and_the_test_out_split():
    records = [
        rec("Toy", "ERM", [1], 0, [0, 0.95, 0], [0, 0.99, 0]),  # an earlier, better checkpoint: ignored
        rec("Toy", "ERM", [1], 5, [0, 0.50, 0], [0, 0.60, 0]),
        rec("Toy", "ERM", [1], 5, [0, 0.70, 0], [0, 0.65, 0], hseed=1),
        rec("Toy", "ERM", [1, 2], 9, [0, 0.99, 0.99], [0, 0.99, 0.99], hseed=1),  # a later step of a pair run: ignored
    ]
    assert sweep_accs("oracle", records) == {GroupKey(0, "Toy", "ERM", 1): 0.70}


def test_leave_one_out_needs_every_validation_run_and_one_test_record_per_step():
    base = [
        rec("Toy", "ERM", [0], 0, [0.11, 0, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0], 1, [0.22, 0, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 1], 0, [0, 0.50, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 1], 1, [0, 0.90, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 2], 1, [0, 0, 0.20], [0, 0, 0]),  # no [0, 2] record at step 0
    ]
    # only step 1 has both validation runs: (0.90 + 0.20) / 2, test 0.22
    assert sweep_accs("leave-one-out", base) == {GroupKey(0, "Toy", "ERM", 0): 0.22}
    # a second single-test-env record at step 1 (a duplicate run) makes that step unusable
    duplicate = [*base, rec("Toy", "ERM", [0], 1, [0.33, 0, 0], [0, 0, 0])]
    assert sweep_accs("leave-one-out", duplicate) == {}


def test_grid_points_with_the_same_hparams_seed_are_separate_configurations():
    records = [
        rec("Toy", "SAGE", [0], 0, [0.2, 0, 0], [0, 0.9, 0.9], overrides={"rho": 0.1}),
        rec("Toy", "SAGE", [0], 0, [0.8, 0, 0], [0, 0.5, 0.5], overrides={"rho": 0.01}),
    ]
    assert sweep_accs("training-domain", records)[GroupKey(0, "Toy", "SAGE", 0)] == 0.2
    # DomainBed's string form of the overrides is the same configuration as the dict form
    as_string = [dict(r, args={**r["args"], "hparams": json.dumps(r["args"]["hparams"])}) for r in records]
    assert sweep_accs("oracle", records) == sweep_accs("oracle", as_string)
    # the oracle shows the difference: per configuration the last checkpoint, best env0 out-split
    split = [
        rec("Toy", "ERM", [0], 0, [0.2, 0, 0], [0.9, 0, 0], overrides={"lr": 1}),
        rec("Toy", "ERM", [0], 1, [0.4, 0, 0], [0.1, 0, 0], overrides={"lr": 1}),
        rec("Toy", "ERM", [0], 0, [0.6, 0, 0], [0.5, 0, 0], overrides={"lr": 2}),
    ]
    # separate: lr=1 ends at (0.1, 0.4), lr=2 at (0.5, 0.6) -> 0.6; merged, the last step is step 1 -> 0.4
    assert sweep_accs("oracle", split)[GroupKey(0, "Toy", "ERM", 0)] == 0.6


def test_sage_ablations_are_rows_of_their_own():
    full = {"orthogonalize": True, "layer_scale": True, "noise": True}
    records = [
        rec("Toy", "SAGE", [0], 0, [0.6, 0, 0], [0, 0.5, 0.5], hparams=full),
        rec("Toy", "SAGE", [0], 0, [0.9, 0, 0], [0, 0.9, 0.9], hseed=1, hparams={**full, "noise": False}),
        rec("Toy", "SAGE", [0], 0, [0.4, 0, 0], [0, 0.9, 0.9], hseed=2, hparams={**full, "noise": False, "layer_scale": False}),
        rec("Toy", "ERM", [0], 0, [0.5, 0, 0], [0, 0.5, 0.5]),
    ]
    accs = sweep_accs("training-domain", records)
    assert accs == {
        GroupKey(0, "Toy", "SAGE", 0): 0.6,  # not the better-validated variant without noise
        GroupKey(0, "Toy", "SAGE w/o noise", 0): 0.9,
        GroupKey(0, "Toy", "SAGE w/o layer_scale, noise", 0): 0.4,
        GroupKey(0, "Toy", "ERM", 0): 0.5,
    }
    frame = results_frame(records, "training-domain")
    assert list(dict.fromkeys(frame.algorithm)) == ["ERM", "SAGE", "SAGE w/o layer_scale, noise", "SAGE w/o noise"]


# ---------------------------------------------------------------- tables


def _full_sweep(dataset="Toy", algorithm="ERM", accs=None, trials=(0, 1)):
    records = []
    for t in trials:
        for env in range(3):
            a = accs[(t, env)] if accs else 0.5 + 0.1 * env + 0.01 * t
            in_acc = [0.0, 0.0, 0.0]
            in_acc[env] = a
            records.append(rec(dataset, algorithm, [env], 0, in_acc, [0.5, 0.5, 0.5], trial=t))
    return records


def test_cells_mean_sem_missing_and_averages():
    accs = {(0, 0): 0.60, (1, 0): 0.70, (0, 1): 0.80, (1, 1): 0.90, (0, 2): 0.50}  # (trial 1, env 2) missing
    records = [r for r in _full_sweep(accs={**accs, (1, 2): 0}) if not (r["args"]["trial_seed"] == 1 and r["args"]["test_envs"] == [2])]
    frame = results_frame(records, "training-domain").set_index(["dataset", "algorithm", "env"])
    cell = frame.loc[("Toy", "ERM", "0")]
    assert cell["mean"] == pytest.approx(65.0)
    assert cell["sem"] == pytest.approx(5.0 / np.sqrt(2))  # population std of (60, 70) is 5
    assert cell["trials"] == 2
    assert frame.loc[("Toy", "ERM", "2")]["trials"] == 1
    assert frame.loc[("Toy", "ERM", "2")]["sem"] == 0  # one trial: standard error 0, as DomainBed
    # Avg: the mean of the three cell means, not a mean over trials; fewest trials of any cell
    assert frame.loc[("Toy", "ERM", "Avg")]["mean"] == pytest.approx((65 + 85 + 50) / 3)
    assert frame.loc[("Toy", "ERM", "Avg")]["trials"] == 1
    # Averages: per trial over the envs that trial has: trial 0 (60+80+50)/3, trial 1 (70+90)/2
    per_trial = [(60 + 80 + 50) / 3, (70 + 90) / 2]
    averages = frame.loc[("Averages", "ERM", "Toy")]
    assert averages["mean"] == pytest.approx(np.mean(per_trial))
    assert averages["sem"] == pytest.approx(abs(per_trial[0] - per_trial[1]) / 2 / np.sqrt(2))
    assert frame.loc[("Averages", "ERM", "Avg")]["mean"] == pytest.approx(np.mean(per_trial))


def test_missing_environment_is_x_and_averages_need_every_dataset():
    records = [r for r in _full_sweep() if r["args"]["test_envs"] != [1]] + _full_sweep("Other", "SAGE")
    frame = results_frame(records, "training-domain").set_index(["dataset", "algorithm", "env"])
    assert math.isnan(frame.loc[("Toy", "ERM", "1")]["mean"])
    assert math.isnan(frame.loc[("Toy", "ERM", "Avg")]["mean"])
    # every algorithm gets a row in every data set's table, X where it has no runs
    assert math.isnan(frame.loc[("Other", "ERM", "0")]["mean"])
    # Averages: ERM has Toy (from envs 0 and 2) but not Other -> its Avg is X
    assert frame.loc[("Averages", "ERM", "Toy")]["mean"] == pytest.approx(np.mean([(50 + 70) / 2, (51 + 71) / 2]))
    assert math.isnan(frame.loc[("Averages", "ERM", "Other")]["mean"])
    assert math.isnan(frame.loc[("Averages", "ERM", "Avg")]["mean"])
    table = pivot(results_frame(records, "training-domain"), "Toy")
    assert table.loc["ERM", "1"] == "X" and table.loc["ERM", "Avg"] == "X"
    assert table.loc["ERM", "0"] == "50.5 +/- 0.4"  # (50, 51): population std 0.5 / sqrt(2)


def test_unknown_dataset_environments_come_from_records():
    text = render(_full_sweep("MyData"), "training-domain", "text")
    assert "Dataset: MyData" in text
    header_line = [line for line in text.splitlines() if "Avg" in line][0]
    assert header_line.split()[:3] == ["0", "1", "2"]


def test_known_dataset_uses_domainbed_labels():
    records = [rec("PACS", "ERM", [e], 0, [0.5] * 4, [0.5] * 4) for e in range(4)]
    text = render(records, "training-domain", "text")
    assert [line for line in text.splitlines() if "Avg" in line][0].split()[:4] == ["A", "C", "P", "S"]


def test_csv_header_and_averages_rows():
    records = _full_sweep() + _full_sweep(algorithm="SAGE")
    text = render(records, "all", "csv")
    assert text.splitlines()[0] == "selection,dataset,algorithm,env,mean,sem,trials"
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
    loo = frame[(frame.selection == "leave-one-out") & (frame.dataset == "Toy")]
    assert (loo["mean"] == "").all()  # no two-test-env runs: every cell X, empty in csv
    averages = frame[(frame.dataset == "Averages") & (frame.selection == "training-domain")]
    assert list(averages["env"]) == ["Toy", "Avg", "Toy", "Avg"]
    assert list(averages["algorithm"]) == ["ERM", "ERM", "SAGE", "SAGE"]


def _five_datasets(algorithm, means):
    records = []
    for d, base in zip(FIVE, means, strict=True):
        n = 6 if d == "DomainNet" else 4
        for e in range(n):
            in_acc = [0.0] * n
            in_acc[e] = base
            records.append(rec(d, algorithm, [e], 0, in_acc, [0.5] * n))
    return records


def test_table1_beside_the_paper():
    records = _five_datasets("ERM", [0.96, 0.82, 0.84, 0.56, 0.60]) + _five_datasets("MyMethod", [0.5] * 5)
    table = table1_frame(results_frame(records, "training-domain"), compare_paper=True)
    assert list(table.index) == ["ERM", "MyMethod"]
    assert list(table.columns[:3]) == ["PACS", "PACS (paper)", "PACS (diff)"]
    assert table.loc["ERM", "PACS"] == pytest.approx(96.0)
    assert table.loc["ERM", "PACS (paper)"] == pytest.approx(95.9)
    assert table.loc["ERM", "PACS (diff)"] == pytest.approx(0.1)
    assert table.loc["ERM", "Avg"] == pytest.approx(np.mean([96, 82, 84, 56, 60]))
    assert table.loc["ERM", "Avg (paper)"] == pytest.approx(np.mean([95.9, 81.9, 84.1, 56.1, 59.5]))
    assert math.isnan(table.loc["MyMethod", "PACS (paper)"])  # not in the paper
    text = render(records, "training-domain", "text", compare_paper=True)
    printed = text[text.index("Table 1 beside the paper's") :].splitlines()
    assert printed[1].split() == [*FIVE, "Avg"]
    rows = {" ".join(line.split()[:-6]): line.split()[-6:] for line in printed[3:9]}
    assert rows["ERM"] == ["96.0", "82.0", "84.0", "56.0", "60.0", "75.6"]
    assert rows["ERM (paper, BOA's protocol)"] == ["95.9", "81.9", "84.1", "56.1", "59.5", "75.5"]
    assert rows["ERM (diff)"] == ["+0.1", "+0.1", "-0.1", "-0.1", "+0.5", "+0.1"]
    assert rows["MyMethod (paper)"] == ["X"] * 6
    markdown = render(records, "training-domain", "markdown", compare_paper=True)
    assert re.search(r"\| ERM \(diff\) +\| \+0\.1 +\| \+0\.1 +\| -0\.1 ", markdown)  # numbers kept as printed
    # the paper's Fish row prints 75.0 but its cells average to 76.3: the shipped table recomputes
    rows = pd.read_csv(io.StringIO(render(records, "training-domain", "csv", compare_paper=True)), keep_default_na=False)
    fish = rows[(rows.selection == "paper") & (rows.algorithm == "Fish")].set_index("env")
    assert float(fish.loc["Avg", "mean"]) == pytest.approx(np.mean([96.9, 82.7, 85.0, 58.0, 59.1]), abs=1e-4)


def test_every_paper_row_is_labelled_by_its_protocol_in_every_format():
    from sage_bench.collect.tables import PAPER_PROTOCOLS, paper_protocols

    protocols = paper_protocols()
    assert len(protocols) == 17 and protocols["SAGE"] == "SAGE"
    assert {a for a, p in protocols.items() if p == "BOA"} == set(protocols) - {"SAGE"}  # Table 1's caption: from [51]
    records = _five_datasets("ERM", [0.96, 0.82, 0.84, 0.56, 0.60]) + _five_datasets("SAGE", [0.9] * 5)
    for fmt in ("csv", "json"):
        text = render(records, "training-domain", fmt, compare_paper=True)
        frame = pd.read_csv(io.StringIO(text), keep_default_na=False) if fmt == "csv" else pd.DataFrame(json.loads(text))
        paper = frame[frame.selection == "paper"]
        assert paper.algorithm.nunique() == 17
        for algorithm, rows in paper.groupby("algorithm"):
            assert set(rows.protocol) == {PAPER_PROTOCOLS[protocols[algorithm]]}
        assert all(p == "" or pd.isna(p) for p in frame[frame.selection != "paper"].protocol)  # our own rows
    for fmt in ("text", "markdown", "latex"):
        text = render(records, "training-domain", fmt, compare_paper=True)
        assert "ERM (paper, BOA's protocol)" in text and "SAGE (paper, SAGE's protocol)" in text
        assert "visual prompt tuning, test-domain model selection" in text  # the legend under the table
    assert "protocol" not in render(records, "training-domain", "csv").splitlines()[0]


# ---------------------------------------------------------------- reading folders and the command


def test_cli_reads_folders_recursively_and_reports_incomplete_and_corrupt(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    runs = _full_sweep()
    for i, r in enumerate(runs):
        write_run(sweep / "nested" / f"run{i}", [r], done=i != 0)
    with open(sweep / "nested" / "run1" / "results.jsonl", "a") as f:
        f.write("[1, 2]\n")  # JSON, but not a record
        f.write(json.dumps({**runs[1], "env1_in_acc": None}) + "\n")  # a record without an accuracy
        f.write('{"step": 3, "env0_in')  # a truncated last line
    assert main(["collect", str(sweep), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "6 runs: 5 done, 1 incomplete; 6 records (2 unreadable lines and 1 incomplete records skipped)" in err
    assert "run1/results.jsonl:2: skipping unreadable record" in err
    assert "run1/results.jsonl:3: skipping record (env1_in_acc is missing or not a finite number)" in err
    assert "run1/results.jsonl:4: skipping unreadable record" in err
    frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
    env0 = frame[(frame.dataset == "Toy") & (frame.env == "0")].iloc[0]
    assert int(env0["trials"]) == 2  # the incomplete run counts unless asked otherwise
    assert main(["collect", str(sweep), "--format", "csv", "--completed-only"]) == 0
    out, err = capsys.readouterr()
    frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
    env0 = frame[(frame.dataset == "Toy") & (frame.env == "0")].iloc[0]
    assert int(env0["trials"]) == 1 and float(env0["mean"]) == pytest.approx(51.0)  # run0 left out


def test_cli_errors(tmp_path, capsys):
    assert main(["collect", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["collect", str(tmp_path)]) == 2
    assert "no results.jsonl under" in capsys.readouterr().err
    write_run(tmp_path / "run", [rec("Toy", "ERM", [0], 0, [1, 1, 1], [1, 1, 1])], done=False)
    assert main(["collect", str(tmp_path), "--completed-only"]) == 2
    assert "drop --completed-only" in capsys.readouterr().err
    assert main(["collect", str(tmp_path), "--output", str(tmp_path / "no" / "such" / "file")]) == 2


def test_cli_writes_output_and_plots(tmp_path, capsys):
    for i, r in enumerate(_full_sweep()):
        write_run(tmp_path / "runs" / str(i), [r])
    out = tmp_path / "table.md"
    assert main(["collect", str(tmp_path / "runs"), "--format", "markdown", "--output", str(out), "--plots", str(tmp_path / "figs")]) == 0
    assert "| Algorithm" in out.read_text()
    assert (tmp_path / "figs" / "accuracy_by_domain.png").exists()


def test_find_runs_marks_done(tmp_path):
    write_run(tmp_path / "a", [rec("Toy", "ERM", [0], 0, [1, 1, 1], [1, 1, 1])])
    write_run(tmp_path / "b", [rec("Toy", "ERM", [1], 0, [1, 1, 1], [1, 1, 1])], done=False)
    collection = find_runs(tmp_path)
    assert (collection.n_done, collection.n_incomplete) == (1, 1)
    assert len(collection.completed().records) == 1


def test_mixed_backbones_are_pointed_out():
    records = [
        rec("Toy", "ERM", [0], 0, [1, 1, 1], [1, 1, 1], backbone="clip_vit_b16"),
        rec("Toy", "ERM", [1], 0, [1, 1, 1], [1, 1, 1], backbone="resnet50"),
        rec("Toy", "SAGE", [0], 0, [1, 1, 1], [1, 1, 1], backbone="resnet50"),
    ]
    (message,) = mixed_settings(records)
    assert message.startswith("Toy / ERM: runs with different backbone ('clip_vit_b16', 'resnet50')")
    assert mixed_settings(_full_sweep()) == []  # DomainBed's records have no backbone: one value, None


# ---------------------------------------------------------------- figures


def test_training_curves_follow_the_selected_runs():
    curves = selected_curves(worked_sweep(), "training-domain")
    # trial 0 selects hparams_seed 0 (steps 0, 1: test 0.50, 0.55); trial 1 its one run (step 0: 0.70)
    assert curves[("Toy", "ERM")]["step"] == [0, 1]
    assert curves[("Toy", "ERM")]["test"] == pytest.approx([(50 + 70) / 2, 55])
    assert curves[("Toy", "ERM")]["val"] == pytest.approx([(75 + 50) / 2, 65])


def test_figures(tmp_path):
    records = _full_sweep()
    for rho in (0.01, 0.1):
        for gamma in (0.001, 0.01):
            for switches in ({}, {"noise": False}):
                hparams = {"rho": rho, "gamma": gamma, "orthogonalize": True, "layer_scale": True, "noise": True, **switches}
                for env in range(3):
                    in_acc = [0.0] * 3
                    in_acc[env] = 0.5 + rho + gamma
                    records.append(
                        rec("Toy", "SAGE", [env], 0, in_acc, [0.5] * 3, overrides={"rho": rho, "gamma": gamma, **switches}, hparams=hparams, loss=1.0)
                    )
    paths = write_figures(records, tmp_path / "figures")
    assert {p.name for p in paths} == {"accuracy_by_domain.png", "training_curves.png", "sage_rho_gamma_Toy.png", "sage_ablation_Toy.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    # no grid, no ablation: only the two general figures
    assert {p.name for p in write_figures(_full_sweep(), tmp_path / "plain")} == {"accuracy_by_domain.png", "training_curves.png"}


# ---------------------------------------------------------------- against DomainBed's own printout


def _printed_cells(text):
    """``{(table title, algorithm, column index): cell}`` of DomainBed-style text tables."""
    cells, title, header = {}, None, False
    for line in text.splitlines():
        if line.startswith("-------- "):
            title, header = line[9:].strip(), True
        elif title and line.strip() and line.strip() != "Algorithm":
            if header:
                header = False
                continue
            parts = re.split(r"\s{2,}", line.strip())
            cells.update({(title, parts[0], i): c for i, c in enumerate(parts[1:])})
    return cells


def test_matches_domainbed_on_its_test_sweep():
    """DomainBed ships a small sweep and the tables its ``collect_results`` prints for it; with
    ``DOMAINBED_DIR`` set to a DomainBed checkout, every printed cell must be the same here."""
    root = os.environ.get("DOMAINBED_DIR")
    if not root:
        pytest.skip("set DOMAINBED_DIR to a DomainBed checkout to compare with its test_sweep_results.txt")
    misc = Path(root) / "domainbed" / "misc"
    expected_cells = _printed_cells((misc / "test_sweep_results.txt").read_text())
    records = find_runs(misc / "test_sweep_data").records
    assert len(records) == int(re.search(r"Total records: (\d+)", (misc / "test_sweep_results.txt").read_text())[1])
    ours = _printed_cells(render(records, "all", "text"))
    assert len(expected_cells) == 21
    assert ours == expected_cells


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: r.pop("args"), "no args"),
        (lambda r: r["args"].pop("trial_seed"), "args without trial_seed"),
        (lambda r: r.pop("step"), "no step number"),
        (lambda r: r["args"].update(test_envs=[]), "test_envs is not a list"),
        (lambda r: r["args"].update(hparams_seed="0"), "args.hparams_seed is not an integer"),
        (lambda r: [r.pop(k) for k in list(r) if k.startswith("env")], "no env0_out_acc"),
        (lambda r: r.update(env1_in_acc=float("nan")), "env1_in_acc is missing or not a finite number"),
        (lambda r: r["args"].update(test_envs=[3]), "test_envs [3] outside the 3 environments"),
    ],
)
def test_unusable_records_are_named(change, problem):
    from sage_bench.collect.loading import record_problem

    record = rec("Toy", "ERM", [0], 0, [0.5] * 3, [0.5] * 3)
    assert record_problem(record) is None
    change(record)
    assert record_problem(record).startswith(problem)
