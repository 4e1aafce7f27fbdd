"""Batched conjugate gradients for many right-hand sides at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_csr, check_int, check_real, check_tensor

__all__ = ["CGResult", "conjugate_gradient"]

Operator = Tensor | Callable[[Tensor], Tensor]


class CGResult(NamedTuple):
    """Result of :func:`conjugate_gradient`.

    Attributes:
        solution: :math:`(N,)` or :math:`(N, m)`, like the right-hand side.
        iterations: :math:`(m,)` int64, iterations run for each column.
        residuals: :math:`(m,)` relative residual :math:`\\lVert b - Ax\\rVert / \\lVert b\\rVert`
            of each returned column (computed afresh, not the recursive estimate).
        converged: :math:`(m,)` bool, whether the column met ``tol``.
    """

    solution: Tensor
    iterations: Tensor
    residuals: Tensor
    converged: Tensor


def check_operator(A: Operator, n: int, like: Tensor, names: tuple[str, str] = ("A", "B")):
    """Check the system matrix of a solve against its right-hand sides ``like``
    :math:`(N, m)`: a callable passes; a sparse matrix is checked as CSR (COO converted), a
    dense one for finiteness; both must be square :math:`(N, N)` on the device and of the
    dtype of ``like``."""
    a_name, b_name = names
    if callable(A) and not isinstance(A, Tensor):
        return A
    if not isinstance(A, Tensor):
        raise TypeError(
            f"{a_name} must be a tensor (dense or sparse) or a callable, got {type(A).__name__}"
        )
    if A.layout in (torch.sparse_csr, torch.sparse_coo):
        A = check_csr(A, a_name, convert=True)
    else:
        A = check_tensor(A, a_name, ndim=2, finite=True, detach=True)
    if A.dim() != 2 or A.shape[0] != A.shape[1] or A.shape[0] != n:
        raise ValueError(
            f"{a_name} must be a square ({n}, {n}) matrix to match {b_name}, got {tuple(A.shape)}"
        )
    if A.device != like.device:
        raise ValueError(f"{a_name} is on {A.device} but {b_name} is on {like.device}")
    if A.dtype != like.dtype:
        raise ValueError(
            f"{a_name} has dtype {A.dtype} but {b_name} has dtype {like.dtype}; use one dtype"
        )
    return A


def _matvec(A: Operator, n: int, like: Tensor, names=("A", "B")) -> Callable[[Tensor], Tensor]:
    A = check_operator(A, n, like, names)
    if not isinstance(A, Tensor):
        return _checked_callable(A, n, like, names[0])

    def matvec(X: Tensor) -> Tensor:
        if X.shape[1] == 1:  # a sparse matrix-vector product is faster than with an (N, 1) block
            return (A @ X[:, 0]).unsqueeze(1)
        return A @ X

    return matvec


def _checked_callable(fn, n: int, like: Tensor, name: str) -> Callable[[Tensor], Tensor]:
    def matvec(X: Tensor) -> Tensor:
        out = fn(X)
        if not isinstance(out, Tensor) or out.shape != X.shape:
            raise ValueError(
                f"{name} must map an {tuple(X.shape)} block to one of the same shape, got "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        return out.to(like.dtype)

    return matvec


def _coldot(a: Tensor, b: Tensor) -> Tensor:
    """Column-wise inner products of two :math:`(N, m)` blocks."""
    if a.shape[1] == 1:
        return (a[:, 0] @ b[:, 0]).reshape(1)
    return (a * b).sum(0)


def conjugate_gradient(
    A: Operator,
    B: Tensor,
    *,
    x0: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 20,
    return_best: bool = False,
) -> CGResult:
    r"""Solve :math:`\mathbf{A}\mathbf{X} = \mathbf{B}` for a symmetric positive-definite
    :math:`\mathbf{A}` by conjugate gradients, all columns of :math:`\mathbf{B}` at once.

    Each iteration costs one product of :math:`\mathbf{A}` with an :math:`(N, m)` block (one
    sparse-dense product for a sparse :math:`\mathbf{A}`), never a loop over columns. Column
    :math:`j` stops when its relative residual

    .. math::
        \lVert \mathbf{b}_j - \mathbf{A}\mathbf{x}_j \rVert_2 \le
        \mathrm{tol} \cdot \lVert \mathbf{b}_j \rVert_2

    (the recursive residual, as SciPy and MATLAB test it) or after ``max_iter`` iterations;
    stopped columns are frozen while the others go on. With ``x0 = 0`` (the default),
    ``tol=1e-6`` and ``max_iter=20`` this is the solver setting of the reference diffusion codes,
    which at :math:`\alpha = 0.99` stop at the iteration cap and so define their rankings.

    Args:
        A: :math:`(N, N)` SPD matrix: a ``torch.sparse_csr`` / ``sparse_coo`` or dense tensor, or
            a callable mapping an :math:`(N, m)` block to :math:`\mathbf{A}` times it.
        B: Right-hand sides :math:`(N,)` or :math:`(N, m)`, float32 or float64.
        x0: Initial guess shaped like ``B`` (zeros by default).
        tol: Relative residual tolerance (at least the dtype's epsilon: a smaller one, 0
            included, stops there, where further steps only break down on rounding noise).
        max_iter: Iteration cap (0 returns ``x0``).
        return_best: Return, for each column, the iterate of lowest recursive residual instead
            of the last one (MATLAB ``pcg`` does this when it does not converge).

    Returns:
        :class:`CGResult` ``(solution, iterations, residuals, converged)``.

    Raises:
        ValueError: shapes, dtypes or devices disagree, a corrupt sparse matrix, NaN or
            infinite values, or :math:`\mathbf{A}` is found not to be positive definite
            (:math:`\mathbf{p}^\top\mathbf{A}\mathbf{p} \le 0`).

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> B = torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
        >>> out = conjugate_gradient(A, B, tol=1e-12, max_iter=10)
        >>> out.solution
        tensor([[ 0.0909, -0.0909],
                [ 0.6364,  0.3636]], dtype=torch.float64)
        >>> out.iterations.tolist(), out.converged.tolist()
        ([2, 2], [True, True])
    """
    return _solve(A, B, x0=x0, tol=tol, max_iter=max_iter, return_best=return_best)


def _solve(A, B, *, x0, tol, max_iter, return_best, names=("A", "B")) -> CGResult:
    a_name, b_name = names
    B = check_tensor(B, b_name, ndim=(1, 2), finite=True, detach=True)
    tol = check_real(tol, "tol", low=0, finite=True)
    max_iter = check_int(max_iter, "max_iter", low=0)
    if not isinstance(return_best, bool):
        raise TypeError(f"return_best must be a bool, got {return_best!r}")
    vector = B.dim() == 1
    Bm = B[:, None] if vector else B
    n, m = Bm.shape
    matvec = _matvec(A, n, Bm, names)
    # right-hand sides whose squared norms would overflow are solved scaled (the system is
    # linear; relative residuals do not change)
    # right-hand sides so small that their squared norms underflow are scaled too (else a
    # non-zero column would look solved by x = 0)
    scale = None
    if Bm.numel() and _needs_scaling(Bm, n):
        scale = Bm.abs().amax(0).clamp(min=torch.finfo(Bm.dtype).tiny)
        Bm = Bm / scale
        if x0 is not None:
            x0 = check_tensor(x0, "x0", finite=True, detach=True)
            if x0.shape == B.shape:  # (a wrong shape is refused below)
                x0 = x0 / (scale[0] if vector else scale)
    if x0 is None:
        X = torch.zeros_like(Bm)
        R = Bm.clone()
    else:
        x0 = check_tensor(x0, "x0", finite=True, detach=True)
        if x0.shape != B.shape:
            raise ValueError(
                f"x0 must have the shape of {b_name} {tuple(B.shape)}, got {tuple(x0.shape)}"
            )
        X = (x0[:, None] if vector else x0).to(Bm).clone()
        R = Bm - matvec(X)
    bnorm2 = (Bm * Bm).sum(0)
    # below a relative residual of the dtype's epsilon the iteration only turns rounding noise
    # into a breakdown (p^T A p = 0 with tol = 0): that is as converged as the dtype allows
    tol_eff = max(float(tol), float(torch.finfo(Bm.dtype).eps))
    thresh = (tol_eff * tol_eff) * bnorm2
    if m == 1:
        X, iters, done = _cg_one_column(matvec, X, R, thresh, max_iter, return_best, a_name)
    else:
        X, iters, done = _cg_block(matvec, X, R, thresh, max_iter, return_best, a_name)
    true_r = Bm - matvec(X)
    res = (true_r * true_r).sum(0).sqrt() / torch.where(bnorm2 > 0, bnorm2.sqrt(), 1)
    if scale is not None:
        X = X * scale
    sol = X[:, 0] if vector else X
    return CGResult(sol, iters, res, done)


def _needs_scaling(Bm: Tensor, n: int) -> bool:
    """Whether a column's squared norm (times ``tol**2``) could overflow or underflow."""
    info = torch.finfo(Bm.dtype)
    amax = Bm.abs().amax(0)
    huge = bool((amax > info.max**0.5 / (4 * n**0.5)).any())
    tiny = bool(((amax > 0) & (amax < info.tiny**0.25)).any())
    return huge or tiny


