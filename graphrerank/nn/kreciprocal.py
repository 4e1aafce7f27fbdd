r"""The k-reciprocal encoding of Zhong et al. (CVPR 2017) as a layer-level function: sparse
encodings of each node's k-reciprocal neighbourhood, then local query expansion as one hop of
weighted propagation. The re-ranker is :class:`~graphrerank.rerankers.KReciprocal`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._checks import Array, Index, Int, Ref, checked
from ..graph import lists as _lists
from ..graph.sparse import csr

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
    return len(t) if isinstance(t, Tensor) else 0  # anything else: Index names the type


@checked(
    lists=Index(ndim=2, high=Ref("lists", fn=_rows)),
    budget=Int(low=1, optional=True),
)
def reciprocal_mask(lists: Tensor, budget: int | None = None) -> Tensor:
    r"""``mask[i, t]``: node ``i`` is in the list of its ``t``-th neighbour ``lists[i, t]``.

    Row :math:`i` of ``lists`` :math:`(M, W)` is the list of node :math:`i`. The lists of the
    neighbours are gathered, ``lists[lists]`` :math:`(M, W, W)`, in blocks of at most
    ``budget`` entries (default :data:`~graphrerank.graph.lists.BLOCK_ELEMENTS`).

    Raises:
        ValueError: ids outside ``[0, M)``.
        TypeError: ``lists`` is not an integer tensor.

    Example:
        >>> reciprocal_mask(torch.tensor([[0, 1], [1, 2], [2, 1]]))  # 0 -> 1 but not 1 -> 0
        tensor([[ True, False],
                [ True,  True],
                [ True,  True]])
    """
    m, w = lists.shape
    budget = _lists.BLOCK_ELEMENTS if budget is None else budget
    out = torch.empty(m, w, dtype=torch.bool, device=lists.device)
    step = max(1, budget // max(1, w * w))
    cpu = lists.device.type == "cpu"  # NumPy's gathers: several times torch's on a CPU
    ids = lists.numpy() if cpu else lists
    res = out.numpy() if cpu else out
    for a in range(0, m, step):
        b = min(m, a + step)
        if cpu:
            own = np.arange(a, b)[:, None, None]
            res[a:b] = (ids[ids[a:b]] == own).any(-1)
        else:
            own = torch.arange(a, b, device=lists.device)[:, None, None]
            res[a:b] = (ids[ids[a:b]] == own).any(-1)
    return out


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
    expansion (right) is skipped when :math:`k_2 = 1`; it is one hop of weighted
    propagation (as :class:`~graphrerank.nn.WeightedPropagation` computes it).

    Computed with few large operations: the sets :math:`R(i, k_1)` and
    :math:`R(c, \tilde k)` as sparse 0/1 patterns :math:`A` and :math:`H`, the overlaps
    :math:`|R(c, \tilde k) \cap R(i, k_1)|` read off :math:`A H^\top`, :math:`R^*` the
    pattern of :math:`A + C H` (:math:`C` the accepted candidates), and the expansion one
    sparse product, all through SciPy's compiled CSR routines (on the CPU; the result goes
    back to the inputs' device).

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
    dev = neighbors.device
    m = neighbors.shape[0]
    n1 = min(k1 + 1, m)
    nh = min(round_half(k1) + 1, m)
    nbr = neighbors.cpu()
    first, half = nbr[:, :n1], nbr[:, :nh]
    rec1 = reciprocal_mask(first, budget).numpy()
    rech = reciprocal_mask(half, budget).numpy()
    first_np, half_np = first.numpy(), half.numpy()
    # the sets as sparse 0/1 patterns: A[i, j] = [j in R(i, k1)], H[c, j] = [j in R(c, k1/2)]
    rows_a = np.nonzero(rec1)[0]
    cols_a = first_np[rec1]
    a = _pattern(rows_a, cols_a, m)
    h = _pattern(np.nonzero(rech)[0], half_np[rech], m)
    # |R(c, k1/2) & R(i, k1)| for every c in R(i, k1), read off (A H^T)[i, c]
    inter = np.asarray((a @ h.T)[rows_a, cols_a]).ravel()
    size = np.diff(h.indptr)[cols_a]
    accept = 3 * inter > 2 * size  # |R(c) & R(i)| > 2/3 |R(c)|, in integers
    c = _pattern(rows_a[accept], cols_a[accept], m)
    star = a + c @ h  # R*(i): R(i, k1) and the accepted R(c, k1/2)
    star.sum_duplicates()
    star.sort_indices()
    crow = torch.from_numpy(star.indptr.astype(np.int64))
    cols = torch.from_numpy(star.indices.astype(np.int64))
    rows = torch.repeat_interleave(torch.arange(m), crow.diff(), output_size=cols.numel())
    d = _lookup(nbr, distances.cpu(), max(n1, LOOKUP_LENGTH), rows, cols, pair_distances, dev)
    rm = row_max.cpu()[rows]
    dn = torch.where(rm > 0, d / rm.clamp(min=torch.finfo(d.dtype).tiny), 0.0)
    w = torch.exp(-dn)
    total = torch.zeros(m, dtype=w.dtype).index_add_(0, rows, w)
    w = w / total[rows]
    if k2 == 1:
        return csr(crow, cols, w, (m, m), check=False, sorted=True).to(dev)
    # local query expansion: V_i <- mean of V_j over the first k2 of i's original ranking
    n2 = min(k2, m)
    v = sp.csr_matrix((w.numpy(), cols.numpy(), crow.numpy()), shape=(m, m))
    qe_rows = np.repeat(np.arange(m), n2)
    qe = sp.csr_matrix(
        (np.full(m * n2, 1.0 / n2, dtype=v.dtype), (qe_rows, nbr[:, :n2].numpy().ravel())),
        shape=(m, m),
    )
    out = qe @ v
    out.sort_indices()
    return csr(
        torch.from_numpy(out.indptr.astype(np.int64)),
        torch.from_numpy(out.indices.astype(np.int64)),
        torch.from_numpy(out.data),
        (m, m),
        check=False,
        sorted=True,
    ).to(dev)


def _pattern(rows: np.ndarray, cols: np.ndarray, m: int) -> sp.csr_matrix:
    """The 0/1 ``(m, m)`` CSR pattern of the entries ``(rows[e], cols[e])`` (int32 counts)."""
    out = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(m, m))
    out.sum_duplicates()
    out.data[:] = 1
    return out


def _lookup(nbr, nbr_d, length, rows, cols, pair_distances, dev) -> Tensor:
    """Distances of the pairs ``(rows[e], cols[e])`` (rows ascending, columns ascending in a
    row): from row ``i``'s list where ``j`` is in its first ``length`` entries, else
    ``pair_distances``."""
    m = nbr.shape[0]
    length = min(nbr.shape[1], length)
    ids, order = nbr[:, :length].sort(dim=1)
    dist = nbr_d[:, :length].gather(1, order)
    keys = (ids + torch.arange(m)[:, None] * m).flatten()  # ascending: rows, then ids
    want = rows * m + cols
    pos = torch.searchsorted(keys, want).clamp_(max=keys.numel() - 1)
    hit = keys[pos] == want
    d = dist.flatten()[pos]
    miss = (~hit).nonzero().flatten()
    if miss.numel():
        d[miss] = pair_distances(rows[miss].to(dev), cols[miss].to(dev)).cpu().to(d.dtype)
    return d


kreciprocal_encoding.__doc__ = kreciprocal_encoding.__doc__.replace(
    "{ENCODING_MATH}", ENCODING_MATH
)
