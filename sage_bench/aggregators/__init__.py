"""Multi-task gradient aggregators: pure functions of the per-task gradient matrix.

An aggregator combines the ``K x P`` matrix ``grads`` of per-task gradients of the shared
parameters (row ``k`` is task ``k``'s gradient, flattened) and the ``K`` task losses into the
gradient the optimizer receives for the shared parameters, *before any clipping*, with the scale
factor of its authors' code (e.g. LS sums the rows, MGDA returns ``K`` times the min-norm
combination). It returns ``(direction, weights)``: ``direction`` has shape ``(P,)``;
``weights`` has shape ``(K,)`` and is the coefficient each task's *head* gradient gets (``None``
where the method has none).

Aggregators never touch a network or ``.grad``; they are testable on 3 x 5 matrices and usable
outside the framework::

    from sage_bench.mtl import aggregate
    direction, weights = aggregate("mgda", grads, losses)

Keyword arguments are the method's hyperparameters (e.g. ``alpha`` for ``fairgrad``). Methods
with state between steps (a warm start) read and update the mutable mapping ``state`` that the
caller keeps (and checkpoints); methods that draw random numbers take a ``generator`` (a
``torch.Generator``) or values injected by the caller so a test can replay the authors' draws.

**A method is declared in one place**, its module, by ``register_aggregator``: the function,
its hyperparameter space (``sage_bench.hparams``' ``HParam`` with sampler and range), the clip
of each source repository and the Table 2 row that runs it (``Row``; the algorithm registry's
``register_algorithm`` is applied for it by ``sage_bench.algorithms.multitask``, through
``on_register``, whenever the method is registered)::

    @register_aggregator("mean", space=mean_space, clip={"NYUv2": 0.0, "Cityscapes": 0.0},
                         row=Row("Mean"))
    def mean(grads, losses, scale: float = 1.0): ...

Adding a method is that module plus its line in the import list at the bottom of this file.
``METHOD_SPACES`` and ``SOURCE_MAX_NORM`` are read-only views of the declarations.

**Clipping in the sources.** The repositories of the lineage clip differently (all with
``clip_grad_norm_(shared, 1.0)``), and each method's ``clip`` says what the repository behind
its Table 2 row did:

- AvivNavon/nash-mtl (cce1840) clips only Nash-MTL, after its backward.
- Cranial-XIX/FAMO (0a6ad06), OptMN-Lab/fairgrad (2b8cba1) and OptMN-Lab/SAMO (3b686c9) clip
  after the backward in PCGrad, CAGrad, GradDrop and FairGrad. Their base ``WeightMethod`` clips
  *before* ``loss.backward()``, which clips nothing, so LS, SI, RLW, DWA, UW, MGDA, IMTL-G,
  Nash-MTL and FAMO are unclipped there.
- Cranial-XIX/CAGrad (dc3d481) and LibMTL's MoCo do not clip.

Table 2's NYU-v2 rows LS to Nash-MTL come from the Nash-MTL paper (nash-mtl's code; its GradDrop
row from the CAGrad repository, which nash-mtl lacks), the Cityscapes rows and FAMO from the
FAMO paper (FAMO's code), FairGrad from its paper (fairgrad's code) and MoCo from earlier papers
(LibMTL's port does not clip). The clip itself is the row's business (``max_norm``).
"""

from __future__ import annotations

from sage_bench.aggregators.registry import (
    AGGREGATORS,
    METHOD_SPACES,
    METHODS,
    SOURCE_MAX_NORM,
    SOURCES,
    Aggregator,
    Method,
    Row,
    UnknownAggregatorError,
    aggregate,
    get_method,
    no_hparams,
    on_register,
    register_aggregator,
    source_max_norm,
)

__all__ = [
    "AGGREGATORS",
    "METHODS",
    "METHOD_SPACES",
    "SOURCES",
    "SOURCE_MAX_NORM",
    "Aggregator",
    "Method",
    "Row",
    "UnknownAggregatorError",
    "aggregate",
    "get_method",
    "no_hparams",
    "on_register",
    "register_aggregator",
    "source_max_norm",
]

# The methods register themselves on import (one module each), in Table 2's order.
from sage_bench.aggregators import (  # noqa: E402, F401, I001
    ls,
    mgda,
    fairgrad,
    pcgrad,
    graddrop,
    imtl,
    cagrad,
    moco,
    nashmtl,
    weighting,
)
