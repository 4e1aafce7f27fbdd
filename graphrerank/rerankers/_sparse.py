"""Sparse building blocks of the transductive re-rankers (k-reciprocal, GNN re-ranking).

Everything here runs on the device of its inputs with ``torch`` operations only, and keeps
memory at :math:`O(N k)` plus fixed-size blocks:

* :func:`scan`: one blocked pass over a pairwise score matrix that returns each row's best
  ``k`` entries, its opposite extreme (the row maximum of a distance) and, optionally, each
  column's best entries (so that one product serves both directions of a query-gallery block);
* :class:`FeatureNodes` / :class:`DistanceNodes`: the nodes of one transductive graph
  (queries first, then the database) and their pairwise scores on demand;
* :func:`pair_overlap`: :math:`\\sum_l \\operatorname{op}(a_{il}, b_{jl})` for the row pairs that
  share a non-zero column, through an inverted index, in bounded dense blocks;
* :func:`select_topk`: the exact top-``k`` of a score that combines such an overlap with a base
  score known exactly only on each query's shortlist (and bounded elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..graph._csr import csr_row_ids

__all__ = [
    "DistanceNodes",
    "FeatureNodes",
    "graph_lists",
    "pair_overlap",
    "pair_products",
    "row_chunks",
    "scan",
    "select_topk",
]

#: Elements of one dense working block (scores of a row block, a dense accumulator, ...).
BLOCK_ELEMENTS = 2**22

#: A query's shortlist holds its ``k + SHORTLIST_MARGIN`` nearest database items: the deeper
#: the shortlist, the tighter the bound on the items outside it, the fewer of them need their
#: original score computed.
SHORTLIST_MARGIN = 400


# ----------------------------------------------------------------------------- blocked scan
def topk(x: Tensor, k: int, largest: bool = True) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=1)``, through a full sort when ``k`` is a large part of a row (where
    sorting is the faster of the two)."""
    if 4 * k > x.shape[1]:
        v, i = x.sort(dim=1, descending=largest)
        return v[:, :k], i[:, :k]
    return x.topk(k, dim=1, largest=largest)


def _merge(
    vals: Tensor | None, idx: Tensor | None, block: Tensor, offset: int, k: int, largest: bool
):
    """The ``k`` best of a running selection and of a new block whose column ``c`` is
    item ``offset + c``. The block is reduced first, to as many entries as the most any row
    has that beat its current ``k``-th best (after the first blocks, few)."""
    kk = min(k, block.shape[1])
    if vals is not None and vals.shape[1] == k:
        worst = vals[:, -1:]
        better = block > worst if largest else block < worst
        kk = min(kk, int(better.sum(1).max()))
        if kk == 0:
            return vals, idx
    v, i = topk(block, kk, largest)
    i += offset
    if vals is None:
        return v, i
    cv, ci = torch.cat([vals, v], 1), torch.cat([idx, i], 1)
    v, pos = topk(cv, min(k, cv.shape[1]), largest)
    return v, ci.gather(1, pos)


