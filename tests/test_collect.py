"""The collector: DomainBed's model selection on hand-built records whose answers are worked
out here, robust reading, every output format, Table 1 beside the paper's, figures."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest

from sage_bench.cli import main
from sage_bench.collect import find_runs, render, results_frame, sweep_accs, table1_frame
from sage_bench.collect.plots import write_figures
from sage_bench.collect.selection import GroupKey


def rec(dataset, algorithm, test_envs, step, in_acc, out_acc, trial=0, hseed=0, overrides=None, hparams=None):
    """A DomainBed record; ``in_acc``/``out_acc``: per-environment accuracies."""
    r = {"step": step, "args": {
        "dataset": dataset, "algorithm": algorithm, "test_envs": list(test_envs),
        "trial_seed": trial, "hparams_seed": hseed, "hparams": overrides,
    }, "hparams": hparams or {}}  # fmt: skip
    for i, (a, b) in enumerate(zip(in_acc, out_acc)):
        r[f"env{i}_in_acc"] = a
        r[f"env{i}_out_acc"] = b
    return r


def write_run(folder, records, done=True):
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if done:
        (folder / "done").write_text("done")


def test_training_domain_selection_picks_best_checkpoint_then_best_hparams():
    # dataset "Toy" with 3 envs, test env 0; validation = mean of env1_out, env2_out
    records = [
        # hparams_seed 0: best checkpoint is step 1 (val 0.7), test 0.40
        rec("Toy", "ERM", [0], 0, [0.10, 0, 0], [0.9, 0.5, 0.5]),
        rec("Toy", "ERM", [0], 1, [0.40, 0, 0], [0.9, 0.6, 0.8]),
        # hparams_seed 1: best val 0.75 at step 0 -> test 0.30; wins over seed 0
        rec("Toy", "ERM", [0], 0, [0.30, 0, 0], [0.1, 0.7, 0.8], hseed=1),
        rec("Toy", "ERM", [0], 1, [0.99, 0, 0], [0.1, 0.6, 0.6], hseed=1),
        # test env 0's out-split never counts in training-domain validation: it is huge here
    ]
    accs = sweep_accs("training-domain", records)
    assert accs == {GroupKey(0, "Toy", "ERM", 0): 0.30}


def test_ties_follow_domainbed():
    # checkpoint tie within a run: the earliest record wins
    run = [rec("Toy", "ERM", [0], 0, [0.2, 0, 0], [0, 0.5, 0.5]), rec("Toy", "ERM", [0], 1, [0.9, 0, 0], [0, 0.5, 0.5])]
    assert sweep_accs("training-domain", run)[GroupKey(0, "Toy", "ERM", 0)] == 0.2
    # configuration tie: the largest hparams_seed wins (sorted ascending, reversed)
    tie = [
        rec("Toy", "ERM", [0], 0, [0.1, 0, 0], [0, 0.5, 0.5], hseed=2),
        rec("Toy", "ERM", [0], 0, [0.3, 0, 0], [0, 0.5, 0.5], hseed=7),
        rec("Toy", "ERM", [0], 0, [0.2, 0, 0], [0, 0.5, 0.5], hseed=4),
    ]
    assert sweep_accs("training-domain", tie)[GroupKey(0, "Toy", "ERM", 0)] == 0.3


def test_oracle_uses_the_last_checkpoint_and_the_test_out_split():
    records = [
        rec("Toy", "ERM", [1], 0, [0, 0.95, 0], [0, 0.99, 0]),  # earlier checkpoint is ignored
        rec("Toy", "ERM", [1], 5, [0, 0.50, 0], [0, 0.60, 0]),
        rec("Toy", "ERM", [1], 5, [0, 0.70, 0], [0, 0.65, 0], hseed=1),
    ]
    assert sweep_accs("oracle", records) == {GroupKey(0, "Toy", "ERM", 1): 0.70}


def test_leave_one_out_uses_two_test_env_runs():
    # test env 0 of a 3-env data set; for each step, validation = mean of
    # env1_in of the run with test envs [0, 1] and env2_in of the run [0, 2]
    records = [
        rec("Toy", "ERM", [0], 0, [0.11, 0, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0], 1, [0.22, 0, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 1], 0, [0, 0.50, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 1], 1, [0, 0.90, 0], [0, 0, 0]),
        rec("Toy", "ERM", [0, 2], 0, [0, 0, 0.70], [0, 0, 0]),
        rec("Toy", "ERM", [0, 2], 1, [0, 0, 0.20], [0, 0, 0]),
        # hparams_seed 1 has no [0, 2] run at step 0: only step 1 counts (val (0.6+0.6)/2 = 0.6)
        rec("Toy", "ERM", [0], 0, [0.99, 0, 0], [0, 0, 0], hseed=1),
        rec("Toy", "ERM", [0], 1, [0.33, 0, 0], [0, 0, 0], hseed=1),
        rec("Toy", "ERM", [0, 1], 0, [0, 1.0, 0], [0, 0, 0], hseed=1),
        rec("Toy", "ERM", [0, 1], 1, [0, 0.6, 0], [0, 0, 0], hseed=1),
        rec("Toy", "ERM", [0, 2], 1, [0, 0, 0.6], [0, 0, 0], hseed=1),
    ]
    # seed 0: step 0 val 0.6, step 1 val 0.55 -> (0.6, 0.11); seed 1: step 1 only -> (0.6, 0.33)
    # tie at 0.6 -> the larger hparams_seed wins
    accs = sweep_accs("leave-one-out", records)
    assert accs[GroupKey(0, "Toy", "ERM", 0)] == 0.33
    # the two-test-env runs also form groups for envs 1 and 2, where no single-env run exists
    assert GroupKey(0, "Toy", "ERM", 1) not in accs


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
    assert cell["sem"] == pytest.approx(np.std([60, 70]) / np.sqrt(2))  # population std, DomainBed
    assert cell["trials"] == 2
    assert frame.loc[("Toy", "ERM", "2")]["trials"] == 1
    assert frame.loc[("Toy", "ERM", "Avg")]["mean"] == pytest.approx((65 + 85 + 50) / 3)
    # Averages: per trial over the envs that trial has: trial 0 (60+80+50)/3, trial 1 (70+90)/2
    per_trial = [(60 + 80 + 50) / 3, (70 + 90) / 2]
    averages = frame.loc[("Averages", "ERM", "Toy")]
    assert averages["mean"] == pytest.approx(np.mean(per_trial))
    assert averages["sem"] == pytest.approx(np.std(per_trial) / np.sqrt(2))


def test_missing_environment_is_x():
    records = [r for r in _full_sweep() if r["args"]["test_envs"] != [1]]
    frame = results_frame(records, "training-domain").set_index(["dataset", "algorithm", "env"])
    assert math.isnan(frame.loc[("Toy", "ERM", "1")]["mean"])
    assert math.isnan(frame.loc[("Toy", "ERM", "Avg")]["mean"])
    from sage_bench.collect.tables import pivot

    table = pivot(results_frame(records, "training-domain"), "Toy")
    assert table.loc["ERM", "1"] == "X" and table.loc["ERM", "Avg"] == "X"
    assert table.loc["ERM", "0"] == "50.5 +/- 0.4"


def test_unknown_dataset_environments_come_from_records():
    text = render(_full_sweep("MyData"), "training-domain", "text")
    assert "Dataset: MyData" in text
    header_line = [line for line in text.splitlines() if "Avg" in line][0]
    assert header_line.split()[:3] == ["0", "1", "2"]


def test_known_dataset_uses_domainbed_labels():
    records = [rec("PACS", "ERM", [e], 0, [0.5] * 4, [0.5] * 4) for e in range(4)]
    text = render(records, "training-domain", "text")
    assert [line for line in text.splitlines() if "Avg" in line][0].split()[:4] == ["A", "C", "P", "S"]


def test_grid_points_with_the_same_hparams_seed_are_separate_configurations():
    records = [
        rec("Toy", "SAGE", [0], 0, [0.2, 0, 0], [0, 0.9, 0.9], overrides={"rho": 0.1}),
        rec("Toy", "SAGE", [0], 0, [0.8, 0, 0], [0, 0.5, 0.5], overrides={"rho": 0.01}),
    ]
    # as two configurations, the one with the better validation (rho=0.1) is chosen
    assert sweep_accs("training-domain", records)[GroupKey(0, "Toy", "SAGE", 0)] == 0.2


def test_csv_and_json_rows(tmp_path):
    records = _full_sweep() + _full_sweep(algorithm="SAGE")
    text = render(records, "all", "csv")
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False)
    assert text.splitlines()[0] == "selection,dataset,algorithm,env,mean,sem,trials"
    assert set(frame["selection"]) == {"training-domain", "leave-one-out", "oracle"}
    cell = frame[(frame.selection == "oracle") & (frame.dataset == "Toy") & (frame.algorithm == "ERM") & (frame.env == "2")]
    assert float(cell["mean"].iloc[0]) == pytest.approx(100 * np.mean([0.7, 0.71]))
    loo = frame[(frame.selection == "leave-one-out") & (frame.dataset == "Toy")]
    assert (loo["mean"] == "").all()  # no two-test-env runs: every cell X, empty in csv
    averages = frame[(frame.dataset == "Averages") & (frame.selection == "training-domain")]
    assert set(averages["env"]) == {"Toy", "Avg"}
    rows = json.loads(render(records, "training-domain", "json"))
    assert rows[0].keys() == {"selection", "dataset", "algorithm", "env", "mean", "sem", "trials"}
    assert len(rows) == len(frame[frame.selection == "training-domain"])


def test_markdown_and_latex():
    records = _full_sweep()
    md = render(records, "training-domain", "markdown")
    assert "| Algorithm" in md and "60.5 +/- 0.4" in md
    latex = render(records, "training-domain", "latex")
    assert "\\begin{tabular}" in latex and "60.5 $\\pm$ 0.4" in latex


def test_table1_beside_the_paper():
    records = []
    for d, base in zip(["PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"], [0.96, 0.82, 0.84, 0.56, 0.60]):
        n = 6 if d == "DomainNet" else 4
        for e in range(n):
            in_acc = [0.0] * n
            in_acc[e] = base
            records.append(rec(d, "ERM", [e], 0, in_acc, [0.5] * n))
    table = table1_frame(results_frame(records, "training-domain"), compare_paper=True)
    assert table.loc["ERM", "PACS"] == pytest.approx(96.0)
    assert table.loc["ERM", "PACS (paper)"] == pytest.approx(95.9)
    assert table.loc["ERM", "PACS (diff)"] == pytest.approx(0.1)
    assert table.loc["ERM", "Avg"] == pytest.approx(np.mean([96, 82, 84, 56, 60]))
    assert table.loc["ERM", "Avg (paper)"] == pytest.approx(np.mean([95.9, 81.9, 84.1, 56.1, 59.5]))
    text = render(records, "training-domain", "text", compare_paper=True)
    assert "Table 1 beside the paper's" in text and "+0.1" in text


def test_cli_reads_folders_recursively_and_reports_incomplete_and_corrupt(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    runs = _full_sweep()
    for i, r in enumerate(runs):
        write_run(sweep / "nested" / f"run{i}", [r], done=i != 0)
    with open(sweep / "nested" / "run1" / "results.jsonl", "a") as f:
        f.write('{"step": 3, "env0_in')  # a truncated last line
    assert main(["collect", str(sweep), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert "6 runs: 5 done, 1 incomplete" in err
    assert "run1/results.jsonl:2" in err
    frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
    env0 = frame[(frame.dataset == "Toy") & (frame.env == "0")].iloc[0]
    assert int(env0["trials"]) == 2  # the incomplete run counts unless asked otherwise
    assert main(["collect", str(sweep), "--format", "csv", "--completed-only"]) == 0
    out, err = capsys.readouterr()
    frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
    env0 = frame[(frame.dataset == "Toy") & (frame.env == "0")].iloc[0]
    assert int(env0["trials"]) == 1 and float(env0["mean"]) == pytest.approx(51.0)  # run0 left out
    assert main(["collect", str(tmp_path / "nowhere")]) == 2


def test_find_runs_marks_done(tmp_path):
    write_run(tmp_path / "a", [rec("Toy", "ERM", [0], 0, [1, 1, 1], [1, 1, 1])])
    write_run(tmp_path / "b", [rec("Toy", "ERM", [1], 0, [1, 1, 1], [1, 1, 1])], done=False)
    collection = find_runs(tmp_path)
    assert (collection.n_done, collection.n_incomplete) == (1, 1)
    assert len(collection.completed().records) == 1


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
                        rec("Toy", "SAGE", [env], 0, in_acc, [0.5] * 3, overrides={"rho": rho, "gamma": gamma, **switches}, hparams=hparams)
                    )
    paths = write_figures(records, tmp_path)
    assert {p.name for p in paths} == {"accuracy_by_domain.png", "training_curves.png", "sage_rho_gamma.png", "sage_ablation.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
