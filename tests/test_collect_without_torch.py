"""Reading records needs no torch: ``sage-bench collect`` starts without importing it."""

from __future__ import annotations

import json
import subprocess
import sys

from sage_bench.data import DATASETS
from sage_bench.data.catalog import DATASET_NAMES, ENVIRONMENTS


def _write_sweep(root):
    for trial in range(2):
        for test_env in range(4):
            record = {"step": 0, "args": {"dataset": "PACS", "algorithm": "ERM", "test_envs": [test_env],
                                          "trial_seed": trial, "hparams_seed": 0}}  # fmt: skip
            for i in range(4):
                record[f"env{i}_in_acc"] = 0.5 + 0.1 * i
                record[f"env{i}_out_acc"] = 0.4 + 0.1 * i
            job = root / f"job{trial}{test_env}"
            job.mkdir(parents=True)
            (job / "results.jsonl").write_text(json.dumps(record) + "\n")
            (job / "done").write_text("done")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return set(out.splitlines()[-1].split())


def test_importing_the_collector_does_not_import_torch():
    modules = _modules_after("import sage_bench.collect, sage_bench.data.catalog, sage_bench.cli")
    assert "sage_bench.collect" in modules and "torch" not in modules


def test_the_collect_command_does_not_import_torch(tmp_path):
    _write_sweep(tmp_path / "sweep")
    code = (
        "from sage_bench.cli import main\n"
        f"assert main(['collect', {str(tmp_path / 'sweep')!r}, '--selection', 'all', '--format', 'markdown']) == 0"
    )
    proc = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('TORCH', 'torch' in sys.modules)"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "| ERM " in proc.stdout and "| A " in proc.stdout  # PACS's environment labels, from the catalog
    assert proc.stdout.strip().endswith("TORCH False")


def test_the_catalog_matches_the_data_set_classes():
    assert list(DATASETS) == DATASET_NAMES
    for name, cls in DATASETS.items():
        assert cls.ENVIRONMENTS == ENVIRONMENTS[name]