def scan(
    block: Callable[[int, int, int, int], Tensor],
    n_rows: int,
    n_cols: int,
    k: int,
    *,
    largest: bool,
    col_k: int = 0,
    extreme: bool = False,
    device: torch.device,
    dtype: torch.dtype,
    budget: int | None = None,
) -> dict[str, Tensor]:
    """One blocked pass over the ``(n_rows, n_cols)`` matrix that ``block(r0, r1, c0, c1)``
    returns piece by piece.

    Returns a dict with ``row_values``/``row_indices`` (each row's ``k`` best entries, best
    first; ``largest`` says whether best is largest), ``row_extreme`` (with ``extreme``: the
    row's opposite extreme, the maximum when ``largest=False``) and, with ``col_k > 0``, the
    same for columns (``col_values``, ``col_indices``, ``col_extreme``).
    """
    budget = BLOCK_ELEMENTS if budget is None else budget
    k = min(k, n_cols)
    col_k = min(col_k, n_rows)
    bc = max(1, min(n_cols, budget // max(1, min(n_rows, 1024))))
    br = max(1, min(n_rows, budget // bc))
    out: dict[str, Tensor] = {}
    row_v = torch.empty(n_rows, k, device=device, dtype=dtype)
    row_i = torch.empty(n_rows, k, device=device, dtype=torch.long)
    row_x = torch.empty(n_rows, device=device, dtype=dtype) if extreme else None
    cv = ci = cx = None
    if col_k:
        cv = [None] * math.ceil(n_cols / bc)
        ci = [None] * len(cv)
        cx = [None] * len(cv)
    for r0 in range(0, n_rows, br):
        r1 = min(n_rows, r0 + br)
        bv = bi = bx = None
        for b, c0 in enumerate(range(0, n_cols, bc)):
            c1 = min(n_cols, c0 + bc)
            s = block(r0, r1, c0, c1)
            bv, bi = _merge(bv, bi, s, c0, k, largest)
            if extreme:
                e = s.amin(1) if largest else s.amax(1)
                bx = (
                    e if bx is None else (torch.minimum(bx, e) if largest else torch.maximum(bx, e))
                )
            if col_k:
                st = s.T.contiguous()
                cv[b], ci[b] = _merge(cv[b], ci[b], st, r0, col_k, largest)
                if extreme:
                    e = st.amin(1) if largest else st.amax(1)
                    cx[b] = (
                        e
                        if cx[b] is None
                        else (torch.minimum(cx[b], e) if largest else torch.maximum(cx[b], e))
                    )
        row_v[r0:r1], row_i[r0:r1] = bv, bi
        if extreme:
            row_x[r0:r1] = bx
    out["row_values"], out["row_indices"] = row_v, row_i
    if extreme:
        out["row_extreme"] = row_x
    if col_k:
        out["col_values"], out["col_indices"] = torch.cat(cv), torch.cat(ci)
        if extreme:
            out["col_extreme"] = torch.cat(cx)
    return out


def graph_lists(
    nodes,
    *,
    graph_k: int,
    length: int,
    k: int,
    largest: bool,
    extreme: bool,
    gallery: dict[str, Tensor] | None = None,
    budget: int | None = None,
) -> dict[str, Tensor]:
    """Neighbour lists of every node of a transductive graph, from blocked passes.

    Returns ``indices``/``values`` :math:`(M, L)`: each node's nearest nodes, best first,
    where the first ``graph_k`` entries are exact and the rest (up to ``length``) are further
    known pairs (for looking scores up); ``extreme`` :math:`(M,)` (with ``extreme=True``, the
    row maxima of a distance); ``short_indices``/``short_values``: each query row's
    ``max(k + SHORTLIST_MARGIN, length)`` nearest *database* items (positions in the
    database), exact; and
    ``query_ids``: the node of each query row (all database nodes all-vs-all).

    ``gallery`` holds the database-only lists of an earlier pass (``indices``, ``values``
    and ``extreme``), reused when long enough.
    """
    nq, ng = nodes.nq, nodes.ng
    dev, dt = nodes.device, nodes.dtype
    kw = {"largest": largest, "extreme": extreme, "device": dev, "dtype": dt, "budget": budget}
    kq = min(ng, max(k + SHORTLIST_MARGIN, length))
    need = kq if nq == 0 else min(ng, length)
    if gallery is None or gallery["indices"].shape[1] < need:
        g = scan(nodes.block_fn("g", "g"), ng, ng, need, **kw)
        gallery = {"indices": g["row_indices"], "values": g["row_values"]}
        if extreme:
            gallery["extreme"] = g["row_extreme"]
    out: dict[str, Tensor] = {}
    if nq == 0:
        out["indices"] = gallery["indices"][:, :length]
        out["values"] = gallery["values"][:, :length]
        if extreme:
            out["extreme"] = gallery["extreme"]
        out["short_indices"] = gallery["indices"][:, :kq]
        out["short_values"] = gallery["values"][:, :kq]
        out["query_ids"] = torch.arange(ng, device=dev)
        return out
    qq = scan(nodes.block_fn("q", "q"), nq, nq, length, **kw)
    qg = scan(nodes.block_fn("q", "g"), nq, ng, max(kq, length), col_k=min(graph_k, nq), **kw)

    def best(parts_i: list[Tensor], parts_v: list[Tensor]) -> tuple[Tensor, Tensor]:
        ci, cv = torch.cat(parts_i, 1), torch.cat(parts_v, 1)
        v, pos = topk(cv, min(length, cv.shape[1]), largest)
        return ci.gather(1, pos), v

    # query rows: exact over all nodes; database rows: the queries enter their lists
    qi, qv = best([qq["row_indices"], qg["row_indices"] + nq], [qq["row_values"], qg["row_values"]])
    gi, gv = best(
        [qg["col_indices"], gallery["indices"][:, :length] + nq],
        [qg["col_values"], gallery["values"][:, :length]],
    )
    width = min(qi.shape[1], gi.shape[1])
    out["indices"] = torch.cat([qi[:, :width], gi[:, :width]])
    out["values"] = torch.cat([qv[:, :width], gv[:, :width]])
    if extreme:
        pick = torch.minimum if largest else torch.maximum
        out["extreme"] = torch.cat(
            [
                pick(qq["row_extreme"], qg["row_extreme"]),
                pick(qg["col_extreme"], gallery["extreme"]),
            ]
        )
    out["short_indices"] = qg["row_indices"][:, :kq]
    out["short_values"] = qg["row_values"][:, :kq]
    out["query_ids"] = torch.arange(nq, device=dev)
    return out


# ----------------------------------------------------------------------------- graph nodes
class FeatureNodes:
    """The nodes of one transductive graph: ``queries`` (node ids ``0..Q-1``, none in the
    all-vs-all case) then ``database`` (ids ``Q..Q+N-1``), and their pairwise scores.

    ``metric="l2"`` scores are squared Euclidean distances (exactly 0 between a node and
    itself), ``"ip"`` scores inner products.
    """

    def __init__(self, queries: Tensor | None, database: Tensor, metric: str) -> None:
        self.q, self.g, self.metric = queries, database, metric
        self.nq = 0 if queries is None else int(queries.shape[0])
        self.ng = int(database.shape[0])
        self.m = self.nq + self.ng
        self.device, self.dtype = database.device, database.dtype
        self.g_sq = self.q_sq = None
        if metric == "l2":
            self.g_sq = database.pow(2).sum(1)
            self.q_sq = None if queries is None else queries.pow(2).sum(1)

    def _part(self, which: str):
        return (self.q, self.q_sq) if which == "q" else (self.g, self.g_sq)

    def block_fn(self, rows: str, cols: str) -> Callable[[int, int, int, int], Tensor]:
        """``block(r0, r1, c0, c1)`` over the ``rows`` x ``cols`` parts (``"q"`` or ``"g"``)."""
        xr, nr = self._part(rows)
        xc, nc = self._part(cols)
        same = rows == cols

        def block(r0: int, r1: int, c0: int, c1: int) -> Tensor:
            s = xr[r0:r1] @ xc[c0:c1].T
            if self.metric == "ip":
                return s
            d = (nr[r0:r1, None] + nc[None, c0:c1]).sub_(s, alpha=2).clamp_(min=0)
            if same:
                lo, hi = max(r0, c0), min(r1, c1)
                if lo < hi:
                    ar = torch.arange(lo, hi, device=d.device)
                    d[ar - r0, ar - c0] = 0
            return d

        return block

    def pairs(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Scores of the node pairs ``(rows[p], cols[p])``, computed in blocks."""
        out = torch.empty(rows.shape[0], device=self.device, dtype=self.dtype)
        if self.q is None:
            parts = [(slice(None), self.g, self.g_sq, rows, self.g, self.g_sq, cols)]
        else:
            parts = []
            rq, cq = rows < self.nq, cols < self.nq
            q, g, qs, gs, nq = self.q, self.g, self.q_sq, self.g_sq, self.nq
            for sel, xr, sr, ro, xc, sc, co in (
                (rq & cq, q, qs, 0, q, qs, 0),
                (rq & ~cq, q, qs, 0, g, gs, nq),
                (~rq & cq, g, gs, nq, q, qs, 0),
                (~rq & ~cq, g, gs, nq, g, gs, nq),
            ):
                where = sel.nonzero().flatten()
                if where.numel():
                    parts.append((where, xr, sr, rows[where] - ro, xc, sc, cols[where] - co))
        step = max(1, BLOCK_ELEMENTS // (2 * self.g.shape[1]))
        for where, xr, sr, r_all, xc, sc, c_all in parts:
            res = torch.empty(r_all.shape[0], device=self.device, dtype=self.dtype)
            for a in range(0, r_all.shape[0], step):
                r, c = r_all[a : a + step], c_all[a : a + step]
                s = (xr.index_select(0, r) * xc.index_select(0, c)).sum(1)
                if self.metric == "l2":
                    s = (sr[r] + sc[c]).sub_(s, alpha=2).clamp_(min=0)
                    if xr is xc:
                        s = s.masked_fill_(r == c, 0)
                res[a : a + step] = s
            out[where] = res
        return out


class DistanceNodes:
    r"""Graph nodes given by dense Euclidean distances ``qq`` :math:`(Q, Q)`, ``qg``
    :math:`(Q, N)` and ``gg`` :math:`(N, N)` (``qq`` and ``qg`` are ``None`` all-vs-all).

    Scores are squared distances read as the reference code reads them: row :math:`i` of its
    normalised matrix is *column* :math:`i` of ``[[qq, qg], [qg^T, gg]]`` (the same for
    symmetric ``qq`` and ``gg``). Entries are squared on the fly, so no extra dense matrix is
    made.
    """

    metric = "l2"

    def __init__(self, qq: Tensor | None, qg: Tensor | None, gg: Tensor) -> None:
        self.qq, self.qg, self.gg = qq, qg, gg
        self.nq = 0 if qg is None else int(qg.shape[0])
        self.ng = int(gg.shape[0])
        self.m = self.nq + self.ng
        self.device, self.dtype = gg.device, gg.dtype

    def _mat(self, rows: str, cols: str) -> Tensor:
        # row i of the reference's matrix is column i of the given one
        return {
            ("q", "q"): lambda: self.qq.T,
            ("q", "g"): lambda: self.qg,
            ("g", "q"): lambda: self.qg.T,
            ("g", "g"): lambda: self.gg.T,
        }[(rows, cols)]()

    def block_fn(self, rows: str, cols: str) -> Callable[[int, int, int, int], Tensor]:
        mat = self._mat(rows, cols)
        return lambda r0, r1, c0, c1: mat[r0:r1, c0:c1].square()

    def pairs(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Squared distances of the node pairs ``(rows[p], cols[p])``."""
        if self.nq == 0:
            return self.gg[cols, rows].square()
        out = torch.empty(rows.shape[0], device=self.device, dtype=self.dtype)
        rq, cq = rows < self.nq, cols < self.nq
        for sel, part, ro, co in (
            (rq & cq, ("q", "q"), 0, 0),
            (rq & ~cq, ("q", "g"), 0, self.nq),
            (~rq & cq, ("g", "q"), self.nq, 0),
            (~rq & ~cq, ("g", "g"), self.nq, self.nq),
        ):
            out[sel] = self._mat(*part)[rows[sel] - ro, cols[sel] - co].square()
        return out


def row_chunks(cost: Tensor, max_cost: int, max_rows: int) -> list[tuple[int, int]]:
    """Split rows into consecutive chunks of at most ``max_rows`` rows whose summed ``cost``
    stays under ``max_cost`` (a single row above it forms its own chunk)."""
    n = cost.shape[0]
    csum = torch.cumsum(cost.to(torch.float64), 0).tolist()
    chunks, start, base = [], 0, 0.0
    while start < n:
        stop = start + 1
        limit = min(n, start + max_rows)
        # grow while under budget (binary search over the cumulative cost)
        lo, hi = stop, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if csum[mid - 1] - base <= max_cost:
                lo = mid
            else:
                hi = mid - 1
        stop = max(stop, lo)
        chunks.append((start, stop))
        base = csum[stop - 1]
        start = stop
    return chunks


# ----------------------------------------------------------------------------- overlaps
def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For entries with ``counts[e]`` partners: (entry of each pair, rank of the pair)."""
    rep = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    return rep, torch.arange(rep.numel(), device=counts.device) - first[rep]


def pair_overlap(
    rows_a: Tensor,
    inv_b: Tensor,
    op: str,
    out: Tensor,
) -> None:
    r"""Accumulate :math:`\mathrm{out}_{ij} \mathrel{+}= \sum_l \operatorname{op}(a_{il}, b_{jl})`.

    ``rows_a`` is a CSR :math:`(R, L)` block of rows, ``inv_b`` the CSR :math:`(L, C)` inverted
    index of the other rows (:math:`b^\top`), ``out`` a dense :math:`(R, C)` accumulator and
    ``op`` ``"min"`` or ``"mul"``. Only pairs that share a non-zero column are touched: every
    entry :math:`a_{il}` meets the whole list of column :math:`l`.
    """
    col = rows_a.col_indices()
    icrow = inv_b.crow_indices()
    start = icrow[col]
    counts = icrow[col + 1] - start
    total = int(counts.sum())
    if total == 0:
        return
    # position in the inverted index of every (entry, partner) pair
    offset = start - (torch.cumsum(counts, 0) - counts)
    pos = torch.arange(total, device=col.device)
    pos += torch.repeat_interleave(offset, counts, output_size=total)
    b = inv_b.values()[pos]
    key = inv_b.col_indices()[pos]
    del pos
    key += torch.repeat_interleave(csr_row_ids(rows_a) * out.shape[1], counts, output_size=total)
    a = torch.repeat_interleave(rows_a.values(), counts, output_size=total)
    contrib = torch.minimum(a, b, out=a) if op == "min" else a.mul_(b)
    out.view(-1).index_add_(0, key, contrib)


def overlap_cost(rows_a: Tensor, inv_b: Tensor) -> Tensor:
    """Number of (entry, partner) pairs :func:`pair_overlap` expands, per row of ``rows_a``."""
    icrow = inv_b.crow_indices()
    col = rows_a.col_indices()
    per_entry = (icrow[col + 1] - icrow[col]).to(torch.float64)
    cost = torch.zeros(rows_a.shape[0], dtype=torch.float64, device=col.device)
    cost.index_add_(0, csr_row_ids(rows_a), per_entry)
    return cost


def pair_products(v: Tensor, rows: Tensor, cols: Tensor, op: str, budget: int) -> Tensor:
    r""":math:`\sum_l \operatorname{op}(V_{r l}, V_{c l})` for the row pairs
    ``(rows[p], cols[p])`` of the CSR matrix ``v`` (``op``: ``"min"`` or ``"mul"``)."""
    n = v.shape[1]
    out = torch.zeros(rows.shape[0], dtype=v.dtype, device=v.device)
    crow, col, val = v.crow_indices(), v.col_indices(), v.values()
    uniq, inv = torch.unique(rows, return_inverse=True)
    step = max(1, budget // n)
    for a in range(0, uniq.numel(), step):
        urows = uniq[a : a + step]
        dense = torch.zeros(urows.numel(), n, dtype=v.dtype, device=v.device)
        e, rk = _expand(crow[urows + 1] - crow[urows])
        pos = crow[urows][e] + rk
        dense[e, col[pos]] = val[pos]
        sel = ((inv >= a) & (inv < a + urows.numel())).nonzero().flatten()
        c = cols[sel]
        e, rk = _expand(crow[c + 1] - crow[c])
        pos = crow[c][e] + rk
        mine = dense[inv[sel][e] - a, col[pos]]
        contrib = torch.minimum(mine, val[pos]) if op == "min" else mine * val[pos]
        out.index_add_(0, sel[e], contrib)
    return out


# ----------------------------------------------------------------------------- selection
def select_topk(
    overlap: Tensor,
    short_idx: Tensor,
    short_base: Tensor,
    k: int,
    score: Callable[[Tensor, Tensor], Tensor],
    base_of: Callable[[Tensor, Tensor], Tensor],
    min_overlap: Callable[[Tensor, Tensor], Tensor],
    *,
    higher_base_is_better: bool,
) -> tuple[Tensor, Tensor]:
    r"""Exact top-``k`` per row of ``score(overlap, base)``, ties broken by the base.

    ``overlap`` is a dense :math:`(R, C)` block (0 where two items share nothing; it is
    overwritten); the base score (the original distance or similarity) is known exactly on
    each row's shortlist (``short_idx``/``short_base`` :math:`(R, S)`, best first,
    :math:`S \ge k`), and no item outside the shortlist has a better base than its last entry.
    ``score`` increases with the overlap and with the quality of the base, so an item outside
    the shortlist with overlap 0 cannot beat the shortlist, and one with an overlap needs its
    base (``base_of(rows, cols)``) only when its bound reaches the row's ``k``-th best
    shortlist score, that is when its overlap is at least ``min_overlap(kth, bound)`` (a
    per-row threshold; it may err low, never high).

    Returns:
        ``(scores, indices)`` :math:`(R, k)`, best first; equal scores are ordered by the
        base (the better first).
    """
    r = overlap.shape[0]
    dev, dt = overlap.device, overlap.dtype
    s = short_idx.shape[1]
    s_short = score(overlap.gather(1, short_idx), short_base)
    kth = topk(s_short, k)[0][:, -1]
    overlap.scatter_(1, short_idx, 0)  # what is left: overlaps outside the shortlists
    floor = min_overlap(kth, short_base[:, -1])
    floor = torch.where(floor > 0, floor, torch.finfo(dt).tiny)  # and an overlap at all
    sr, sc = (overlap >= floor[:, None]).nonzero(as_tuple=True)
    p = overlap[sr, sc]
    keep = score(p, short_base[sr, -1]) >= kth[sr]
    sr, sc, p = sr[keep], sc[keep], p[keep]
    counts = torch.bincount(sr, minlength=r)
    width = s + (int(counts.max()) if sr.numel() else 0)
    worst = float("-inf") if higher_base_is_better else float("inf")
    idx = torch.full((r, width), -1, dtype=torch.long, device=dev)
    key = torch.full((r, width), float("-inf"), dtype=dt, device=dev)
    base = torch.full((r, width), worst, dtype=dt, device=dev)
    idx[:, :s], key[:, :s], base[:, :s] = short_idx, s_short, short_base
    if sr.numel():
        b = base_of(sr, sc)
        first = torch.cumsum(counts, 0) - counts
        pos = s + torch.arange(sr.numel(), device=dev) - first[sr]
        idx[sr, pos] = sc
        key[sr, pos] = score(p, b)
        base[sr, pos] = b
    # the k best by score; every item tied with the k-th comes along, then the base orders
    # equal scores (better first)
    if 4 * k <= width:  # narrow the field first
        kth = topk(key, k)[0][:, -1:]
        take = int((key >= kth).sum(1).max())
        key, pos = topk(key, take)
        idx, base = idx.gather(1, pos), base.gather(1, pos)
    order = torch.sort(base, dim=1, descending=higher_base_is_better, stable=True).indices
    by_key = torch.sort(key.gather(1, order), dim=1, descending=True, stable=True).indices
    order = order.gather(1, by_key)[:, :k]
    return key.gather(1, order), idx.gather(1, order)
