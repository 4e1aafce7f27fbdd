"""Conversions of graphs to and from ``torch.sparse`` and ``scipy.sparse`` matrices."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import (
    from_scipy_sparse_matrix,
    to_scipy_sparse_matrix,
    to_torch_csr_tensor,
)

from .._checks import check_graph, trust_csr
from .sparse import quiet_sparse_warnings

__all__ = ["from_scipy", "to_scipy", "to_torch_csr"]


def _parts(graph: Data) -> tuple[Tensor, Tensor, int]:
    ei, w, n = check_graph(graph, "graph")
    if w is None:
        w = torch.ones(ei.shape[1], device=ei.device)
    return ei, w, n


def to_torch_csr(graph: Data) -> Tensor:
    r"""The adjacency :math:`\mathbf{A}` as a ``torch.sparse_csr`` :math:`(N, N)` tensor.

    :math:`\mathbf{A}_{ij}` is the weight of edge :math:`j \to i` (row = target), so
    ``A @ X`` sums each node's incoming neighbours, as PyG's message passing does.

    Example:
        >>> g = Data(edge_index=torch.tensor([[1], [0]]), edge_weight=torch.tensor([0.5]), num_nodes=2)
        >>> to_torch_csr(g).to_dense()
        tensor([[0.0000, 0.5000],
                [0.0000, 0.0000]])

    Raises:
        ValueError: edges outside ``[0, num_nodes)``, weights of the wrong length, NaN or
            infinite weights.
        TypeError: not a ``Data``, or non-integer edges.
    """
    ei, w, n = _parts(graph)
    with quiet_sparse_warnings():
        return trust_csr(to_torch_csr_tensor(ei.flip(0), w, size=(n, n)))


def to_scipy(graph: Data):
    r"""The adjacency :math:`\mathbf{A}` (row = target) as a ``scipy.sparse.csr_matrix``."""
    ei, w, n = _parts(graph)
    return to_scipy_sparse_matrix(ei.flip(0).cpu(), w.detach().cpu(), n).tocsr()


def from_scipy(matrix) -> Data:
    r"""A graph from a square ``scipy.sparse`` adjacency with :math:`\mathbf{A}_{ij}` the weight
    of edge :math:`j \to i`.

    Raises:
        TypeError: not a ``scipy.sparse`` matrix, or not real-valued.
        ValueError: not square, or NaN / infinite entries.
    """
    import numpy as np
    import scipy.sparse as sp

    if not sp.issparse(matrix):
        raise TypeError(f"matrix must be a scipy.sparse matrix, got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {matrix.shape}")
    if matrix.dtype.kind not in "biuf":
        raise TypeError(f"matrix must hold real numbers, got dtype {matrix.dtype}")
    matrix = matrix.tocoo()
    if matrix.nnz and not np.isfinite(matrix.data).all():
        raise ValueError("matrix contains NaN or infinite values")
    if matrix.dtype.kind != "f":
        matrix = matrix.astype(np.float32)
    ei, w = from_scipy_sparse_matrix(matrix)
    return Data(edge_index=ei.flip(0), edge_weight=w, num_nodes=matrix.shape[0])
