"""The orthogonal polar factor ``U V^T`` of a matrix ``G = U S V^T``, three ways.

- ``"svd"``: exact, from ``torch.linalg.svd`` (the reference); singular values below the
  usual rank tolerance count as zero, so a rank-deficient matrix gets ``U_r V_r^T``.
- ``"cubic"``: the Newton-Schulz iteration of the SAGE paper's Eq. 7,
  ``X_0 = G / ||G||_F``, ``X_{k+1} = X_k (3 I - X_k^T X_k) / 2``, which converges cubically to
  ``U V^T`` once the singular values of ``X_k`` are near 1 (slowly for tiny singular values).
- ``"quintic"``: Muon's quintic Newton-Schulz ("NewtonSchulz5" in the paper's Algorithm 1),
  ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` and ``(a, b, c) = (3.4445, -4.7750, 2.0315)``.
  Its coefficients trade exactness for speed: after 5 steps the singular values lie roughly in
  [0.7, 1.2] rather than at 1, which is what Muon and Algorithm 1 use.

All run in at least float32 (bf16/fp16 gradients are upcast; float64 stays float64; ``dtype=``
forces a precision) and accept a batch of same-shaped matrices
``(..., m, n)``. A zero matrix has no polar factor; here it maps to zero, never NaN.

Both iterations keep every iterate of the form ``X_k = P_k(A_0) X_0`` with ``A_0 = X_0 X_0^T``
on the short side ``r`` of an ``r x c`` matrix, and each step is ``X_{k+1} = q_k X_k`` with
``q_k`` a polynomial in ``A_k = X_k X_k^T``. For a wide matrix (``c > 1.5 r``) it is cheaper to
run the iteration on the ``r x r`` Gram matrix -- ``M_{k+1} = q_k M_k``,
``A_{k+1} = q_k^2 A_k`` -- and apply ``X_T = M_T X_0`` once at the end: ``2 r^2 c + O(steps r^3)``
multiply-adds instead of ``steps (2 r^2 c + r^3)``. Both forms compute the same iterates; the
cheaper one is chosen by shape (``gram=None``) and either can be forced. In bf16 only the direct
form is chosen: the Gram form multiplies the step polynomials together, and their rounding
errors add up (on gradient-like 3072x768 matrices, 5 quintic steps in bf16 give a factor with
cosine 0.59 to the float64 iterate in the Gram form and 0.98 in the direct form, which is what
Muon runs in bf16).
"""

from __future__ import annotations

import torch

POLAR_METHODS = ("quintic", "cubic", "svd")
QUINTIC_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_EPS = 1e-7


def _step_polynomial(method: str, gram: torch.Tensor) -> torch.Tensor:
    """``q(A)`` with ``X_{k+1} = q(A_k) X_k``: quintic ``a I + b A + c A^2``, cubic ``(3 I - A) / 2``."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    if method == "quintic":
        a, b, c = QUINTIC_COEFFICIENTS
        return a * eye + b * gram + c * (gram @ gram)
    return 1.5 * eye - 0.5 * gram


def _gram_form_is_cheaper(short: int, long: int, steps: int, method: str) -> bool:
    per_step_direct = 2 * short * short * long + (short**3 if method == "quintic" else 0)
    gram_form = 2 * short * short * long + (4 * steps - 3 if method == "quintic" else 3 * steps - 3) * short**3
    return gram_form < steps * per_step_direct


def polar_factor(
    g: torch.Tensor,
    method: str = "quintic",
    steps: int = 5,
    dtype: torch.dtype | None = None,
    gram: bool | None = None,
) -> torch.Tensor:
    """``U V^T`` of every matrix in ``g`` (shape ``(..., m, n)``), in ``g``'s dtype.

    ``steps`` is the number of Newton-Schulz iterations (ignored by ``"svd"``); ``dtype`` is
    the precision the computation runs in (``None``: ``g``'s own, at least float32); ``gram`` forces (``True``) or
    forbids (``False``) the Gram-matrix form of the iteration (``None``: whichever is cheaper).
    """
    if g.ndim < 2:
        raise ValueError(f"polar_factor needs matrices, got shape {tuple(g.shape)}")
    if method not in POLAR_METHODS:
        raise ValueError(f"unknown polar method {method!r}; valid choices: {', '.join(POLAR_METHODS)}")
    x = g.to(dtype if dtype is not None else torch.promote_types(g.dtype, torch.float32))
    norm = torch.linalg.matrix_norm(x, ord="fro", keepdim=True)
    if method == "svd":
        # U_r V_r^T over the numerically non-zero singular values: the partial isometry the
        # Newton-Schulz iterations converge to (they keep zero singular values at zero), so a
        # rank-deficient gradient -- a classifier's rows sum to zero -- has a unique factor
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        tolerance = s.amax(dim=-1, keepdim=True) * max(x.shape[-2:]) * torch.finfo(x.dtype).eps
        keep = (s > tolerance).to(x.dtype)
        return ((u * keep.unsqueeze(-2)) @ vh).to(g.dtype)

    transpose = x.shape[-2] > x.shape[-1]  # iterate on the short side: X X^T is the small Gram
    if transpose:
        x = x.mT
    x = x / (norm.mT if transpose else norm).clamp_min(_EPS)  # zero stays zero
    # Eq. 7 on the short side: X (3I - X^T X) / 2 == (3I - X X^T) X / 2
    if gram is None:
        accurate = x.dtype in (torch.float32, torch.float64)
        gram = accurate and _gram_form_is_cheaper(x.shape[-2], x.shape[-1], steps, method)
    if gram and steps > 0:
        a_k = x @ x.mT
        m = None
        for k in range(steps):
            q = _step_polynomial(method, a_k)
            m = q if m is None else q @ m
            if k < steps - 1:
                a_k = (q @ q) @ a_k
        x = m @ x
    else:
        for _ in range(steps):
            x = _step_polynomial(method, x @ x.mT) @ x
    if transpose:
        x = x.mT
    return x.to(g.dtype)


def orthogonality_error(q: torch.Tensor) -> torch.Tensor:
    """``||Q_s^T Q_s - I||_F / sqrt(r)`` on the short side ``r = min(m, n)``: 0 for a semi-orthogonal ``Q``."""
    short = q.mT if q.shape[-2] > q.shape[-1] else q
    gram = short @ short.mT
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.matrix_norm(gram - eye) / gram.shape[-1] ** 0.5
