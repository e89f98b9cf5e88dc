"""Which repository's run produced each Table 2 row, and whether that code clips the shared
gradient.

The repositories of the lineage clip differently (all with ``clip_grad_norm_(shared, 1.0)``):

- AvivNavon/nash-mtl (cce1840) clips only Nash-MTL, after its backward.
- Cranial-XIX/FAMO (0a6ad06), OptMN-Lab/fairgrad (2b8cba1) and OptMN-Lab/SAMO (3b686c9) clip
  after the backward in PCGrad, CAGrad, GradDrop and FairGrad. Their base ``WeightMethod`` clips
  *before* ``loss.backward()``, which clips nothing, so LS, SI, RLW, DWA, UW, MGDA, IMTL-G,
  Nash-MTL and FAMO are unclipped there.
- Cranial-XIX/CAGrad (dc3d481) and LibMTL's MoCo do not clip.

Table 2's NYU-v2 rows LS to Nash-MTL come from the Nash-MTL paper (nash-mtl's code; its GradDrop
row from the CAGrad repository, which nash-mtl lacks), the Cityscapes rows and FAMO from the
FAMO paper (FAMO's code), FairGrad from its paper (fairgrad's code) and MoCo from earlier papers
(LibMTL's port does not clip). The clip itself is the algorithm's business; this table says what
the source did. ``"ls"``, ``"mgda"`` and ``"fairgrad"`` are listed for completeness.
"""

from __future__ import annotations

from sage_bench.errors import UserError

#: ``SOURCE_MAX_NORM[dataset][method]``: the ``max_norm`` the source clips the shared gradient
#: to after aggregation (0.0: no clip).
SOURCE_MAX_NORM: dict[str, dict[str, float]] = {
    "NYUv2": {
        "ls": 0.0, "si": 0.0, "rlw": 0.0, "dwa": 0.0, "uw": 0.0, "mgda": 0.0,
        "pcgrad": 0.0, "graddrop": 0.0, "imtl": 0.0, "cagrad": 0.0,
        "nashmtl": 1.0, "famo": 0.0, "moco": 0.0, "fairgrad": 1.0,
    },
    "Cityscapes": {
        "ls": 0.0, "si": 0.0, "rlw": 0.0, "dwa": 0.0, "uw": 0.0, "mgda": 0.0,
        "pcgrad": 1.0, "graddrop": 1.0, "imtl": 0.0, "cagrad": 1.0,
        "nashmtl": 0.0, "famo": 0.0, "moco": 0.0, "fairgrad": 1.0,
    },
}  # fmt: skip


def source_max_norm(method: str, dataset: str) -> float:
    """The clip norm Table 2's source used for ``method`` on ``dataset`` (0.0: none)."""
    if dataset not in SOURCE_MAX_NORM:
        raise UserError(
            f"no Table 2 source for data set {dataset!r}; valid choices: {', '.join(SOURCE_MAX_NORM)}"
        )
    table = SOURCE_MAX_NORM[dataset]
    if method not in table:
        raise UserError(
            f"no Table 2 source for method {method!r}; valid choices: {', '.join(table)}"
        )
    return table[method]
