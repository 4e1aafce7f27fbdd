"""The propagation layer of GNN re-ranking (Zhang et al. 2020)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._checks import Check, Int, Ref, check_csr, check_index, check_tensor, checked
from .._params import MAX_ROUNDS
from ..graph.sparse import (
    csr,
    csr_add_transpose,
    csr_from_rows,
    csr_keep_largest,
    csr_row_normalize,
    quiet_sparse_warnings,
)
from .propagate import WeightedPropagation, is_sparse


def _num_rows(t) -> int:
    # the bound of the ids in ``neighbors``, read before it is checked (so anything goes)
    shape = getattr(t, "shape", None)
    if shape is not None and len(shape) >= 1:
        return int(shape[0])
    try:
        return len(t)
    except TypeError:
        return 0


def _check_similarities(x, name: str, *, neighbors: Tensor) -> Tensor:
    x = check_tensor(x, name, nan=False)
    if tuple(x.shape) != tuple(neighbors.shape):
        raise ValueError(
            f"{name} must have the shape of neighbors, {tuple(neighbors.shape)}, got "
            f"{tuple(x.shape)}"
        )
    return x


def _check_neighbors(x, name: str) -> Tensor:
    x = check_index(x, name, ndim=2, padding=True, unique=True, high=_num_rows(x))
    if x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one node (row), got shape {tuple(x.shape)}")
    return x


_NEIGHBOR_CHECKS = {
    "neighbors": Check(_check_neighbors),
    "similarities": Check(_check_similarities, neighbors=Ref("neighbors")),
}

__all__ = ["GNNRerankConv", "gnn_propagate", "gnn_rerank_graph"]


@checked(
    **_NEIGHBOR_CHECKS,
    k1=Int(low=1, high=Ref("neighbors", dim=1)),
    k2=Int(low=1, high=Ref("k1")),
)
def gnn_rerank_graph(
    neighbors: Tensor, similarities: Tensor, k1: int, k2: int
) -> tuple[Tensor, Tensor]:
    r"""The inputs of :class:`GNNRerankConv` from each node's ranked neighbour list.

    .. math::
        \mathbf{A}_{ij} = [\,j \in R_i^{k_1}\,], \qquad
        \mathbf{P}_{ij} = s_{ij}^2\,[\,j \in R_i^{k_2}\,],

    where :math:`R_i^{k}` holds the first :math:`k` items of node :math:`i`'s list (itself
    included) and :math:`s_{ij}` their similarities; ``-1`` entries (padding) are dropped.

    Args:
        neighbors: :math:`(N, K)` node ids, best first, :math:`K \ge k_1 \ge k_2`, distinct
            within a row, ``-1`` for padding.
        similarities: :math:`(N, K)` their similarities.
        k1: Length :math:`k_1` of the lists in the initial adjacency.
        k2: Length :math:`k_2` of the lists messages come from.

    Returns:
        ``(A, P)``: the binary adjacency and the propagation operator, both
        ``torch.sparse_csr`` :math:`(N, N)`.

    Example:
        >>> nbr = torch.tensor([[0, 1], [1, 0], [2, 1]])
        >>> sim = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 0.2]])
        >>> a, p = gnn_rerank_graph(nbr, sim, k1=2, k2=2)
        >>> a.to_dense()
        tensor([[1., 1., 0.],
                [1., 1., 0.],
                [0., 1., 1.]])
        >>> p.to_dense()
        tensor([[1.0000, 0.2500, 0.0000],
                [0.2500, 1.0000, 0.0000],
                [0.0000, 0.0400, 1.0000]])
    """
    n = neighbors.shape[0]
    if not bool(torch.isfinite(similarities.masked_fill(neighbors < 0, 0)).all()):
        raise ValueError("similarities must be finite where neighbors are not -1 (padding)")
    cols = neighbors[:, :k1].sort(dim=1).values
    a = csr_from_rows(cols, torch.ones_like(cols, dtype=similarities.dtype), n)
    cols2, order = neighbors[:, :k2].sort(dim=1)
    w = similarities[:, :k2].gather(1, order).square()
    return a, csr_from_rows(cols2, w, n)


class GNNRerankConv(WeightedPropagation):
    r"""One propagation layer of GNN re-ranking from the `"Understanding Image Retrieval
    Re-Ranking: A Graph Neural Network Perspective" <https://arxiv.org/abs/2012.07620>`_ paper.

    A node's feature is its row of the (propagated) adjacency :math:`\mathbf{A}`. One layer:

    .. math::
        \mathbf{A} \leftarrow \mathbf{A} + \mathbf{A}^\top, \qquad
        \mathbf{A}'_i = \sum_{j \in R_i^{k_2}} s_{ij}^2\, \mathbf{A}_j, \qquad
        \mathbf{A}'_i \leftarrow \mathbf{A}'_i / \lVert \mathbf{A}'_i \rVert_2,

    i.e. messages flow along the :math:`k_2`-nearest-neighbour edges :math:`j \to i` with
    weight :math:`s_{ij}^2` (``adj_t`` :math:`= \mathbf{P}` of :func:`gnn_rerank_graph`) and are
    summed. With a sparse :math:`\mathbf{A}` the fused aggregation is one sparse x sparse
    product; a dense :math:`\mathbf{A}` gives the same values.

    Shapes:
        - **input:** ``x`` :math:`(N, N)` sparse CSR or dense, ``adj_t`` sparse CSR
          :math:`(N, N)`
        - **output:** :math:`(N, N)`, the layout of ``x``

    Example:
        >>> nbr = torch.tensor([[0, 1], [1, 0], [2, 1]])
        >>> sim = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 0.2]])
        >>> a, p = gnn_rerank_graph(nbr, sim, k1=2, k2=2)
        >>> GNNRerankConv()(a, p).to_dense()
        tensor([[0.7053, 0.7053, 0.0705],
                [0.6804, 0.6804, 0.2722],
                [0.0346, 0.4676, 0.8833]])
    """

    def forward(self, x: Tensor, adj_t: Tensor) -> Tensor:  # type: ignore[override]
        adj_t = check_csr(adj_t, "adj_t", convert=True, square=True)
        n = adj_t.shape[0]
        if is_sparse(x):
            x = check_csr(x, "x", convert=True, shape=(n, n))
        else:
            x = check_tensor(x, "x", shape=(n, n), finite=True)
        if x.dtype != adj_t.dtype or x.device != adj_t.device:
            raise ValueError(
                f"x ({x.dtype} on {x.device}) and adj_t ({adj_t.dtype} on {adj_t.device}) "
                "must share dtype and device"
            )
        if x.layout == torch.sparse_csr:
            out = self.propagate(adj_t, x=csr_add_transpose(x))
            return csr_row_normalize(out)
        out = self.propagate(adj_t, x=x + x.T)
        return torch.nn.functional.normalize(out, dim=1, eps=torch.finfo(out.dtype).tiny)


@checked(
    **_NEIGHBOR_CHECKS,
    k1=Int(low=1),
    k2=Int(low=1),
    layers=Int(low=0, high=MAX_ROUNDS),
    max_nonzeros=Int(low=1, optional=True),
)
def gnn_propagate(
    neighbors: Tensor,
    similarities: Tensor,
    k1: int,
    k2: int,
    layers: int = 2,
    max_nonzeros: int | None = None,
) -> Tensor:
    r"""The propagated adjacency of GNN re-ranking: :func:`gnn_rerank_graph`, then ``layers``
    steps of :class:`GNNRerankConv` (none when :math:`k_2 = 1`, as in the reference, which then
    skips propagation and normalisation altogether).

    Args:
        neighbors: :math:`(M, K)` node ids, best first, the node itself first.
        similarities: :math:`(M, K)` their similarities.
        k1: Length :math:`k_1` of the initial lists (capped at :math:`M`).
        k2: Neighbours :math:`k_2` messages come from (capped at :math:`k_1`).
        layers: Propagation steps (at most ``MAX_ROUNDS``, 1000).
        max_nonzeros: Keep only this many largest entries per row after each layer
            (``None``: exact).

    Returns:
        :math:`\mathbf{A}`, a ``torch.sparse_csr`` :math:`(M, M)` tensor.

    Example:
        >>> nbr = torch.tensor([[0, 1], [1, 0], [2, 1]])
        >>> sim = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 0.2]])
        >>> torch.equal(gnn_propagate(nbr, sim, 2, 2, layers=1).to_dense(),
        ...             GNNRerankConv()(*gnn_rerank_graph(nbr, sim, 2, 2)).to_dense())
        True
    """
    m = neighbors.shape[0]
    n1 = min(k1, m)
    n2 = min(k2, n1)
    a, p = gnn_rerank_graph(neighbors, similarities, n1, n2)
    if k2 == 1:
        return a

    def finite(a: Tensor, where: str) -> None:
        if not bool(torch.isfinite(a.values()).all()):
            top = float(similarities.abs().max()) if similarities.numel() else 0.0
            raise ValueError(
                f"similarities overflow the propagation (infinite values in {where}; the "
                f"largest |similarity| is {top:.3g}): GNN re-ranking expects similarities "
                "such as cosines in [-1, 1]"
            )

    finite(a, "the initial graph")
    finite(p, "the squared-similarity weights")
    conv = GNNRerankConv()
    for layer in range(layers):
        a = conv(a, p)
        finite(a, f"layer {layer + 1} of {layers}")
        if max_nonzeros is not None:
            a = csr_keep_largest(a, max_nonzeros)
    return a


def _gnn_propagate_dense(
    neighbors: Tensor, similarities: Tensor, k1: int, k2: int, layers: int
) -> Tensor:
    """:func:`gnn_propagate` (exact, unchecked inputs) as a dense :math:`(M, M)` tensor: the
    form for graphs whose :math:`M \\times M` fits in memory, where the final score product
    is one dense GEMM (the rows fill up after two layers).

    On the CPU the layers run on SciPy CSR matrices (:math:`\\mathbf{A}^{(0)}` has
    :math:`k_1` non-zeros a row, :math:`\\mathbf{P}` :math:`k_2`: both layers are a few
    milliseconds at :math:`M = 1797`) and only the last layer's result is dense; elsewhere
    (CUDA, half precision) one sparse x dense product per layer on dense rows."""
    m = neighbors.shape[0]
    n1 = min(k1, m)
    n2 = min(k2, n1)
    if similarities.device.type == "cpu" and similarities.dtype in (torch.float32, torch.float64):
        return _propagate_scipy(neighbors, similarities, n1, n2, layers, k2 == 1)
    return _propagate_torch(neighbors, similarities, n1, n2, layers, k2 == 1)


def _propagate_torch(
    neighbors: Tensor, similarities: Tensor, n1: int, n2: int, layers: int, skip: bool
) -> Tensor:
    m = neighbors.shape[0]
    dt, dev = similarities.dtype, similarities.device
    cols = neighbors[:, :n1]
    a = torch.zeros(m, m, dtype=dt, device=dev)
    a.scatter_add_(1, cols.clamp(min=0), (cols >= 0).to(dt))  # -1 (padding) adds 0
    if skip:
        return a
    cols2, order = neighbors[:, :n2].sort(dim=1)
    p = csr_from_rows(cols2, similarities[:, :n2].gather(1, order).square(), m)
    tiny = torch.finfo(dt).tiny
    for _ in range(layers):
        a = p @ a.add_(a.T.contiguous())  # A + A^T, one transposed copy
        a.div_(torch.linalg.vector_norm(a, dim=1, keepdim=True).clamp_(min=tiny))
    return a


def _scipy_rows(cols: Tensor, vals, m: int):
    """A SciPy CSR :math:`(M, M)` matrix from padded rows of column ids (``-1``: none)."""
    import scipy.sparse as sp

    c = cols.numpy()
    keep = c >= 0
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(keep.sum(1), out=indptr[1:])
    data = np.broadcast_to(vals, c.shape)[keep]
    idx_dtype = np.int32 if m < 2**31 - 1 else np.int64
    return sp.csr_matrix((data, c[keep].astype(idx_dtype), indptr.astype(idx_dtype)), shape=(m, m))


def _scipy_layer(a, p):
    """One layer of :class:`GNNRerankConv` on SciPy CSR matrices: ``P (A + A^T)``, rows
    L2-normalised (from the stored values; rows without entries stay empty)."""
    a = (p @ (a + a.T)).tocsr()
    m = a.shape[0]
    starts = a.indptr[:-1]
    norm = np.zeros(m, dtype=a.dtype)
    full = starts < a.indptr[1:]
    if a.nnz:
        norm[full] = np.add.reduceat(a.data * a.data, starts[full])
    np.sqrt(norm, out=norm)
    a.data /= np.repeat(np.maximum(norm, np.finfo(a.dtype).tiny), np.diff(a.indptr))
    return a


def _propagate_scipy(
    neighbors: Tensor, similarities: Tensor, n1: int, n2: int, layers: int, skip: bool
) -> Tensor:
    # the layers on SciPy CSR (CPU): A + A^T and P (A + A^T) as sparse sums and products,
    # the row norms from the stored values (_scipy_layer); the last layer's P (A + A^T) is
    # torch's CSR x dense product into the dense result (a quarter faster than a sparse
    # product made dense afterwards)
    m = neighbors.shape[0]
    dt = similarities.dtype
    npdt = np.dtype(str(dt).removeprefix("torch."))
    a = _scipy_rows(neighbors[:, :n1], np.ones((), dtype=npdt), m)
    if skip or layers == 0:
        return torch.from_numpy(np.ascontiguousarray(a.toarray(), dtype=npdt))
    w = similarities[:, :n2].numpy().astype(npdt, copy=False)
    p = _scipy_rows(neighbors[:, :n2], w * w, m)
    tiny = np.finfo(npdt).tiny
    for _ in range(layers - 1):
        a = _scipy_layer(a, p)
    s = torch.from_numpy(np.ascontiguousarray((a + a.T).toarray(), dtype=npdt))
    pt = csr(
        torch.from_numpy(p.indptr.astype(np.int64)),
        torch.from_numpy(p.indices.astype(np.int64)),
        torch.from_numpy(p.data),
        (m, m),
        check=False,  # columns in neighbour order, not sorted
    )
    with quiet_sparse_warnings():
        out = pt @ s
    return out.div_(torch.linalg.vector_norm(out, dim=1, keepdim=True).clamp_(min=float(tiny)))


def _gnn_propagate_scipy(neighbors: Tensor, similarities: Tensor, k1: int, k2: int, layers: int):
    """:func:`gnn_propagate` (exact, unchecked CPU float32 / float64 inputs) as a SciPy CSR
    matrix, every layer sparse (:func:`_scipy_layer`): the input of the dense form's
    compiled score product (``rerankers.gnn``), which accumulates the rows of
    :math:`\\mathbf{A} \\mathbf{A}^\\top` from the non-zeros alone. No repeated entries
    (columns not sorted: sorting them would cost as much as the layer)."""
    m = neighbors.shape[0]
    n1 = min(k1, m)
    n2 = min(k2, n1)
    npdt = np.dtype(str(similarities.dtype).removeprefix("torch."))
    a = _scipy_rows(neighbors[:, :n1], np.ones((), dtype=npdt), m)
    if k2 != 1:
        w = similarities[:, :n2].numpy().astype(npdt, copy=False)
        p = _scipy_rows(neighbors[:, :n2], w * w, m)
        for _ in range(layers):
            a = _scipy_layer(a, p)
    return a
