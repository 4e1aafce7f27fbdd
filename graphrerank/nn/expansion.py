"""Query expansion and database augmentation as one hop of message passing."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch_geometric.utils import cumsum

from .._checks import Array, Index, Int, Ref, check_in, check_real, checked
from ..graph.sparse import csr, csr_map_values
from .propagate import WeightedPropagation, check_nodes, check_propagation, is_sparse

__all__ = ["ExpansionPropagation", "bipartite_adjacency"]


@checked(
    num_sources=Int(low=0),
    indices=Index(high=Ref("num_sources"), padding=True, of="num_sources={high}"),
    values=Array(nan=False),
)
def bipartite_adjacency(indices: Tensor, values: Tensor, num_sources: int) -> Tensor:
    r"""Neighbour lists as a sparse :math:`(R, N)` adjacency (row = target, column = source).

    Row :math:`r` holds ``values[r, j]`` at column ``indices[r, j]``; ``-1`` entries (padding
    of an approximate search) are dropped. It links each of :math:`R` targets (queries, or
    shortlist entries) to its neighbours among :math:`N` sources (database items), the
    layout :class:`ExpansionPropagation` and :class:`~graphrerank.nn.WeightedPropagation`
    aggregate over.

    Args:
        indices: :math:`(R, m)` int64 source ids per target, distinct within a row, ``-1`` for
            none.
        values: :math:`(R, m)` edge values (similarities or weights).
        num_sources: Number of sources :math:`N`.

    Returns:
        A ``torch.sparse_csr`` tensor of shape :math:`(R, N)` on the device of ``indices``.

    Raises:
        ValueError: a row repeats a source, or the shapes differ.

    Example:
        >>> idx = torch.tensor([[2, 0], [1, -1]])
        >>> bipartite_adjacency(idx, torch.tensor([[0.5, 0.25], [1.0, 9.0]]), 3).to_dense()
        tensor([[0.2500, 0.0000, 0.5000],
                [0.0000, 1.0000, 0.0000]])
    """
    if indices.shape != values.shape or indices.dim() != 2:
        raise ValueError(
            f"indices and values must be (R, m) of one shape, got {tuple(indices.shape)} "
            f"and {tuple(values.shape)}"
        )
    rows = indices.shape[0]
    idx, order = indices.sort(dim=1)
    val = values.gather(1, order)
    keep = idx >= 0
    if idx.shape[1] > 1 and bool(((idx[:, 1:] == idx[:, :-1]) & keep[:, 1:]).any()):
        raise ValueError("indices must not repeat a source within a row")
    if not bool(torch.isfinite(val[keep]).all()):
        raise ValueError("values must be finite where indices are not -1 (padding)")
    crow = cumsum(keep.sum(1))
    return csr(
        crow,
        idx[keep],
        val[keep],
        (rows, num_sources),
        dtype=values.dtype,
        check=False,
        sorted=True,
    )


class ExpansionPropagation(WeightedPropagation):
    r"""One hop of query expansion / database augmentation: each node adds its neighbours'
    descriptors, weighted by a power of their similarity, to its own, then L2-normalises.

    .. math::
        \mathbf{x}'_i = \frac{\mathbf{v}_i}{\lVert \mathbf{v}_i \rVert_2}, \qquad
        \mathbf{v}_i = \mathbf{x}_i + \sum_{j \in \mathcal{N}(i)} w_{ij}\, \mathbf{x}_j,
        \qquad w_{ij} = \max(s_{ij}, 0)^{\alpha},

    where :math:`s_{ij}` is the edge's similarity. :math:`\alpha = 0` gives every neighbour
    weight 1 (average query expansion, AQE, Chum et al. 2007; database-side augmentation,
    DBA, Arandjelović and Zisserman 2012); :math:`\alpha > 0` gives αQE / αDBA (Radenović et al.,
    TPAMI 2018), where :math:`(\mathbf{q}^\top\mathbf{q})^\alpha = 1` is the node's own weight.
    Negative similarities are clamped to 0 so that a fractional :math:`\alpha` stays defined.

    The graph may be bipartite: pass ``x=(x_source, x_target)`` and a sparse :math:`(R, N)`
    adjacency (:func:`bipartite_adjacency`) to expand :math:`R` queries with their neighbours
    among :math:`N` database items (query expansion), or ``x`` alone and an :math:`(N, N)`
    kNN graph of the database without self-loops (database augmentation). The aggregation is
    the fused sparse product of :class:`~graphrerank.nn.WeightedPropagation`.

    Args:
        alpha: Similarity exponent :math:`\alpha \ge 0` (0: plain sum).
        normalize: ``"l2"`` (the methods' definition) or ``None`` (return :math:`\mathbf{v}`).

    Shapes:
        - **input:** ``x`` :math:`(N, D)` or a pair :math:`((N, D), (R, D))`; ``edge_index``
          :math:`(2, E)` with similarities ``edge_weight`` :math:`(E,)`, or a sparse
          adjacency :math:`(R, N)` holding the similarities
        - **output:** :math:`(R, D)` (:math:`R = N` without a target set)

    Example:
        >>> db = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> q = torch.tensor([[0.6, 0.8]])
        >>> adj = bipartite_adjacency(torch.tensor([[1, 0]]), torch.tensor([[0.8, 0.6]]), 2)
        >>> ExpansionPropagation(alpha=0.0, normalize=None)((db, q), adj)
        tensor([[1.6000, 1.8000]])
        >>> ExpansionPropagation(alpha=1.0, normalize=None)((db, q), adj)
        tensor([[1.2000, 1.6000]])
    """

    def __init__(self, alpha: float = 0.0, normalize: Literal["l2"] | None = "l2") -> None:
        super().__init__()
        self.alpha = check_real(alpha, "alpha", low=0, finite=True)
        self.normalize = None if normalize is None else check_in(normalize, "normalize", ("l2",))

    def _weights(self, s: Tensor) -> Tensor:
        return s.clamp(min=0).pow(self.alpha)

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
    ) -> Tensor:
        if isinstance(x, (tuple, list)):
            if len(x) != 2:
                raise ValueError(
                    f"x must be features or a (source, target) pair, got {len(x)} items"
                )
            src, dst = check_nodes(x[0], "x[0]"), check_nodes(x[1], "x[1]")
            nodes = ("x[0]", "x[1]")
            if src.shape[1] != dst.shape[1] or src.dtype != dst.dtype:
                raise ValueError(
                    f"x[0] {tuple(src.shape)} {src.dtype} and x[1] {tuple(dst.shape)} "
                    f"{dst.dtype} must share the descriptor dimension and dtype"
                )
        else:
            src = dst = check_nodes(x)
            nodes = ("x", "x")
        if is_sparse(src) or is_sparse(dst):
            raise TypeError("x must hold dense descriptors")
        size = (src.shape[0], dst.shape[0])
        if is_sparse(edge_index) and edge_weight is None:
            adj, _ = check_propagation(
                src,
                edge_index,
                None,
                num_sources=src.shape[0],
                num_targets=dst.shape[0],
                name="adjacency",
                nodes=" and ".join(dict.fromkeys(nodes)),
            )
            edge_index, edge_weight, size = csr_map_values(adj, self._weights), None, None
        elif edge_weight is None:
            raise ValueError("edge_weight (the edges' similarities) is required")
        else:
            edge_index, edge_weight = check_propagation(
                src,
                edge_index,
                edge_weight,
                num_sources=src.shape[0],
                num_targets=dst.shape[0],
                nodes=" and ".join(dict.fromkeys(nodes)),
            )
            edge_weight = self._weights(edge_weight)
        agg = self.propagate(edge_index, x=(src, dst), edge_weight=edge_weight, size=size)
        out = dst + agg
        if out.numel() and not bool(torch.isfinite(out).all()):
            raise ValueError(
                f"the expanded descriptors overflow {out.dtype}: the edge similarities "
                f"(edge_weight, or the sparse adjacency's values) ** alpha={self.alpha} times "
                f"{nodes[0]} are too large; the similarities should lie in [-1, 1]"
            )
        if self.normalize == "l2":
            out = torch.nn.functional.normalize(out, dim=1)
        return out

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        src = x[0] if isinstance(x, tuple) else x
        return adj_t @ src

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, normalize={self.normalize!r})"
