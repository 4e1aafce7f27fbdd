r"""Early truncation (Iscen et al., CVPR 2017): diffusion on a re-normalised sub-graph per query,
all queries of a batch solved as one block-diagonal system."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_csr, check_in, check_index, check_real, check_tensor
from ..graph.sparse import compact_csr, coo_to_csr, csr
from ..typing import ITERATES
from .cg import CGResult, _solve
from .operators import shifted_identity

__all__ = ["truncated_diffuse", "truncated_normalized", "truncated_operator"]


def _check_affinity(affinity: Tensor) -> Tensor:
    if not isinstance(affinity, Tensor):
        raise TypeError(f"affinity must be a sparse tensor, got {type(affinity).__name__}")
    if affinity.dim() != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"affinity must be a square (N, N) matrix, got {tuple(affinity.shape)}")
    a = check_csr(affinity, "affinity", convert=True)
    if affinity.layout == torch.sparse_csr:
        return a.detach()
    coo = a.detach().to_sparse_coo().coalesce()
    n = affinity.shape[0]
    return coo_to_csr(coo.indices(), coo.values(), (n, n))


def truncated_normalized(affinity: Tensor, subsets: Tensor) -> Tensor:
    r"""The re-normalised sub-graphs :math:`\mathbf{D}_b^{-1/2}\mathbf{A}_b\mathbf{D}_b^{-1/2}` of
    early truncation, stacked block-diagonally as in :func:`truncated_operator` (which is
    :math:`\mathbf{I} - \alpha` times this).

    Args:
        affinity: Unnormalised symmetric affinity :math:`(N, N)`, sparse.
        subsets: :math:`(B, T)` int64 node subsets, ``-1`` padding.

    Returns:
        :math:`(B T, B T)` ``torch.sparse_csr`` tensor.
    """
    A = _check_affinity(affinity)
    if not isinstance(subsets, Tensor) or subsets.dim() != 2 or subsets.dtype != torch.int64:
        raise ValueError(
            f"subsets must be a (B, T) int64 tensor, got {getattr(subsets, 'dtype', subsets)} "
            f"of shape {tuple(getattr(subsets, 'shape', ()))}"
        )
    check_index(subsets, "subsets", high=A.shape[0], padding=True, unique=True)
    if subsets.device != A.device:
        raise ValueError(f"subsets are on {subsets.device} but affinity is on {A.device}")
    n = A.shape[0]
    nb, t = subsets.shape
    device = A.device
    crow, col, val = A.crow_indices().long(), A.col_indices().long(), A.values()
    flat = subsets.reshape(-1)
    valid = flat >= 0
    node = flat.clamp(min=0)
    start = crow[node]
    count = (crow[node + 1] - start) * valid
    # every stored edge of every subset row, as (local row, global column, weight)
    row_local = torch.repeat_interleave(torch.arange(nb * t, device=device), count)
    offset = torch.arange(row_local.numel(), device=device) - torch.repeat_interleave(
        count.cumsum(0) - count, count
    )
    eid = start[row_local] + offset
    gcol, w = col[eid], val[eid]
    block = torch.div(row_local, t, rounding_mode="floor")
    # position of the column inside its block's subset (searchsorted over sorted keys)
    big = n + 1
    ssub, perm = torch.where(subsets >= 0, subsets, n).sort(dim=1)
    skeys = (torch.arange(nb, device=device)[:, None] * big + ssub).reshape(-1)
    qkeys = block * big + gcol
    pos = torch.searchsorted(skeys, qkeys).clamp_(max=max(skeys.numel() - 1, 0))
    found = skeys[pos] == qkeys if skeys.numel() else torch.zeros_like(qkeys, dtype=torch.bool)
    r = row_local[found]
    c = block[found] * t + perm.reshape(-1)[pos[found]]
    w = w[found]
    deg = torch.zeros(nb * t, dtype=val.dtype, device=device).index_add_(0, r, w)
    dinv = deg.rsqrt().masked_fill_(deg <= 0, 0)
    # rows come out sorted (one subset row after the other), so the CSR is direct
    crow = torch.zeros(nb * t + 1, dtype=torch.long, device=device)
    crow[1:] = torch.bincount(r, minlength=nb * t).cumsum(0)
    return compact_csr(csr(crow, c, dinv[r] * w * dinv[c], (nb * t, nb * t)))


def truncated_operator(affinity: Tensor, subsets: Tensor, alpha: float = 0.99) -> Tensor:
    r"""The block-diagonal system of early truncation: one re-normalised sub-graph per query.

    For query :math:`b` with node subset :math:`\mathcal{T}_b` (its top :math:`N_t` database
    items by first-stage similarity), the sub-affinity is re-normalised on its own
    (MATLAB ``trunclap``):

    .. math::
        \mathbf{L}_b = \mathbf{I} - \alpha\,\mathbf{D}_b^{-1/2}\mathbf{A}_b\mathbf{D}_b^{-1/2},
        \qquad \mathbf{A}_b = \mathbf{A}[\mathcal{T}_b, \mathcal{T}_b],
        \quad (\mathbf{D}_b)_{ii} = \textstyle\sum_j (\mathbf{A}_b)_{ij},

    with :math:`d^{-1/2} = 0` for nodes isolated in the sub-graph. The blocks are stacked on the
    diagonal of one :math:`(B T, B T)` sparse matrix, block :math:`b` at rows
    :math:`bT \dots bT + T - 1` in the order of ``subsets[b]``. Padding entries (``-1``) become
    isolated nodes with an identity row, which keeps a zero right-hand side at exactly zero.

    Args:
        affinity: The *unnormalised* symmetric affinity :math:`\mathbf{A}` :math:`(N, N)`, sparse
            (e.g. ``to_torch_csr(knn_graph(x, k, symmetrize="mutual", gamma=3))``).
        subsets: :math:`(B, T)` int64 node indices per query, distinct within a row, ``-1`` for
            padding.
        alpha: :math:`\alpha \in [0, 1)`.

    Returns:
        :math:`(B T, B T)` ``torch.sparse_csr`` tensor.

    Example:
        >>> A = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).to_sparse_csr()
        >>> truncated_operator(A, torch.tensor([[1, 0]]), alpha=0.5).to_dense()
        tensor([[ 1.0000, -0.5000],
                [-0.5000,  1.0000]])
    """
    alpha = check_real(alpha, "alpha", low=0, high=1, high_open=True)
    S = truncated_normalized(affinity, subsets).to_sparse_coo().coalesce()
    rows, cols = S.indices()
    return shifted_identity(rows, cols, S.values(), S.shape[0], alpha)


def truncated_diffuse(
    affinity: Tensor,
    subsets: Tensor,
    y: Tensor,
    *,
    alpha: float = 0.99,
    tol: float = 1e-6,
    max_iter: int = 20,
    iterate: str = "best",
) -> CGResult:
    r"""Early-truncated diffusion of many queries in one conjugate-gradient call.

    Query :math:`b` solves :math:`\mathbf{L}_b\,\mathbf{f}_b = \mathbf{y}_b` on its own
    sub-graph (:func:`truncated_operator`). The blocks are independent, so each query is one
    column of a batched CG whose operator applies block :math:`b` to column :math:`b`: one
    sparse product with the block-diagonal matrix per iteration, and per-query residuals and
    stopping exactly as if each query were solved alone.

    Args:
        affinity: Unnormalised affinity :math:`\mathbf{A}` :math:`(N, N)`, sparse.
        subsets: :math:`(B, T)` node subsets, ``-1`` padding.
        y: :math:`(T, B)` right-hand sides on the subsets (row :math:`i` of column :math:`b`
            belongs to node ``subsets[b, i]``; zero at padding).
        alpha: :math:`\alpha`, reference 0.99.
        tol: Relative residual tolerance, reference 1e-6.
        max_iter: Iteration cap, reference 20.
        iterate: ``"best"`` (lowest residual, MATLAB ``pcg``) or ``"last"``.

    Returns:
        :class:`~graphrerank.diffusion.CGResult` with ``solution`` :math:`(T, B)`.

    Example:
        >>> A = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).to_sparse_csr()
        >>> y = torch.tensor([[1.0], [0.0]])
        >>> truncated_diffuse(A, torch.tensor([[0, 1]]), y, alpha=0.5, tol=1e-12).solution
        tensor([[1.3333],
                [0.6667]])
    """
    check_in(iterate, "iterate", ITERATES)
    if not isinstance(subsets, Tensor) or subsets.dim() != 2:
        raise ValueError(f"subsets must be a (B, T) int64 tensor, got {type(subsets).__name__}")
    nb, t = subsets.shape
    y = check_tensor(y, "y", ndim=2, finite=True, detach=True)
    if y.shape != (t, nb):
        raise ValueError(f"y must have shape ({t}, {nb}) = (T, B), got {tuple(y.shape)}")
    alpha = check_real(alpha, "alpha", low=0, high=1, high_open=True)
    S = truncated_normalized(affinity, subsets)
    if S.dtype != y.dtype:
        raise ValueError(f"affinity has dtype {S.dtype} but y has dtype {y.dtype}; use one dtype")

    def matvec(X: Tensor) -> Tensor:
        # column b of X lives in block b: stack the columns, one product, unstack
        return X - alpha * (S @ X.t().reshape(-1, 1)).reshape(nb, t).t()

    return _solve(
        matvec,
        y,
        x0=None,
        tol=tol,
        max_iter=max_iter,
        return_best=(iterate == "best"),
        names=("affinity", "y"),
    )
