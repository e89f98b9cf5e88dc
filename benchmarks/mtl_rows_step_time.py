"""Time one training step of Table 2's rows on DigitScenes beside LS, and print the ratios.

    python benchmarks/mtl_rows_step_time.py                         # every row, narrow MTAN
    python benchmarks/mtl_rows_step_time.py --rows PCGrad Nash-MTL --repeats 5

The rows are timed round-robin in one process (as ``benchmarks/step_time.py``): each round
takes ``--steps`` steps of every row back to back on the same batches (narrow MTAN, Adam, batch
8, after a warm-up step), and a row's ratio to LS is taken within the round, so load that drifts
on a shared machine slows both sides alike. Printed: the median step time over ``--repeats``
rounds and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sage_bench.algorithms import build_multitask_algorithm
from sage_bench.data.digit_scenes import DigitScenes
from sage_bench.models.mtan import mtan
from sage_bench.mtl import MultiTaskLoss

ROWS = ["SI", "RLW", "DWA", "UW", "FAMO", "PCGrad", "GradDrop", "IMTL-G", "CAGrad", "MoCo", "Nash-MTL", "F-MTL"]


def build(name: str, data: DigitScenes):
    torch.manual_seed(0)
    net = mtan(data.tasks, "narrow")
    optimizer = torch.optim.Adam(net.parameters(), data.LR)
    return build_multitask_algorithm(name, net, optimizer, MultiTaskLoss(data.tasks), {}, "small", dataset="DigitScenes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=ROWS)
    parser.add_argument("--steps", type=int, default=5, help="steps per row per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DigitScenes()
    batches = []
    for step in range(args.steps + 1):
        idx = list(range(8 * step, 8 * step + 8))
        batches.append((data.train.images[idx], {k: v[idx] for k, v in data.train.targets.items()}))
    names = ["LS", *[r for r in args.rows if r != "LS"]]
    algos = {name: build(name, data) for name in names}
    for algo in algos.values():  # warm-up: first calls, solver set-up
        algo.update(*batches[-1])
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name, algo in algos.items():
            start = time.perf_counter()
            for x, targets in batches[: args.steps]:
                algo.update(x, targets)
            times[name].append((time.perf_counter() - start) / args.steps)
        for name in names:
            ratios[name].append(times[name][-1] / times["LS"][-1])
    print("| row | ms / step | x LS |")
    print("| --- | --- | --- |")
    for name in names:
        print(f"| {name} | {1000 * statistics.median(times[name]):.0f} | {statistics.median(ratios[name]):.2f} |")


if __name__ == "__main__":
    main()
