"""Train multi-task rows on DigitScenes with the narrow MTAN and compare them (CPU, minutes).

    python benchmarks/digit_scenes_solvers.py --rows STL LS MGDA FairGrad --steps 300

Each row trains ``--steps`` steps of Adam (``--lr``, batch ``--batch-size``) from the same
initial weights and data order, then is evaluated on the validation split (the lineage's
metrics). ``STL`` trains one network per task; when it is among the rows, Delta_m of every other
row is computed against the three STL results (the lineage's formula, base = STL).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from sage_bench.algorithms import build_multitask_algorithm
from sage_bench.data.digit_scenes import DigitScenes
from sage_bench.models.mtan import mtan
from sage_bench.mtl import MetricAccumulator, MultiTaskLoss, delta_m_from, metric_names

HIGHER_IS_BETTER = ("miou", "pixacc", "within")


def train(name: str, data: DigitScenes, args, hparams: dict) -> dict[str, float]:
    torch.manual_seed(args.seed)
    net = mtan(data.tasks, "narrow")
    loss_fn = MultiTaskLoss(data.tasks)
    algo = build_multitask_algorithm(name, net, torch.optim.Adam(net.parameters(), args.lr), loss_fn, hparams, "small")
    loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    step, start = 0, time.time()
    while step < args.steps:
        for x, targets in loader:
            algo.update(x, targets)
            step += 1
            if step == args.steps:
                break
    seconds = time.time() - start
    net.eval()
    metrics = MetricAccumulator(data.tasks)
    with torch.no_grad():
        for x, targets in DataLoader(data.val, batch_size=64):
            metrics.update(net(x), targets)
    return {**metrics.compute(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=["STL", "LS", "MGDA", "FairGrad"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DigitScenes()
    keys = [k for t in data.tasks for k in metric_names(t)]
    results: dict[str, dict[str, float]] = {}
    for row in args.rows:
        if row == "STL":
            for task in data.tasks:
                r = train("STL", data, args, {"task": task.name})
                results[f"STL-{task.name}"] = r
                print(f"STL-{task.name}: {r['seconds']:.0f}s", flush=True)
            base = {k: results[f"STL-{k.split('_')[0]}"][k] for k in keys}
            results["STL"] = {**base, "seconds": sum(results[f"STL-{t.name}"]["seconds"] for t in data.tasks)}
        else:
            results[row] = train(row, data, args, {})
            print(f"{row}: {results[row]['seconds']:.0f}s", flush=True)
    shown = [r for r in results if not r.startswith("STL-")]
    print("| row | " + " | ".join(keys) + " | Delta_m | seconds |")
    print("|---" * (len(keys) + 3) + "|")
    for row in shown:
        r = results[row]
        dm = ""
        if "STL" in results:
            base = [results["STL"][k] for k in keys]
            better = [any(h in k for h in HIGHER_IS_BETTER) for k in keys]
            dm = f"{delta_m_from([r[k] for k in keys], base, better):+.2f}"
        print(f"| {row} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + f" | {dm} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
