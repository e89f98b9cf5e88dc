"""The paper's small exact examples, computed and drawn: one module per analysis.

Each module's ``run(out_dir, ...)`` computes its quantities (never typing in the paper's
numbers except to compare with them), writes PNG figures and ``summary.json`` to ``out_dir``
and returns a ``Report`` whose ``render()`` is what ``sage-bench analyze`` prints.

- ``appendix_c``: the two-domain linear-Gaussian example, closed form and sampled;
- ``counterexample``: Counterexample 1's two constructions, and Theorem 1 on them;
- ``scale_invariance``: Appendix D / Figure 4, sharpness under function-preserving rescaling;
- ``trajectories``: Figure 2, ERM / SAM / SGLD / SAGE's noise on a two-minima toy;
- ``alignment``: Figure 5, the held-out gradient cosine logged by training jobs.
"""
