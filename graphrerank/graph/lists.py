r"""Neighbour lists: blocked scans of pairwise scores, the nodes of transductive graphs, and
the truncation lists of offline diffusion.

Everything here runs on the device of its inputs with ``torch`` operations (on a CPU, the
products of the scans and the pair scores go through NumPy, which is faster there), and
keeps memory at :math:`O(N k)` plus fixed-size blocks:

* :func:`scan`: one blocked pass over a pairwise score matrix that returns each row's best
  ``k`` entries, its opposite extreme (the row maximum of a distance) and, optionally, each
  column's best entries (so that one product serves both directions of a query-database
  block);
* :class:`FeatureNodes` / :class:`DistanceNodes`: the nodes of one transductive graph
  (queries first, then the database) and their pairwise scores on demand;
* :func:`graph_lists`: the neighbour lists of every node of such a graph (k-reciprocal and
  GNN re-ranking);
* :func:`self_first` / :func:`truncation_lists`: each node's nearest nodes with the node
  itself first (offline diffusion's truncation lists).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .._checks import (
    Features,
    Index,
    Int,
    OneOf,
    Ref,
    check_allocation,
    check_features,
    check_index,
    check_int,
    check_same_device,
    check_tensor,
    checked,
)
from ..typing import KNNResult
from . import knn as _knn
from .index import KNNIndex
from .knn import _matmul_t, _symmetric_select, check_overflow, self_knn
from .ranking import topk
from .scores import ScoreMatrix

__all__ = [
    "BLOCK_ELEMENTS",
    "SHORTLIST_MARGIN",
    "DistanceNodes",
    "FeatureNodes",
    "ScoreNodes",
    "graph_lists",
    "scan",
    "self_first",
    "truncation_lists",
]

#: Elements of one dense working block (scores of a row block, a dense accumulator, ...).
BLOCK_ELEMENTS = 2**22

#: A query's shortlist holds its ``k + SHORTLIST_MARGIN`` nearest database items: the deeper
#: the shortlist, the tighter the bound on the items outside it, the fewer of them need their
#: original score computed.
SHORTLIST_MARGIN = 400

#: :func:`scan` reads whole rows when this many of them fit in one block.
_FULL_WIDTH_ROWS = 32

#: Smallest database whose truncation lists come from one all-vs-all
#: :func:`~graphrerank.graph.knn.self_knn` (with an exact index on a CPU), and the smallest
#: descriptor dimension (``benchmarks/results/self_knn.md``, d = 2048: 0.75-0.9x faiss'
#: search at N = 10,000 on a quiet machine, 1.17x in the fit at N = 19,732, k = 1000).
_SELF_SEARCH_ROWS = 16384
_SELF_SEARCH_DIM = 1024

#: Rows searched at once by :func:`truncation_lists` (bounds temporaries of size rows x T).
_SEARCH_ROWS = 2**14


# ----------------------------------------------------------------------------- blocked scan
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
    v, i = topk.__wrapped__(block, kk, largest)  # internal: no NaN (the blocks are checked)
    i += offset
    if vals is None:
        return v, i
    cv, ci = torch.cat([vals, v], 1), torch.cat([idx, i], 1)
    v, pos = topk.__wrapped__(cv, min(k, cv.shape[1]), largest)
    return v, ci.gather(1, pos)


@checked(
    n_rows=Int(low=1),
    n_cols=Int(low=1),
    k=Int(low=1),
    col_k=Int(low=0),
    budget=Int(low=1, optional=True),
)
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
    if not callable(block):
        raise TypeError(f"block must be callable, got {type(block).__name__}")
    block = _checked_block(block, dtype)
    budget = BLOCK_ELEMENTS if budget is None else budget
    k = min(k, n_cols)
    col_k = min(col_k, n_rows)
    if n_cols * min(n_rows, _FULL_WIDTH_ROWS) <= budget:
        # whole rows: one selection per row block, no merging of partial selections (the
        # merges cost more than the product when k is long)
        bc = n_cols
    else:
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


def _checked_block(block, dtype):
    # the blocks of FeatureNodes whose scores cannot overflow hold no NaN: not searched for
    # (two passes over every block: 12% of the Market-size k-reciprocal lists)
    trusted = getattr(block, "_no_nan", False)

    def inner(r0: int, r1: int, c0: int, c1: int) -> Tensor:
        s = block(r0, r1, c0, c1)
        if not isinstance(s, Tensor) or tuple(s.shape) != (r1 - r0, c1 - c0):
            raise ValueError(
                f"block({r0}, {r1}, {c0}, {c1}) must return a ({r1 - r0}, {c1 - c0}) tensor, "
                f"got {getattr(s, 'shape', type(s).__name__)}"
            )
        if not trusted and bool(torch.isnan(s).any()):
            raise ValueError(f"block({r0}, {r1}, {c0}, {c1}) returned NaN scores")
        return s.to(dtype)

    return inner


def _database_scan(
    nodes,
    k: int,
    *,
    largest: bool,
    extreme: bool = False,
    budget: int | None = None,
    part: str = "d",
) -> dict[str, Tensor]:
    """:func:`scan` of the database nodes (``part="q"``: the query nodes) against themselves
    (``row_values``, ``row_indices`` and, with ``extreme``, ``row_extreme``). Feature nodes
    score pairs symmetrically, so their scan reads only the pieces on and above the
    diagonal, each serving its rows and, transposed, its columns (half the products; the
    selection of :func:`~graphrerank.graph.knn.self_knn`); the same lists up to float ties.
    Elsewhere (distance nodes, or a GPU, where the products are cheap) :func:`scan`."""
    n = nodes.nd if part == "d" else nodes.nq
    dev, dt = nodes.device, nodes.dtype
    block = nodes.block_fn(part, part)
    if not isinstance(nodes, FeatureNodes) or dev.type != "cpu":
        return scan(
            block, n, n, k, largest=largest, extreme=extreme, device=dev, dtype=dt,
            budget=budget,
        )  # fmt: skip
    k = check_int(k, "k", low=1)
    # the nearest of distances as the largest of their negatives: the compiled selection
    # takes these blocks as they are (no negated copy of each)
    flip = nodes.metric == "l2" and not largest
    if flip:
        block = nodes.block_fn(part, part, negative=True)
    v, i, x = _symmetric_select(
        _checked_block(block, dt), n, k, largest=largest or flip, extreme=extreme, dtype=dt,
        device=dev, budget=budget,
    )  # fmt: skip
    if flip:  # 0.0 - x: no negative zeros
        v, x = 0.0 - v, None if x is None else 0.0 - x
    out = {"row_values": v, "row_indices": i}
    if extreme:
        out["row_extreme"] = x
    return out


def _cross_scan(
    nodes, k: int, col_k: int, *, largest: bool, extreme: bool, budget: int | None
) -> dict[str, Tensor]:
    """:func:`scan` of the query nodes against the database nodes with ``col_k`` (each
    database node's best queries too). Feature nodes on a CPU keep the running selections
    of both directions in the compiled kernel of :func:`~graphrerank.graph.knn.self_knn`
    (one pass over each block, entries past each row's current ``k``-th best only): the
    torch selections of :func:`scan` took 2.5 s of the 3,368 x 19,732 block's 5.9 s."""
    nq, nd, dev, dt = nodes.nq, nodes.nd, nodes.device, nodes.dtype
    flip = nodes.metric == "l2" and not largest
    kernel = None
    if (
        isinstance(nodes, FeatureNodes)
        and dev.type == "cpu"
        and dt in _knn._KERNEL_DTYPES
        and (largest or flip)
        and col_k > 0
    ):
        kernel = _knn._select_kernel()
    if kernel is not None:
        try:
            return _compiled_cross_scan(kernel, nodes, k, col_k, flip, extreme, budget)
        except _knn._KernelFailed as err:
            _knn._KERNEL[:] = [None]
            _knn.warn_kernel_failed("top-k selection", err.__cause__, "torch's selection")
    return scan(
        nodes.block_fn("q", "d"), nq, nd, k, col_k=col_k, largest=largest, extreme=extreme,
        device=dev, dtype=dt, budget=budget,
    )  # fmt: skip


def _compiled_cross_scan(kernel, nodes, k, col_k, flip, extreme, budget):
    nq, nd, dev, dt = nodes.nq, nodes.nd, nodes.device, nodes.dtype
    k, col_k = min(k, nd), min(col_k, nq)
    budget = BLOCK_ELEMENTS if budget is None else budget
    block = _checked_block(nodes.block_fn("q", "d", negative=flip), dt)
    bc = max(1, min(nd, budget))
    br = max(1, min(nq, budget // bc))
    rows = _knn._CompiledRunning(kernel, nq, k, True, dt)
    cols = _knn._CompiledRunning(kernel, nd, col_k, True, dt)
    if extreme:  # the smallest scores (the largest distances when flipped)
        rx = torch.full((nq,), float("inf"), dtype=dt, device=dev)
        cx = torch.full((nd,), float("inf"), dtype=dt, device=dev)
    for r0 in range(0, nq, br):
        r1 = min(nq, r0 + br)
        for c0 in range(0, nd, bc):
            c1 = min(nd, c0 + bc)
            s = block(r0, r1, c0, c1)
            rows.add(0, r0, r1, s, c0)
            cols.add_columns(0, c0, c1, s, r0)
            if extreme:
                torch.minimum(rx[r0:r1], s.amin(1), out=rx[r0:r1])
                torch.minimum(cx[c0:c1], s.amin(0), out=cx[c0:c1])
    out: dict[str, Tensor] = {}
    out["row_values"], out["row_indices"] = rows.result(0, 0, nq)
    out["col_values"], out["col_indices"] = cols.result(0, 0, nd)
    if extreme:
        out["row_extreme"], out["col_extreme"] = rx, cx
    if flip:  # 0.0 - x: no negative zeros
        for key in ("row_values", "col_values", "row_extreme", "col_extreme"):
            if key in out:
                out[key] = 0.0 - out[key]
    return out


def _merge_sorted(
    ia: Tensor, va: Tensor, ib: Tensor, vb: Tensor, length: int, largest: bool
) -> tuple[Tensor, Tensor]:
    """The first ``length`` entries of each row of two lists sorted best first, merged
    (positions from two searches of each list in the other; no sort). Entries of ``a``
    come before equal entries of ``b``."""
    r, ka, kb = va.shape[0], va.shape[1], vb.shape[1]
    sa, sb = (-va, -vb) if largest else (va, vb)  # ascending
    sa, sb = sa.contiguous(), sb.contiguous()
    ar = torch.arange(max(ka, kb), device=va.device)
    pa = ar[:ka] + torch.searchsorted(sb, sa, right=False)
    pb = ar[:kb] + torch.searchsorted(sa, sb, right=True)
    v = torch.empty(r, ka + kb, dtype=va.dtype, device=va.device)
    i = torch.empty(r, ka + kb, dtype=ia.dtype, device=ia.device)
    v.scatter_(1, pa, va).scatter_(1, pb, vb)
    i.scatter_(1, pa, ia).scatter_(1, pb, ib)
    return i[:, :length], v[:, :length]


@checked(graph_k=Int(low=1), length=Int(low=1), k=Int(low=1), budget=Int(low=1, optional=True))
def graph_lists(
    nodes,
    *,
    graph_k: int,
    length: int,
    k: int,
    largest: bool,
    extreme: bool,
    database: dict[str, Tensor] | None = None,
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

    ``database`` holds the database-only lists of an earlier pass (``indices``, ``values``
    and ``extreme``), reused when long enough.
    """
    if not isinstance(nodes, (FeatureNodes, DistanceNodes)):
        raise TypeError(
            f"nodes must be FeatureNodes, DistanceNodes or ScoreNodes, got {type(nodes).__name__}"
        )
    nq, nd = nodes.nq, nodes.nd
    dev = nodes.device
    kq = min(nd, max(k + SHORTLIST_MARGIN, length))
    need = kq if nq == 0 else min(nd, length)
    if database is None or database["indices"].shape[1] < need:
        own = _database_scan(nodes, need, largest=largest, extreme=extreme, budget=budget)
        database = {"indices": own["row_indices"], "values": own["row_values"]}
        if extreme:
            database["extreme"] = own["row_extreme"]
    out: dict[str, Tensor] = {}
    if nq == 0:
        out["indices"] = database["indices"][:, :length]
        out["values"] = database["values"][:, :length]
        if extreme:
            out["extreme"] = database["extreme"]
        out["short_indices"] = database["indices"][:, :kq]
        out["short_values"] = database["values"][:, :kq]
        out["query_ids"] = torch.arange(nd, device=dev)
        return out
    qq = _database_scan(nodes, length, largest=largest, extreme=extreme, budget=budget, part="q")
    qd = _cross_scan(
        nodes, max(kq, length), min(graph_k, nq), largest=largest, extreme=extreme, budget=budget
    )
    # query rows: exact over all nodes; database rows: the queries enter their lists (each
    # part sorted best first: merged)
    qi, qv = _merge_sorted(
        qq["row_indices"], qq["row_values"], qd["row_indices"] + nq, qd["row_values"],
        length, largest,
    )  # fmt: skip
    di, dv = _merge_sorted(
        qd["col_indices"], qd["col_values"], database["indices"][:, :length] + nq,
        database["values"][:, :length], length, largest,
    )  # fmt: skip
    width = min(qi.shape[1], di.shape[1])
    out["indices"] = torch.cat([qi[:, :width], di[:, :width]])
    out["values"] = torch.cat([qv[:, :width], dv[:, :width]])
    if extreme:
        pick = torch.minimum if largest else torch.maximum
        out["extreme"] = torch.cat(
            [
                pick(qq["row_extreme"], qd["row_extreme"]),
                pick(qd["col_extreme"], database["extreme"]),
            ]
        )
    out["short_indices"] = qd["row_indices"][:, :kq]
    out["short_values"] = qd["row_values"][:, :kq]
    out["query_ids"] = torch.arange(nq, device=dev)
    return out


# ----------------------------------------------------------------------------- graph nodes
class FeatureNodes:
    """The nodes of one transductive graph: ``queries`` (node ids ``0..Q-1``, none in the
    all-vs-all case) then ``database`` (ids ``Q..Q+N-1``), and their pairwise scores.

    ``metric="l2"`` scores are squared Euclidean distances (exactly 0 between a node and
    itself), ``"ip"`` scores inner products.
    """

    @checked(
        database=Features(detach=True),
        queries=Features(detach=True, optional=True, dim=Ref("database", dim=1)),
        metric=OneOf(("ip", "l2")),
    )
    def __init__(self, queries: Tensor | None, database: Tensor, metric: str) -> None:
        if queries is not None:
            check_same_device(database=database, queries=queries)
            queries = queries.to(database.dtype)
        sq = {}
        for name, t in (("database", database), ("queries", queries)):
            if t is None:
                continue
            sq[name] = t.pow(2).sum(1)
            if not bool(torch.isfinite(sq[name]).all()):
                raise ValueError(
                    f"{name} holds vectors whose squared norms overflow {t.dtype}; scale or "
                    "normalise them, or use float64"
                )
        self.q, self.db, self.metric = queries, database, metric
        self.nq = 0 if queries is None else int(queries.shape[0])
        self.nd = int(database.shape[0])
        self.m = self.nq + self.nd
        self.device, self.dtype = database.device, database.dtype
        self.db_sq = self.q_sq = None
        if metric == "l2":
            self.db_sq, self.q_sq = sq["database"], sq.get("queries")
        # squared norms up to a quarter of the dtype's range: every product and squared
        # distance is finite (|x.y| <= (|x|^2 + |y|^2) / 2), so no block holds a NaN
        limit = torch.finfo(self.dtype).max / 4
        self._finite = all(t.numel() == 0 or float(t.amax()) <= limit for t in sq.values())

    def _part(self, which: str):
        return (self.q, self.q_sq) if which == "q" else (self.db, self.db_sq)

    def block_fn(
        self, rows: str, cols: str, *, negative: bool = False
    ) -> Callable[[int, int, int, int], Tensor]:
        """``block(r0, r1, c0, c1)`` over the ``rows`` x ``cols`` parts (``"q"`` or ``"d"``);
        with ``negative``, minus the squared distances (``"l2"``: exactly the negated
        scores, rounded alike)."""
        xr, nr = self._part(rows)
        xc, nc = self._part(cols)
        same = rows == cols

        def block(r0: int, r1: int, c0: int, c1: int) -> Tensor:
            s = _matmul_t(xr[r0:r1], xc[c0:c1])
            if self.metric == "ip":
                return s
            if negative:  # 2s - (|x|^2 + |y|^2): the negation of the rounded distance
                d = s.mul_(2).sub_(nr[r0:r1, None] + nc[None, c0:c1]).clamp_(max=0)
            else:
                d = (nr[r0:r1, None] + nc[None, c0:c1]).sub_(s, alpha=2).clamp_(min=0)
            if same:
                lo, hi = max(r0, c0), min(r1, c1)
                if lo < hi:
                    ar = torch.arange(lo, hi, device=d.device)
                    d[ar - r0, ar - c0] = 0
            return d

        block._no_nan = self._finite
        return block

    @checked(
        rows=Index(ndim=1, high=Ref("self", fn=lambda s: s.m)),
        cols=Index(
            shape=Ref("rows", fn=lambda r: tuple(r.shape)), high=Ref("self", fn=lambda s: s.m)
        ),
    )
    def pairs(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Scores of the node pairs ``(rows[p], cols[p])``, computed in blocks."""
        out = torch.empty(rows.shape[0], device=self.device, dtype=self.dtype)
        if self.q is None:
            parts = [(slice(None), self.db, self.db_sq, rows, self.db, self.db_sq, cols)]
        else:
            parts = []
            rq, cq = rows < self.nq, cols < self.nq
            q, db, qs, ds, nq = self.q, self.db, self.q_sq, self.db_sq, self.nq
            for sel, xr, sr, ro, xc, sc, co in (
                (rq & cq, q, qs, 0, q, qs, 0),
                (rq & ~cq, q, qs, 0, db, ds, nq),
                (~rq & cq, db, ds, nq, q, qs, 0),
                (~rq & ~cq, db, ds, nq, db, ds, nq),
            ):
                where = sel.nonzero().flatten()
                if where.numel():
                    parts.append((where, xr, sr, rows[where] - ro, xc, sc, cols[where] - co))
        step = max(1, BLOCK_ELEMENTS // (2 * self.db.shape[1]))
        fast = self.device.type == "cpu" and self.dtype in (torch.float32, torch.float64)
        for where, xr, sr, r_all, xc, sc, c_all in parts:
            res = torch.empty(r_all.shape[0], device=self.device, dtype=self.dtype)
            for a in range(0, r_all.shape[0], step):
                r, c = r_all[a : a + step], c_all[a : a + step]
                if fast:  # NumPy's gathers and fused dot products: 6x torch's on a CPU
                    xrn, xcn = xr.numpy(), xc.numpy()
                    s = torch.from_numpy(np.einsum("ij,ij->i", xrn[r.numpy()], xcn[c.numpy()]))
                else:
                    s = (xr.index_select(0, r) * xc.index_select(0, c)).sum(1)
                if self.metric == "l2":
                    s = (sr[r] + sc[c]).sub_(s, alpha=2).clamp_(min=0)
                    if xr is xc:
                        s = s.masked_fill_(r == c, 0)
                res[a : a + step] = s
            out[where] = res
        return out


def _check_blocks(qq, qd, dd, *, distances: bool):
    dd = check_tensor(dd, "dd", ndim=2, finite=True, detach=True)
    n = dd.shape[0]
    if dd.shape != (n, n) or n == 0:
        raise ValueError(f"dd must be a non-empty square (N, N) matrix, got {tuple(dd.shape)}")
    if (qq is None) != (qd is None):
        raise ValueError("qq and qd go together: pass both or neither")
    if qd is not None:
        qd = check_tensor(qd, "qd", ndim=2, finite=True, detach=True, shape=(None, n))
        q = qd.shape[0]
        qq = check_tensor(qq, "qq", finite=True, detach=True, shape=(q, q))
        check_same_device(dd=dd, qd=qd, qq=qq)
        qd, qq = qd.to(dd.dtype), qq.to(dd.dtype)
    if distances:
        for name, m in (("dd", dd), ("qd", qd), ("qq", qq)):
            if m is not None and m.numel() and float(m.min()) < 0:
                raise ValueError(f"{name} holds distances, but some are negative")
    return qq, qd, dd


class DistanceNodes:
    r"""Graph nodes given by dense Euclidean distances ``qq`` :math:`(Q, Q)`, ``qd``
    :math:`(Q, N)` and ``dd`` :math:`(N, N)` (``qq`` and ``qd`` are ``None`` all-vs-all).

    Scores are squared distances read as the reference code reads them: row :math:`i` of its
    normalised matrix is *column* :math:`i` of ``[[qq, qd], [qd^T, dd]]`` (the same for
    symmetric ``qq`` and ``dd``). Entries are squared on the fly, so no extra dense matrix is
    made.
    """

    metric = "l2"

    def __init__(self, qq: Tensor | None, qd: Tensor | None, dd: Tensor) -> None:
        qq, qd, dd = _check_blocks(qq, qd, dd, distances=self.metric == "l2")
        self.qq, self.qd, self.dd = qq, qd, dd
        self.nq = 0 if qd is None else int(qd.shape[0])
        self.nd = int(dd.shape[0])
        self.m = self.nq + self.nd
        self.device, self.dtype = dd.device, dd.dtype

    def _mat(self, rows: str, cols: str) -> Tensor:
        # row i of the reference's matrix is column i of the given one
        return {
            ("q", "q"): lambda: self.qq.T,
            ("q", "d"): lambda: self.qd,
            ("d", "q"): lambda: self.qd.T,
            ("d", "d"): lambda: self.dd.T,
        }[(rows, cols)]()

    def _read(self, block: Tensor) -> Tensor:
        """Entries as scores: distances are squared, as the reference does."""
        return block.square()

    def block_fn(self, rows: str, cols: str) -> Callable[[int, int, int, int], Tensor]:
        mat = self._mat(rows, cols)
        return lambda r0, r1, c0, c1: self._read(mat[r0:r1, c0:c1])

    @checked(
        rows=Index(ndim=1, high=Ref("self", fn=lambda s: s.m)),
        cols=Index(
            shape=Ref("rows", fn=lambda r: tuple(r.shape)), high=Ref("self", fn=lambda s: s.m)
        ),
    )
    def pairs(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Scores of the node pairs ``(rows[p], cols[p])`` (squared distances here)."""
        if self.nq == 0:
            return self._read(self._mat("d", "d")[rows, cols])
        out = torch.empty(rows.shape[0], device=self.device, dtype=self.dtype)
        rq, cq = rows < self.nq, cols < self.nq
        for sel, part, ro, co in (
            (rq & cq, ("q", "q"), 0, 0),
            (rq & ~cq, ("q", "d"), 0, self.nq),
            (~rq & cq, ("d", "q"), self.nq, 0),
            (~rq & ~cq, ("d", "d"), self.nq, self.nq),
        ):
            out[sel] = self._read(self._mat(*part)[rows[sel] - ro, cols[sel] - co])
        return out


class ScoreNodes(DistanceNodes):
    r"""Graph nodes given by dense *similarities* ``qq`` :math:`(Q, Q)`, ``qd`` :math:`(Q, N)`
    and ``dd`` :math:`(N, N)` (``qq`` and ``qd`` are ``None`` all-vs-all): row :math:`i` of
    ``[[qq, qd], [qd^T, dd]]`` holds node :math:`i`'s similarities, read as given (the
    similarity counterpart of :class:`DistanceNodes`, for GNN re-ranking of precomputed scores).
    """

    metric = "ip"

    def _mat(self, rows: str, cols: str) -> Tensor:
        return {
            ("q", "q"): lambda: self.qq,
            ("q", "d"): lambda: self.qd,
            ("d", "q"): lambda: self.qd.T,
            ("d", "d"): lambda: self.dd,
        }[(rows, cols)]()

    def _read(self, block: Tensor) -> Tensor:
        return block


# ----------------------------------------------------------------------------- truncation lists
def self_first(indices: Tensor, truncation: int) -> Tensor:
    r"""Truncation lists :math:`T_i` with node :math:`i` first, from a kNN of the nodes in
    themselves.

    Node :math:`i` is removed wherever it appears in row :math:`i` and put first; the other
    entries keep their order, and the list is cut to ``truncation`` entries (``-1`` padding is
    kept at the end, duplicate ids are kept once).

    Args:
        indices: :math:`(N, m)` int64 kNN of node :math:`i` (``-1`` for padding).
        truncation: Length :math:`T` of each list, ``T >= 1`` (entries beyond the ``N``
            nodes are ``-1`` padding).

    Returns:
        :math:`(N, T)` int64 lists, ``-1`` where fewer than :math:`T` nodes are known.

    Example:
        >>> self_first(torch.tensor([[0, 2, 1], [0, 1, 2], [2, 2, -1]]), 3)
        tensor([[ 0,  2,  1],
                [ 1,  0,  2],
                [ 2, -1, -1]])

    Raises:
        ValueError: ids outside ``[0, N)`` other than ``-1`` padding, ``truncation < 1``,
            or ``N x T`` lists larger than the device's memory.
    """
    indices = check_tensor(indices, "indices", ndim=2, kind="int")
    n = indices.shape[0]
    # a list holds at most the N nodes: a longer one is -1 padding beyond N; refused only
    # when its N x T memory could not be allocated
    truncation = check_int(truncation, "truncation", low=1)
    check_allocation(n * truncation, torch.int64, indices.device, "truncation", "N x T lists")
    indices = check_index(indices, "indices", high=n, padding=True)
    rows = torch.arange(n, device=indices.device)[:, None]
    return _self_first_rows(indices, rows, truncation)


def _self_first_rows(indices: Tensor, rows: Tensor, truncation: int) -> Tensor:
    n, m = indices.shape
    idx = indices.masked_fill(indices == rows, -1)
    # drop repeated ids within a row (keep the first occurrence)
    if m > 1:
        srt, order = idx.sort(dim=1, stable=True)
        dup = torch.zeros_like(srt, dtype=torch.bool)
        dup[:, 1:] = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        idx = idx.scatter(1, order, srt.masked_fill(dup, -1))
    # move padding to the end, keeping the order of valid entries
    key = (idx < 0).to(torch.int8)
    order = key.sort(dim=1, stable=True).indices
    idx = idx.gather(1, order)
    out = torch.cat([rows.expand(n, 1), idx], dim=1)[:, :truncation]
    if out.shape[1] < truncation:
        pad = out.new_full((n, truncation - out.shape[1]), -1)
        out = torch.cat([out, pad], dim=1)
    return out


def truncation_lists(
    x: Tensor, index: KNNIndex, truncation: int, num_candidates: int
) -> tuple[Tensor, KNNResult]:
    """One kNN search of the nodes ``x`` :math:`(N, D)` in themselves (``index`` holds ``x``),
    giving the truncation lists of offline diffusion (:func:`self_first`: :math:`(N, T)`,
    int32 when the ids fit, node first) and the ``num_candidates`` best neighbours of each
    node for its graph; memory stays ``N x (T + num_candidates)`` numbers.

    With an exact (flat) index on a CPU, from ``_SELF_SEARCH_ROWS`` nodes, the search is
    :func:`~graphrerank.graph.knn.self_knn` (the all-vs-all search in half the products;
    the same neighbours up to float ties); otherwise ``index.search`` in chunks of rows.

    Example:
        >>> from graphrerank.graph import KNNIndex
        >>> x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
        >>> lists, cand = truncation_lists(x, KNNIndex(backend="torch").add(x), 2, 3)
        >>> lists
        tensor([[0, 1],
                [1, 0],
                [2, 1]], dtype=torch.int32)
        >>> cand.indices
        tensor([[0, 1, 2],
                [1, 0, 2],
                [2, 1, 0]])
    """
    if not isinstance(x, ScoreMatrix):
        x = check_features(x, "x", detach=True)
    n = x.shape[0]
    truncation = check_int(truncation, "truncation", low=1)
    num_candidates = check_int(num_candidates, "num_candidates", low=1)
    if not callable(getattr(index, "search", None)):
        raise TypeError(f"index must have a search method, got {type(index).__name__}")
    if getattr(index, "ntotal", n) != n:
        raise ValueError(f"index holds {index.ntotal} items, but x has {n} (the index must hold x)")
    t = min(truncation, n)
    kc = min(num_candidates, n)
    m = max(t, kc)
    itype = torch.int32 if n < 2**31 - 1 else torch.int64
    dtype = _self_search_dtype(x, index)
    if dtype is not None:
        knn = self_knn(x.to(dtype), m, metric=index.metric, check_input=False)
        check_overflow(knn.scores, "x", "x")
        idx = knn.indices
        lists = _self_first_exact(idx, torch.arange(n)[:, None], t).to(itype)
        cs, ci = knn.scores[:, :kc].to(x.dtype), idx[:, :kc]
        if kc < m:  # give back the rest of the search
            cs, ci = cs.contiguous(), ci.contiguous()
        return lists, KNNResult(cs, ci)
    lists = torch.empty(n, t, dtype=itype, device=x.device)
    cs = torch.empty(n, kc, dtype=x.dtype, device=x.device)
    ci = torch.empty(n, kc, dtype=torch.long, device=x.device)
    # an exact search returns distinct ids and no padding: only the rows not headed by their
    # node need the general rule (which sorts every row)
    first = _self_first_exact if type(index) is KNNIndex and index.kind == "flat" else None
    for s in range(0, n, _SEARCH_ROWS):
        knn = index.search(x[s : s + _SEARCH_ROWS], m)
        idx = knn.indices
        # self_first needs the node ids of these rows
        rows = torch.arange(s, s + idx.shape[0], device=idx.device)[:, None]
        lists[s : s + idx.shape[0]] = (first or _self_first_rows)(idx, rows, t).to(itype)
        cs[s : s + idx.shape[0]] = knn.scores[:, :kc]
        ci[s : s + idx.shape[0]] = idx[:, :kc]
    return lists, KNNResult(cs, ci)


def _self_search_dtype(x, index) -> torch.dtype | None:
    """The dtype :func:`truncation_lists` searches ``x`` in with
    :func:`~graphrerank.graph.knn.self_knn` (float32 for faiss, which searches so; the
    stored dtype for the torch backend), or ``None`` where the index's own search runs: not
    an exact :class:`KNNIndex` on a CPU, or fewer than ``_SELF_SEARCH_ROWS`` nodes."""
    if (
        not isinstance(x, Tensor)
        or x.device.type != "cpu"
        or type(index) is not KNNIndex
        or index.kind != "flat"
        or x.shape[0] < _SELF_SEARCH_ROWS
        or x.shape[1] < _SELF_SEARCH_DIM
    ):
        return None
    if index._backend == "faiss":
        return torch.float32
    if index._backend == "torch" and index._vectors is not None:
        return index._vectors.dtype
    return None


def _self_first_exact(indices: Tensor, rows: Tensor, truncation: int) -> Tensor:
    """:func:`self_first` of an exact search's lists (distinct ids, no padding): the rows
    already headed by their node are only cut; the others (exact duplicates ranked first,
    or the node missing) go through the general rule."""
    out = indices[:, :truncation].clone()
    bad = (indices[:, 0] != rows[:, 0]).nonzero().flatten()
    if bad.numel():
        out[bad] = _self_first_rows(indices[bad], rows[bad], truncation)
    return out
