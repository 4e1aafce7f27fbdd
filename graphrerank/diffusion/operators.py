r"""The system matrix of diffusion, :math:`\mathbf{L}_\alpha = \mathbf{I} - \alpha\mathbf{S}`,
built in one place for online diffusion, early truncation and offline diffusion."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from .._checks import Array, Index, Int, Real, Ref, check_csr, check_graph, check_real, checked
from ..graph.build import normalize_adjacency
from ..graph.sparse import coo_to_csr

__all__ = ["diffusion_operator", "laplacian_alpha", "shifted_identity"]


@checked(
    n=Int(low=0),
    rows=Index(ndim=1, high=Ref("n")),
    cols=Index(shape=Ref("rows", fn=lambda r: tuple(r.shape)), high=Ref("n")),
    values=Array(shape=Ref("rows", fn=lambda r: tuple(r.shape)), finite=True, detach=True),
    alpha=Real(),
)
def shifted_identity(rows: Tensor, cols: Tensor, values: Tensor, n: int, alpha: float) -> Tensor:
    r""":math:`\mathbf{I} - \alpha\mathbf{S}` as an :math:`(n, n)` ``torch.sparse_csr`` tensor
    (int32 indices where they fit) from the COO entries ``S[rows, cols] = values``; duplicate
    entries, and entries on the diagonal, are summed.

    Example:
        >>> shifted_identity(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0]),
        ...                  2, 0.5).to_dense()
        tensor([[ 1.0000, -0.5000],
                [-0.5000,  1.0000]])
    """
    diag = torch.arange(n, device=rows.device)
    idx = torch.cat([torch.stack([rows, cols]), torch.stack([diag, diag])], dim=1)
    v = torch.cat([-alpha * values, torch.ones(n, dtype=values.dtype, device=values.device)])
    return coo_to_csr(idx, v, (n, n))


def diffusion_operator(graph: Data | Tensor, alpha: float = 0.99) -> Tensor:
    r"""The system matrix :math:`\mathbf{L}_\alpha = \mathbf{I} - \alpha\mathbf{S}` of diffusion.

    .. math::
        \mathbf{L}_\alpha = \mathbf{I} - \alpha \mathbf{S}, \qquad
        \mathbf{S} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2},

    where :math:`\mathbf{S}` is the *already normalised* graph, e.g.
    ``knn_graph(x, k, symmetrize="mutual", gamma=3, normalize="sym")``. For a symmetric
    :math:`\mathbf{S}` (eigenvalues in :math:`[-1, 1]`) and :math:`0 \le \alpha < 1`,
    :math:`\mathbf{L}_\alpha` is symmetric positive definite, as conjugate gradients need.

    Args:
        graph: The normalised graph :math:`\mathbf{S}`: a :class:`~torch_geometric.data.Data`
            (``edge_weight`` = :math:`\mathbf{S}_{ij}` of edge :math:`j \to i`) or a sparse or
            dense :math:`(N, N)` tensor.
        alpha: :math:`\alpha \in [0, 1)`, reference 0.99.

    Returns:
        :math:`(N, N)` ``torch.sparse_csr`` tensor on the graph's device.

    Raises:
        ValueError: ``alpha`` outside :math:`[0, 1)`, or a non-square matrix.

    Example:
        >>> g = Data(edge_index=torch.tensor([[1, 0], [0, 1]]), edge_weight=torch.tensor([1.0, 1.0]),
        ...          num_nodes=3)
        >>> diffusion_operator(g, alpha=0.5).to_dense()
        tensor([[ 1.0000, -0.5000,  0.0000],
                [-0.5000,  1.0000,  0.0000],
                [ 0.0000,  0.0000,  1.0000]])
    """
    alpha = check_real(alpha, "alpha", low=0, high=1, high_open=True)
    if isinstance(graph, Data):
        if getattr(graph, "edge_weight", None) is None:
            raise ValueError("graph has no edge_weight: pass the normalised graph S")
        ei, w, n = check_graph(graph, "graph", weights=True)
        rows, cols, vals = ei[1], ei[0], w
    elif isinstance(graph, Tensor):
        if graph.dim() != 2 or graph.shape[0] != graph.shape[1]:
            raise ValueError(
                f"graph must be a square (N, N) matrix, got shape {tuple(graph.shape)}"
            )
        n = graph.shape[0]
        coo = _as_coo(graph, "graph")
        rows, cols = coo.indices()
        vals = coo.values()
    else:
        raise TypeError(
            f"graph must be a torch_geometric Data or a tensor, got {type(graph).__name__}"
        )
    return shifted_identity(rows, cols, vals, n, alpha)


def _as_coo(graph: Tensor, name: str) -> Tensor:
    """A checked square matrix (dense, COO or CSR) as a coalesced COO tensor."""
    a = check_csr(graph, name, convert=True, square=True)
    return a.detach().to_sparse_coo().coalesce()


def laplacian_alpha(graph: Data, alpha: float) -> Tensor:
    r""":math:`\mathbf{L}_\alpha = \mathbf{I} - \alpha\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}`
    of an *unnormalised* affinity graph :math:`\mathbf{A}` (``edge_weight``, ones when absent),
    as an :math:`(N, N)` ``torch.sparse_csr`` tensor with the diagonal stored and columns
    sorted: :func:`~graphrerank.graph.normalize_adjacency` (``"sym"``), then
    :func:`diffusion_operator`. Isolated nodes get :math:`d_i^{-1/2} = 0` (their row is the
    identity row).

    Example:
        >>> g = Data(edge_index=torch.tensor([[1, 0], [0, 1]]), edge_weight=torch.tensor([4.0, 4.0]),
        ...          num_nodes=3)
        >>> laplacian_alpha(g, 0.5).to_dense()
        tensor([[ 1.0000, -0.5000,  0.0000],
                [-0.5000,  1.0000,  0.0000],
                [ 0.0000,  0.0000,  1.0000]])
    """
    alpha = check_real(alpha, "alpha", low=0, high=1, high_open=True)
    ei, w, n = check_graph(graph, "graph")
    if w is None:
        w = torch.ones(ei.shape[1], device=ei.device)
    s = normalize_adjacency(ei, w, n, "sym")
    return diffusion_operator(Data(edge_index=ei, edge_weight=s, num_nodes=n), alpha)