def _cg_rows(matvec, B: Tensor, tol: float, max_iter: int, name: str = "A") -> Tensor:
    r"""Conjugate gradients on many independent systems stored as the *rows* of ``B``
    :math:`(m, n)` (``matvec`` maps such a block to the products of each system's matrix
    with its row), from :math:`\mathbf{x} = 0`.

    The iteration of :func:`_cg_block` (the same recurrences, stopping test and frozen
    columns), with contiguous row-wise reductions and fewer, larger operations: the offline
    precompute runs it on blocks of many truncated systems. Right-hand sides are expected in
    a safe range (the unit vectors of offline diffusion); no rescaling is done.
    """
    X = torch.zeros_like(B)
    R = B.clone()
    rr = torch.linalg.vecdot(R, R)
    tol_eff = max(float(tol), float(torch.finfo(B.dtype).eps))  # as in conjugate_gradient
    thresh = (tol_eff * tol_eff) * rr
    done = rr <= thresh
    P = R.clone()
    for _ in range(max_iter):
        if bool(done.all()):
            break
        AP = matvec(P)
        pap = torch.linalg.vecdot(P, AP)
        if bool((pap.masked_fill(done, 1) <= 0).any()):
            raise _not_spd(name)
        # frozen rows (done) get step 0; their 0/0 or x/0 quotients are masked away
        step = (rr / pap).masked_fill_(done, 0)[:, None]
        X.addcmul_(P, step)
        R.addcmul_(AP, step, value=-1)
        rr_new = torch.linalg.vecdot(R, R)
        beta = (rr_new / rr).masked_fill_(done, 0)[:, None]
        P = torch.addcmul(R, P, beta)
        rr = torch.where(done, rr, rr_new)
        done = done | (rr_new <= thresh)
    return X


