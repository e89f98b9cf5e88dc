"""Nash-MTL: multi-task learning as a bargaining game.

Paper: Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
Code: ``NashMTL`` in ``methods/weight_methods.py`` of AvivNavon/nash-mtl (cce1840), which clips
the shared gradient to norm 1 after the backward (``sources.py``).

The weights ``alpha`` solve ``alpha_k (G G^T alpha)_k = 1`` approximately, by the code's sequence
of convex problems (CCCP) on the normalised Gram matrix ``A = G G^T / n``, ``n = ||G G^T||_F``:
from the previous step's ``alpha`` (ones at the first step), up to ``optim_niter`` times solve,
with cvxpy and ECOS (``max_iters=100``),

    minimise  sum(A a) + phi'(alpha_t) (a - alpha_t) / n
    s.t.      -log(n a_k) - log((A a)_k) <= 0,  a >= 0,
    phi'(alpha_t) = 1/alpha_t + (1 / (A alpha_t)) A

and set ``alpha_t`` to the solution. The loop stops, keeping ``alpha_t`` (the iterate *before*
the last solve), when the solve left no value, when ``||A alpha_t - 1/(alpha_t + 1e-10)|| < 1e-3``,
or when the new solution moved less than 1e-6; it keeps the last solution after ``optim_niter``
solves. The shared direction is ``sum_k alpha_k g_k`` (no factor K; its squared norm
``alpha^T G G^T alpha`` is about ``K``) and head ``k`` gets ``alpha_k``.

Numerical behaviour kept from the authors' code: a solve that raises (ECOS refusing NaN or Inf
problem data where a row of ``A alpha_t`` is zero) or leaves no value (an infeasible problem)
ends the loop with the iterate it started from, so such a step keeps the previous step's weights;
the stopping test is taken at ``alpha_t``, so identical task gradients keep the previous weights
too. The weights are re-solved every ``update_weights_every`` steps and reused in between. One
deliberate difference: where every task gradient is zero (``||G G^T||_F = 0``) the authors' code
stops with cvxpy's "Parameter value must be real" (it divides by 0); here the previous weights are
kept, and the direction is zero whatever they are. The caller keeps ``state`` (the weights
``alpha`` and the step counter) between steps and in its checkpoints.

cvxpy and ECOS are an optional extra: ``pip install -e '.[mtl]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import torch

from sage_bench.aggregators import Row, register_aggregator
from sage_bench.errors import UserError
from sage_bench.hparams import AT_LEAST_ONE, HParam, const

INSTALL_HINT = "pip install -e '.[mtl]' (or: pip install 'cvxpy>=1.4' 'ecos>=2.0')"


class MissingSolverError(UserError, ImportError):
    """Nash-MTL's convex solver (cvxpy with ECOS) is not installed."""


def _cvxpy() -> Any:
    try:
        import cvxpy
    except ImportError as exc:
        raise MissingSolverError(
            f"aggregator 'nashmtl' (Nash-MTL) needs cvxpy with the ECOS solver; install them "
            f"with: {INSTALL_HINT}"
        ) from exc
    if "ECOS" not in cvxpy.installed_solvers():
        raise MissingSolverError(
            f"aggregator 'nashmtl' (Nash-MTL) solves with ECOS, which cvxpy {cvxpy.__version__} "
            f"does not find; install it with: {INSTALL_HINT}"
        )
    return cvxpy


class _CCCPProblem:
    """The convex problem of one CCCP iteration, as cvxpy parameters over ``K`` tasks."""

    def __init__(self, num_tasks: int, start: np.ndarray):
        cp = _cvxpy()
        self.cp = cp
        self.alpha = cp.Variable(shape=(num_tasks,), nonneg=True)
        self.previous = cp.Parameter(shape=(num_tasks,), value=start)
        self.gram = cp.Parameter(shape=(num_tasks, num_tasks), value=np.eye(num_tasks))
        self.scale = cp.Parameter(shape=(1,), value=np.array([1.0]))  # ||G G^T||_F
        gram_alpha = self.gram @ self.alpha
        slope = 1 / self.previous + (1 / (self.gram @ self.previous)) @ self.gram
        constraints = [
            -cp.log(self.alpha[k] * self.scale) - cp.log(gram_alpha[k]) <= 0
            for k in range(num_tasks)
        ]
        objective = cp.Minimize(
            cp.sum(gram_alpha) + slope @ (self.alpha - self.previous) / self.scale
        )
        self.problem = cp.Problem(objective, constraints)

    def solve(
        self, gram: np.ndarray, scale: np.ndarray, start: np.ndarray, max_iterations: int
    ) -> np.ndarray:
        """``alpha`` after up to ``max_iterations`` CCCP iterations from ``start``."""
        self.gram.value = gram
        self.scale.value = scale
        alpha_t = start
        for _ in range(max_iterations):
            self.alpha.value = alpha_t
            self.previous.value = alpha_t
            try:
                with warnings.catch_warnings():
                    # cvxpy warns that the problem is not DPP (each solve recompiles, as there)
                    # and numpy that 1 / (A alpha_t) divides by zero where a task's row is zero
                    warnings.simplefilter("ignore", UserWarning)
                    warnings.simplefilter("ignore", RuntimeWarning)
                    self.problem.solve(solver=self.cp.ECOS, warm_start=True, max_iters=100)
            except Exception:  # the authors' bare except: any failed solve keeps alpha_t
                self.alpha.value = self.previous.value
            solution = self.alpha.value
            if (
                solution is None
                or np.linalg.norm(gram @ alpha_t - 1 / (alpha_t + 1e-10)) < 1e-3
                or np.linalg.norm(solution - self.previous.value) < 1e-6
            ):
                break
            alpha_t = solution
        return alpha_t


