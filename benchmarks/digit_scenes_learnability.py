"""Is every DigitScenes task learnable at the quick budget? STL per task against the constant floor.

    python benchmarks/digit_scenes_learnability.py --seeds 0 1 2       # 384 steps, quick-mtl's
    python benchmarks/digit_scenes_learnability.py --steps 128 --decay-at 0.75 --set NOISE=0.05

For each seed and task, the narrow MTAN trains that task alone (``STL``) for ``--steps`` steps of
Adam (batch ``--batch-size``, the first ``--train-scenes`` scenes; ``--decay-at F`` multiplies
the learning rate by ``--gamma`` after that share of the steps), then is evaluated once on the
validation split (quick-mtl averages the evaluations of its last 2 of 6 epochs instead); the
``Constant`` row (the training split's per-pixel mode, median depth and mean normal) gives the
floor. Printed: each task's headline metrics for both, and the ratio STL / Constant (the
quick-mtl target: depth abs error <= 0.6, mIoU >= 2, normal mean angle <= 0.8).
``--set NAME=VALUE`` changes a constant of ``sage_bench.data.digit_scenes`` before rendering,
to compare renderer designs side by side in one run.
"""

from __future__ import annotations

import argparse
import ast
import time

import torch
from torch.utils.data import DataLoader

from sage_bench.algorithms import build_multitask_algorithm
from sage_bench.data import digit_scenes
from sage_bench.models.mtan import mtan
from sage_bench.mtl import MetricAccumulator, MultiTaskLoss

HEADLINE = {"seg": "seg_miou", "depth": "depth_abs_err", "normal": "normal_angle_mean"}


def run(row: str, data, hparams: dict, steps: int, batch_size: int, lr: float, seed: int, width: str,
        decay_at: float = 1.0, gamma: float = 0.1) -> dict[str, float]:
    torch.manual_seed(seed)
    net = mtan(data.tasks, width)
    optimizer = torch.optim.Adam(net.parameters(), lr)
    algo = build_multitask_algorithm(row, net, optimizer, MultiTaskLoss(data.tasks), hparams, "small")
    decay_step = round(decay_at * steps)
    loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    step = 0
    while step < steps:
        for x, targets in loader:
            algo.update(x, targets)
            step += 1
            if step == decay_step:
                for group in optimizer.param_groups:
                    group["lr"] *= gamma
            if step == steps:
                break
    algo.end_epoch(0)
    algo.eval()
    metrics = MetricAccumulator(data.tasks)
    with torch.no_grad():
        for x, targets in DataLoader(data.val, batch_size=64):
            metrics.update(algo.predict(x), targets)
    return metrics.compute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--decay-at", type=float, default=1.0, help="share of the steps after which the lr is multiplied by --gamma")
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--train-scenes", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--width", default="narrow", help="MTAN width (sage_bench.models.mtan.WIDTHS)")
    parser.add_argument("--tasks", nargs="+", default=list(HEADLINE), choices=list(HEADLINE), help="tasks to train STL on")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for item in args.set:
        name, value = item.split("=", 1)
        setattr(digit_scenes, name, ast.literal_eval(value))
    digit_scenes.make_digit_scenes.cache_clear()
    data = digit_scenes.DigitScenes(train_scenes=args.train_scenes)
    start = time.time()
    floor = run("Constant", data, {}, -(-args.train_scenes // args.batch_size), args.batch_size, args.lr, 0, args.width)
    print(f"renderer {args.set or 'as committed'}; {args.width} MTAN, {args.steps} steps of {args.batch_size}, lr {args.lr}")
    print(f"{'seed':>4} {'task':>7} {'metric':>18} {'STL':>9} {'Constant':>9} {'ratio':>6}")
    for seed in args.seeds:
        for task in args.tasks:
            key = HEADLINE[task]
            stl = run("STL", data, {"task": task}, args.steps, args.batch_size, args.lr, seed, args.width, args.decay_at, args.gamma)
            print(f"{seed:>4} {task:>7} {key:>18} {stl[key]:>9.4f} {floor[key]:>9.4f} {stl[key] / floor[key]:>6.2f}", flush=True)
    print(f"{time.time() - start:.0f} s (one thread)")


if __name__ == "__main__":
    main()
