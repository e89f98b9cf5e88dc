"""``sage-bench sweep launch|status|delete_incomplete``: a grid of jobs, DomainBed-style.

The three actions take the same sweep definition, so the command that launched a sweep, with
``launch`` changed to ``status``, says where it stands, and run again it launches what is
missing: finished jobs are skipped, interrupted and failed ones resume from their checkpoint,
queued and running ones are left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
Words of the form key=value are Hydra overrides of every job (any `sage-bench train` key) and
may appear anywhere; a comma list sweeps over its values. launcher=... chooses how jobs run.

examples:
  sage-bench sweep launch --output-dir sweeps/digits --datasets RotatedDigits \\
      --algorithms ERM --n-hparams 4 --n-trials 2 steps=300 hparams.lr=1e-3,3e-4
  sage-bench sweep status --output-dir sweeps/digits --datasets RotatedDigits \\
      --algorithms ERM --n-hparams 4 --n-trials 2 steps=300 hparams.lr=1e-3,3e-4
  sage-bench sweep launch ... launcher=slurm launcher.partition=gpu \\
      launcher.gres=gpu:1g.20gb:1 launcher.timeout_min=120 launcher.array_parallelism=32
"""

ACTIONS = {
    "launch": "launch every job that is not done, queued or running",
    "status": "count done / incomplete / not launched jobs and show why jobs failed",
    "delete_incomplete": "delete the folders of failed and interrupted jobs (to start them over)",
}