_PROBLEMS: dict[int, _CCCPProblem] = {}


def nash_weights(
    gram: np.ndarray, norm: np.ndarray, previous: np.ndarray, optim_niter: int = 20
) -> np.ndarray:
    """Nash-MTL's ``alpha`` for the Gram matrix ``gram`` already divided by its Frobenius norm
    ``norm`` (shape ``(1,)``), from the previous weights ``previous``. The cvxpy problem for ``K``
    tasks is built once and reused, as the authors' object reuses its one problem."""
    num_tasks = gram.shape[0]
    if num_tasks not in _PROBLEMS:
        _PROBLEMS[num_tasks] = _CCCPProblem(num_tasks, previous)
    return _PROBLEMS[num_tasks].solve(gram, norm, previous, optim_niter)


def nashmtl_space(dataset: str | None = None) -> dict[str, HParam]:
    """20 CCCP iterations, weights re-solved every step (``--nashmtl-optim-niter``,
    ``--update-weights-every``); no search."""
    return {
        "optim_niter": HParam(20, const(20), "CCCP iterations per weight update", range=AT_LEAST_ONE),
        "update_weights_every": HParam(1, const(1), "re-solve the weights every this many steps", range=AT_LEAST_ONE),
    }


@register_aggregator(
    "nashmtl",
    space=nashmtl_space,
    clip={"NYUv2": 1.0, "Cityscapes": 0.0},  # nash-mtl clips it after the backward; FAMO's code does not
    row=Row(
        "Nash-MTL",
        doc="Nash-MTL (nash-mtl ``NashMTL``): ``sum_k alpha_k g_k`` with ``alpha_k (G G^T alpha)_k ~ 1`` "
        "from CCCP iterations of a cvxpy/ECOS problem, warm-started from the previous ``alpha``; head "
        "``k`` weight ``alpha_k``. Needs the ``mtl`` extra (cvxpy, ECOS): building the row without "
        "it raises ``MissingSolverError``, which says how to install it.",
    ),
    requires=lambda: _cvxpy(),  # before training starts, not at the first step
)
def nashmtl(
    grads: torch.Tensor,
    losses: torch.Tensor,
    *,
    state: MutableMapping[str, Any],
    optim_niter: int = 20,
    update_weights_every: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_k alpha_k g_k, alpha)``.

    ``state`` is the caller's mapping, empty at the first step; it holds ``"alpha"`` (a CPU
    tensor, the weights of the last solve) and ``"step"`` (steps taken).
    """
    _cvxpy()  # a clear message when the extra is missing, before any state changes
    num_tasks = grads.shape[0]
    step = int(state.get("step", 0))
    if "alpha" in state:  # float32 until the first solve that moves it, float64 after, as there
        previous = state["alpha"].detach().cpu().numpy().copy()
    else:
        previous = np.ones(num_tasks, dtype=np.float32)
    if previous.shape != (num_tasks,):
        raise ValueError(f"state['alpha'] has shape {previous.shape}, expected ({num_tasks},)")
    gram = grads @ grads.T
    norm = torch.linalg.norm(gram).detach().cpu().numpy().reshape(1)
    if not np.isfinite(norm).all():
        raise ValueError("Nash-MTL got task gradients that are not finite")
    if step % update_weights_every == 0 and norm.item() > 0:
        gram = gram / norm.item()
        alpha = nash_weights(gram.detach().cpu().numpy(), norm, previous, optim_niter)
    else:  # between updates, and where every gradient is zero (the authors' code raises there)
        alpha = previous
    state["alpha"] = torch.from_numpy(np.array(alpha, copy=True))
    state["step"] = step + 1
    weights = state["alpha"].to(dtype=grads.dtype, device=grads.device)
    return weights @ grads, weights