def _not_spd(name: str = "A") -> ValueError:
    return ValueError(f"{name} is not positive definite: p^T A p <= 0 during conjugate gradients")


def _cg_one_column(matvec, X, R, thresh, max_iter, return_best, name="A"):
    """The same iteration for a single right-hand side, with scalar steps (fewer operations:
    a single query's latency is dominated by them)."""
    x, r = X[:, 0], R[:, 0].clone()
    rr = r @ r
    done = bool(rr <= thresh[0])
    it = 0
    p = r.clone()
    best, best_rr = (x.clone(), rr) if return_best else (None, None)
    while not done and it < max_iter:
        ap = matvec(p[:, None])[:, 0]
        pap = p @ ap
        if bool(pap <= 0):
            raise _not_spd(name)
        step = rr / pap
        x.addcmul_(p, step)
        r.addcmul_(ap, step, value=-1)
        rr_new = r @ r
        it += 1
        p.mul_(rr_new / rr).add_(r)
        if return_best and bool(rr_new < best_rr):
            best, best_rr = x.clone(), rr_new
        rr = rr_new
        done = bool(rr_new <= thresh[0])
    if return_best and not done:
        x = best
    device = X.device
    return (
        x[:, None],
        torch.tensor([it], dtype=torch.long, device=device),
        torch.tensor([done], device=device),
    )


def _cg_block(matvec, X, R, thresh, max_iter, return_best, name="A"):
    m = X.shape[1]
    rr = _coldot(R, R)
    done = rr <= thresh
    iters = torch.zeros(m, dtype=torch.long, device=X.device)
    P = R.clone()
    if return_best:
        best, best_rr = X.clone(), rr.clone()
    for _ in range(max_iter):
        if bool(done.all()):
            break
        AP = matvec(P)
        pap = _coldot(P, AP)
        active = ~done
        if bool(((pap <= 0) & active).any()):
            raise _not_spd(name)
        # frozen columns (done) get step 0; their 0/0 or x/0 quotients are masked away
        alpha = (rr / pap).masked_fill_(done, 0)
        X.addcmul_(P, alpha)
        R.addcmul_(AP, alpha, value=-1)
        rr_new = _coldot(R, R)
        iters += active
        beta = (rr_new / rr).masked_fill_(done, 0)
        P.mul_(beta).add_(R)
        if return_best:
            better = active & (rr_new < best_rr)
            if bool(better.any()):
                best = torch.where(better, X, best)
                best_rr = torch.where(better, rr_new, best_rr)
        rr = torch.where(active, rr_new, rr)
        done = done | (rr_new <= thresh)
    if return_best:
        X = torch.where(done, X, best)
    return X, iters, done