def _add_definition(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the sweep")
    group.add_argument(
        "--output-dir",
        required=True,
        type=Path,
        help="the sweep's folder: one folder per job inside",
    )
    group.add_argument("--datasets", nargs="+", required=True, metavar="NAME", help="data sets")
    group.add_argument("--algorithms", nargs="+", required=True, metavar="NAME", help="algorithms")
    group.add_argument(
        "--test-envs",
        nargs="+",
        default=["single"],
        metavar="ENVS",
        help="'single': each environment alone (default); 'all': every environment and every pair "
        "(DomainBed's default, needed by leave-one-domain-out selection); or lists such as 0 1 0,1",
    )
    group.add_argument(
        "--n-hparams",
        type=int,
        default=20,
        help="hparams_seed runs up to this, exclusive (default 20)",
    )
    group.add_argument(
        "--n-hparams-from", type=int, default=0, help="first hparams_seed (default 0: the defaults)"
    )
    group.add_argument("--n-trials", type=int, default=3, help="trial_seed 0 .. N-1 (default 3)")
    group.add_argument(
        "--name", help="the sweep's name, its wandb group (default: the output folder's name)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides key=value of every job, or of the launcher"
    )


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="launch a grid of jobs, show its status, delete incomplete jobs",
        description=__doc__.split("\n\n", 1)[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in ACTIONS.items():
        sub = actions.add_parser(
            action,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_definition(sub)
        sub.set_defaults(func=run, overrides_anywhere=True)
        if action == "launch":
            sub.add_argument(
                "--dry-run",
                action="store_true",
                help="list the jobs it would launch, launch nothing",
            )
            sub.add_argument(
                "--write-jobs",
                type=Path,
                metavar="FILE",
                help="write the jobs it would launch to FILE, one line of overrides each (for slurm/array.sbatch), launch nothing",
            )
            sub.add_argument(
                "--skip-disk-check",
                action="store_true",
                help="launch even if the disk looks too small",
            )
        if action == "status":
            sub.add_argument(
                "-v", "--verbose", action="store_true", help="also list every job and its state"
            )
            sub.add_argument(
                "--lines", type=int, default=10, help="lines of each error to show (default 10)"
            )
        if action == "delete_incomplete":
            sub.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")


def _split_words(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Move key=value words that the list options swallowed to the overrides; split the
    overrides into the jobs' and the launcher's."""
    from sage_bench.sweep.launchers import is_launcher_override

    overrides = list(args.overrides)
    for name in ("datasets", "algorithms", "test_envs"):
        values = getattr(args, name)
        overrides += [v for v in values if "=" in v]
        setattr(args, name, [v for v in values if "=" not in v])
    job = [o for o in overrides if not is_launcher_override(o)]
    launcher = [o for o in overrides if is_launcher_override(o)]
    return job, launcher


def _test_envs(values: list[str]) -> str | list[list[int]]:
    from sage_bench.errors import UserError

    if values in (["single"], ["all"]):
        return values[0]
    lists = []
    for value in values:
        try:
            lists.append([int(e) for e in value.split(",")])
        except ValueError:
            raise UserError(
                f"bad --test-envs value {value!r}: use 'single', 'all', or lists of environment indices such as 0 1 0,1"
            ) from None
    return lists


def run(args: argparse.Namespace) -> int:
    from sage_bench.errors import UserError
    from sage_bench.sweep.plan import Sweep

    job_overrides, launcher_overrides = _split_words(args)
    if not args.datasets or not args.algorithms:
        raise UserError("--datasets and --algorithms each need at least one name")
    if args.n_hparams <= args.n_hparams_from or args.n_trials < 1:
        raise UserError(
            f"no seeds: --n-hparams-from {args.n_hparams_from} --n-hparams {args.n_hparams} --n-trials {args.n_trials}"
        )
    sweep = Sweep(
        output_dir=args.output_dir,
        datasets=args.datasets,
        algorithms=args.algorithms,
        test_envs=_test_envs(args.test_envs),
        hparams_seeds=range(args.n_hparams_from, args.n_hparams),
        trial_seeds=range(args.n_trials),
        overrides=job_overrides,
        name=args.name,
    )
    if args.action == "launch":
        return _launch(args, sweep, launcher_overrides)
    from sage_bench.sweep.state import sweep_states

    jobs = sweep.jobs()
    states = sweep_states(jobs)
    if args.action == "status":
        return _status(args, jobs, states)
    return _delete_incomplete(args, jobs, states)


def _status(args, jobs, states) -> int:
    from sage_bench.sweep.state import format_status

    if args.verbose:
        for job in jobs:
            print(f"{states[job.job_dir]:<13} {job.describe()}  {job.job_dir}")
        print()
    print(format_status(jobs, states, error_lines=args.lines))
    return 0


def _delete_incomplete(args, jobs, states) -> int:
    from sage_bench.errors import UserError
    from sage_bench.sweep.state import (
        FAILED,
        INTERRUPTED,
        QUEUED,
        RUNNING,
        delete_if_incomplete,
        sweep_queue,
    )

    doomed = [job for job in jobs if states[job.job_dir] in (FAILED, INTERRUPTED)]
    busy = sum(states[job.job_dir] in (QUEUED, RUNNING) for job in jobs)
    if busy:
        print(f"keeping {busy} queued or running jobs; cancel them first to delete them")
    if not doomed:
        print("no failed or interrupted job to delete")
        return 0
    print(
        f"about to delete the folders of {len(doomed)} failed or interrupted jobs in {args.output_dir}"
    )
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(
                "delete_incomplete asks for confirmation; add --yes to delete without asking"
            )
        if input("delete them? [y/N] ").strip().lower()[:1] != "y":
            print("nothing deleted")
            return 0
    # look again, under each job's lock: a job may have been resumed, finished or queued since
    queue = sweep_queue(doomed)
    kept = []
    for job in doomed:
        state = delete_if_incomplete(job.job_dir, queue)
        if state not in (FAILED, INTERRUPTED):
            kept.append((job, state))
    print(f"deleted {len(doomed) - len(kept)} job folders")
    if kept:
        print(f"kept {len(kept)} that changed since they were listed:")
        for job, state in kept:
            print(f"  {state:<13} {job.describe()}  {job.job_dir}")
    return 0


def _launch(args, sweep, launcher_overrides) -> int:
    from sage_bench.sweep.launch import launch_sweep

    return launch_sweep(
        sweep,
        launcher_overrides,
        dry_run=args.dry_run,
        write_jobs=args.write_jobs,
        skip_disk_check=args.skip_disk_check,
    )
