"""Sweeps: plan the jobs of a grid, launch them (here, on every local GPU, or as SLURM job
arrays), see where they stand, and clean up; the ``sage-bench sweep`` command drives these.

Example::

    from sage_bench.sweep import Sweep, sweep_states, format_status
    sweep = Sweep("sweeps/digits", datasets=["RotatedDigits"], algorithms=["ERM"],
                  hparams_seeds=range(3), trial_seeds=range(2), overrides=["steps=200"])
    jobs = sweep.jobs()
    print(format_status(jobs, sweep_states(jobs)))
"""

from sage_bench.sweep.plan import Sweep, SweepJob, all_test_env_combinations, expand_grid
from sage_bench.sweep.state import format_status, sweep_states

__all__ = [
    "Sweep",
    "SweepJob",
    "all_test_env_combinations",
    "expand_grid",
    "format_status",
    "sweep_states",
]
