r"""The k-reciprocal encoding of Zhong et al. (CVPR 2017) as a layer-level function: sparse
encodings of each node's k-reciprocal neighbourhood, then local query expansion as one hop of
weighted propagation. The re-ranker is :class:`~graphrerank.rerankers.KReciprocal`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.utils import cumsum

from .._checks import Array, Index, Int, Ref, checked
from ..graph import lists as _lists
from ..graph.sparse import csr, csr_from_rows
from .propagate import WeightedPropagation

__all__ = [
    "ENCODING_MATH",
    "LOOKUP_LENGTH",
    "kreciprocal_encoding",
    "reciprocal_mask",
    "round_half",
]

#: The encoding's formulas, lines of an aligned ``.. math::`` block (shared with the docstring
#: of :class:`~graphrerank.rerankers.KReciprocal`).
ENCODING_MATH = r"""R(i, k) &= \{ j \in N(i, k) : i \in N(j, k) \}, \\
        R^*(i) &= R(i, k_1) \cup \bigcup \{ R(c, \tilde k) : c \in R(i, k_1),\
            |R(c, \tilde k) \cap R(i, k_1)| > \tfrac23 |R(c, \tilde k)| \},
            \quad \tilde k = \operatorname{round}(k_1 / 2), \\
        V_{ij} &= \frac{e^{-d(i, j)}}{\sum_{l \in R^*(i)} e^{-d(i, l)}}\,[j \in R^*(i)],
        \qquad \mathbf{V}_i \leftarrow \frac{1}{k_2} \sum_{j \in N(i, k_2 - 1)} \mathbf{V}_j"""


def round_half(k1: int) -> int:
    """:math:`\\operatorname{round}(k_1 / 2)` with halves to even, as numpy rounds: 10 -> 5, 5 -> 2."""
    return round(k1 / 2)


def _rows(t) -> int:
    return len(t)


@checked(lists=Index(ndim=2, high=Ref("lists", fn=_rows)))
def reciprocal_mask(lists: Tensor) -> Tensor:
    r"""``mask[i, t]``: node ``i`` is in the list of its ``t``-th neighbour ``lists[i, t]``.

    Edge :math:`i \to j` is reciprocal when edge :math:`j \to i` exists: the key
    :math:`iM + j` of one edge equals the reversed key :math:`jM + i` of the other, so one sort
    of all keys and reversed keys pairs them up.

    Example:
        >>> reciprocal_mask(torch.tensor([[0, 1], [1, 2], [2, 1]]))  # 0 -> 1 but not 1 -> 0
        tensor([[ True, False],
                [ True,  True],
                [ True,  True]])
    """
    m, w = lists.shape
    e = m * w
    src = torch.arange(m, device=lists.device).repeat_interleave(w)
    dst = lists.flatten()
    keys, order = torch.cat([src * m + dst, dst * m + src]).sort()
    same = keys[1:] == keys[:-1]  # a key next to the reversed key of its reverse edge
    a, b = order[:-1][same], order[1:][same]
    found = torch.zeros(e, dtype=torch.bool, device=lists.device)
    found[torch.where(a >= e, a, b) - e] = True
    return found.view(m, w)


#: Length of the neighbour lists searched for the distances of encoded pairs (pairs beyond
#: them are computed).
LOOKUP_LENGTH = 100


@checked(
    neighbors=Index(ndim=2, high=Ref("neighbors", fn=_rows)),
    distances=Array(shape=Ref("neighbors", fn=lambda t: tuple(t.shape)), finite=True),
    row_max=Array(shape=Ref("neighbors", fn=lambda t: (t.shape[0],)), finite=True),
    k1=Int(low=1),
    k2=Int(low=1),
    budget=Int(low=1, optional=True),
)
def kreciprocal_encoding(
    neighbors: Tensor,
    distances: Tensor,
    row_max: Tensor,
    k1: int,
    k2: int,
    pair_distances: Callable[[Tensor, Tensor], Tensor],
    budget: int | None = None,
) -> Tensor:
    r"""The k-reciprocal encodings :math:`\mathbf{V}` of the :math:`M` nodes of one graph
    (after local query expansion), from each node's ranked neighbour list.

    With :math:`d(i, j)` the squared distance divided by row :math:`i`'s maximum and
    :math:`N(i, k)` the first :math:`k + 1` entries of :math:`i`'s list (itself included):

    .. math::
        {ENCODING_MATH},

    where :math:`\tilde k` rounds halves to even (as numpy does) and the local query
    expansion (right) is skipped when :math:`k_2 = 1`; it is one hop of
    :class:`~graphrerank.nn.WeightedPropagation`.

    Args:
        neighbors: :math:`(M, L)` node ids, ascending distance, the node itself first,
            :math:`L \ge k_1 + 1`.
        distances: :math:`(M, L)` their raw squared distances.
        row_max: :math:`(M,)` each row's largest distance over all :math:`M` nodes.
        k1: :math:`k_1`.
        k2: :math:`k_2` (1: no local query expansion).
        pair_distances: ``pair_distances(rows, cols)``, the raw squared distances of node
            pairs outside the first ``LOOKUP_LENGTH`` entries of a list (e.g.
            :meth:`~graphrerank.graph.FeatureNodes.pairs`).
        budget: Entries of one dense working block (default
            :data:`~graphrerank.graph.lists.BLOCK_ELEMENTS`).

    Returns:
        :math:`\mathbf{V}`, a ``torch.sparse_csr`` :math:`(M, M)` tensor; rows sum to one.

    Example:
        >>> from graphrerank.graph import FeatureNodes, scan
        >>> x = torch.tensor([[0.0], [1.0], [2.5], [10.0], [11.0]], dtype=torch.float64)
        >>> nodes = FeatureNodes(None, x, "l2")
        >>> s = scan(nodes.block_fn("d", "d"), 5, 5, 5, largest=False, extreme=True,
        ...          device=x.device, dtype=x.dtype)
        >>> v = kreciprocal_encoding(s["row_indices"], s["row_values"], s["row_extreme"], 2, 1,
        ...                          nodes.pairs)
        >>> v.to_dense().gt(0).int()  # each node's k-reciprocal set
        tensor([[1, 1, 1, 0, 0],
                [1, 1, 1, 0, 0],
                [1, 1, 1, 0, 0],
                [0, 0, 0, 1, 1],
                [0, 0, 0, 1, 1]], dtype=torch.int32)
    """
    if not callable(pair_distances):
        raise TypeError(f"pair_distances must be callable, got {type(pair_distances).__name__}")
    if bool((distances < 0).any()) or bool((row_max < 0).any()):
        raise ValueError("distances and row_max are squared distances and must be >= 0")
    if distances.dtype != row_max.dtype:
        row_max = row_max.to(distances.dtype)
    if neighbors.shape[1] < min(k1 + 1, neighbors.shape[0]):
        raise ValueError(
            f"neighbors holds {neighbors.shape[1]} entries per node, fewer than k1 + 1 = "
            f"{min(k1 + 1, neighbors.shape[0])}"
        )
    budget = _lists.BLOCK_ELEMENTS if budget is None else budget
    nbr, nbr_d = neighbors, distances
    m = nbr.shape[0]
    n1 = min(k1 + 1, m)
    nh = min(round_half(k1) + 1, m)
    first, half = nbr[:, :n1], nbr[:, :nh]
    rec1 = reciprocal_mask(first)
    rech = reciprocal_mask(half)
    # each node's list sorted by node id, to look distances up
    lookup = min(nbr.shape[1], max(n1, LOOKUP_LENGTH))
    sorted_ids, order = nbr[:, :lookup].sort(dim=1)
    sorted_d = nbr_d[:, :lookup].gather(1, order)
    width = n1 + n1 * nh  # R(i, k1), then R(c, k1/2) of every candidate c
    step = max(1, budget // (4 * width))
    counts, cols, vals = [], [], []
    for a in range(0, m, step):
        b = min(m, a + step)
        f, r1 = first[a:b], rec1[a:b]
        r_sorted = torch.where(r1, f, m).sort(dim=1).values  # R(i, k1), padded with m
        h = torch.where(rech[f], half[f], m)  # R(c, k1/2) of each candidate c = f[i, t]
        size = (h < m).sum(-1)
        flat = h.flatten(1)
        pos = torch.searchsorted(r_sorted, flat).clamp_(max=n1 - 1)
        inside = (r_sorted.gather(1, pos) == flat) & (flat < m)
        inter = inside.view_as(h).sum(-1)
        accept = r1 & (3 * inter > 2 * size)  # |R(c) & R(i)| > 2/3 |R(c)|, in integers
        members = torch.cat([r_sorted, torch.where(accept[..., None], h, m).flatten(1)], dim=1)
        members = members.sort(dim=1).values
        dup = torch.zeros_like(members, dtype=torch.bool)
        dup[:, 1:] = members[:, 1:] == members[:, :-1]
        valid = (members < m) & ~dup
        # distances d(i, j): from i's own list where j is in it, else computed
        pos = torch.searchsorted(sorted_ids[a:b], members).clamp_(max=lookup - 1)
        hit = sorted_ids[a:b].gather(1, pos) == members
        d = sorted_d[a:b].gather(1, pos)
        miss = valid & ~hit
        if bool(miss.any()):
            mr, mc = miss.nonzero(as_tuple=True)
            d[mr, mc] = pair_distances(mr + a, members[mr, mc])
        rm = row_max[a:b, None]
        dn = torch.where(rm > 0, d / rm.clamp(min=torch.finfo(d.dtype).tiny), 0.0)
        w = torch.exp(-dn).masked_fill_(~valid, 0)
        w = w / w.sum(1, keepdim=True)
        counts.append(valid.sum(1))
        cols.append(members[valid])
        vals.append(w[valid])
    crow = cumsum(torch.cat(counts))
    v = csr(crow, torch.cat(cols), torch.cat(vals), (m, m), check=False, sorted=True)
    if k2 == 1:
        return v
    # local query expansion: V_i <- mean of V_j over the first k2 of i's original ranking
    n2 = min(k2, m)
    qe_cols = nbr[:, :n2].sort(dim=1).values
    qe = csr_from_rows(qe_cols, torch.full_like(qe_cols, 1.0 / n2, dtype=v.dtype), m)
    return WeightedPropagation()(v, qe)


kreciprocal_encoding.__doc__ = kreciprocal_encoding.__doc__.replace(
    "{ENCODING_MATH}", ENCODING_MATH
)
