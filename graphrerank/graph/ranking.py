r"""Tie-aware top-``k`` selection: the ``k`` best items of each row by a score, items with equal
scores ordered by a second key.

Re-ranking scores tie often: diffusion leaves every item it does not reach at exactly 0,
k-reciprocal gives :math:`d^* = 1` to every item that shares nothing with the query. The order
of such items decides mAP, so it is always defined, by a secondary key (the first-stage
similarity, or the database index). Every routine here finishes with one ordering, PyG's
stable :func:`~torch_geometric.utils.lexsort` by (score, secondary key), descending; they
differ in the shape the scores come in:

* :func:`top_k_with_ties`: dense :math:`(Q, N)` scores, the secondary key computed only for the
  rows with a tie in their top ``k`` or at its boundary;
* :func:`rank_candidates` / :func:`rank_csr` / :func:`rank_dense`: scores that are non-zero
  only on a few candidates per row (offline diffusion), every other item scoring 0 in
  first-stage order;
* :func:`select_topk`: a score that combines a sparse overlap with a base score known exactly
  only on each row's shortlist and bounded elsewhere (k-reciprocal and GNN re-ranking).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import CSR, Array, Index, Int, OneOf, Ref, check_features, check_index, checked
from ..typing import TIES, RerankResult
from .scores import ScoreMatrix
from .sparse import csr_padded

__all__ = [
    "dense_ranking",
    "lexsort_desc",
    "rank_candidates",
    "rank_csr",
    "rank_dense",
    "select_topk",
    "top_k_with_ties",
    "topk",
]


_SCORES = Array(ndim=2, nan=False)  # -inf allowed (padding), NaN has no order


@checked(x=_SCORES, k=Int(low=0, high=Ref("x", dim=1)))
def topk(x: Tensor, k: int, largest: bool = True) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim=1)``, through a full sort when ``k`` is a large part of a row (where
    sorting is the faster of the two)."""
    if 4 * k > x.shape[1]:
        v, i = x.sort(dim=1, descending=largest)
        return v[:, :k], i[:, :k]
    return x.topk(k, dim=1, largest=largest)


@checked(
    primary=Array(ndim=2, kind="number", nan=False),
    secondary=Array(kind="number", nan=False, shape=Ref("primary", fn=lambda p: tuple(p.shape))),
)
def lexsort_desc(primary: Tensor, secondary: Tensor) -> Tensor:
    """Row-wise order by ``primary`` descending, then ``secondary`` descending (stable).

    Example:
        >>> lexsort_desc(torch.tensor([[1.0, 2.0, 1.0]]), torch.tensor([[0.0, 0.0, 5.0]]))
        tensor([[1, 2, 0]])
    """
    from torch_geometric.utils import lexsort  # here: KNN's ranking need not import PyG

    return lexsort([secondary, primary], dim=1, descending=True)


# The unchecked bodies, for the calls inside this module whose inputs are already checked
# or built here (the checks read every element once more).
_topk = topk.__wrapped__
_lexsort_desc = lexsort_desc.__wrapped__


@checked(scores=Array(ndim=2, nan=False, posinf=False), k=Int(low=1, high=Ref("scores", dim=1)))
def top_k_with_ties(
    scores: Tensor, k: int, secondary: Callable[[Tensor], Tensor] | None
) -> tuple[Tensor, Tensor]:
    """The ``k`` best columns of each row of ``scores`` :math:`(Q, N)`, best first.

    Columns with equal scores are ordered by ``secondary(rows)`` (a :math:`(R, N)` tensor for
    the given rows, higher first). It is only evaluated for the rows that have ties within
    their top ``k`` or at its boundary.

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
        >>> top_k_with_ties(s, 3, lambda rows: torch.tensor([[0.1, 0.0, 0.3, 0.2]]))
        (tensor([[1., 0., 0.]]), tensor([[1, 2, 3]]))
    """
    if secondary is not None and not callable(secondary):
        raise TypeError(f"secondary must be callable or None, got {type(secondary).__name__}")
    vals, idx = scores.topk(k, dim=1)
    if secondary is None or scores.shape[1] == 0:
        return vals, idx
    last = vals[:, -1:]
    greater = scores > last
    equal = scores == last
    n_greater = greater.sum(1)
    n_equal = equal.sum(1)
    boundary = n_greater + n_equal > k
    inside = (vals[:, 1:] == vals[:, :-1]).any(1) if k > 1 else torch.zeros_like(boundary)
    rows = (boundary | inside).nonzero().flatten()
    if rows.numel() == 0:
        return vals, idx
    sec = secondary(rows)
    if not isinstance(sec, Tensor) or tuple(sec.shape) != (rows.numel(), scores.shape[1]):
        raise ValueError(
            f"secondary must return a ({rows.numel()}, {scores.shape[1]}) tensor for "
            f"{rows.numel()} rows, got {getattr(sec, 'shape', type(sec).__name__)}"
        )
    sec = sec.to(torch.float64)
    s = scores[rows]
    key = torch.where(
        greater[rows],
        torch.tensor(float("inf"), dtype=sec.dtype, device=sec.device),
        torch.where(
            equal[rows], sec, torch.tensor(float("-inf"), dtype=sec.dtype, device=sec.device)
        ),
    )
    sel = key.topk(k, dim=1).indices
    order = lexsort_desc(s.gather(1, sel), sec.gather(1, sel))
    sel = sel.gather(1, order)
    vals = vals.clone()
    idx = idx.clone()
    vals[rows] = s.gather(1, sel)
    idx[rows] = sel
    return vals, idx


# ----------------------------------------------------------------------------- sparse scores
@checked(k=Int(low=0), n=Int(low=0))
def dense_ranking(k: int, n: int) -> bool:
    """Whether lists of ``k`` out of ``n`` items are ranked densely (:func:`rank_dense`)."""
    return 4 * k >= n


def _num_items(database) -> int:
    shape = getattr(database, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"database must be an (N, D) array or score matrix, got {shape or type(database).__name__}"
        )
    return int(shape[0])


_TIE_RULES = OneOf(TIES)


@checked(
    k=Int(low=1),
    ties=_TIE_RULES,
    cand_idx=Index(ndim=2, padding=True, unique=True, high=Ref("database", fn=_num_items)),
    cand_val=Array(shape=Ref("cand_idx", fn=lambda c: tuple(c.shape)), finite=True),
)
def rank_candidates(
    cand_idx: Tensor,
    cand_val: Tensor,
    k: int,
    queries: Tensor,
    database: Tensor,
    index,
    ties: str = "similarity",
) -> RerankResult:
    r"""The ``k`` best items per query for scores that are non-zero only at ``cand_idx``.

    Every database item outside the candidates scores 0. Items are ordered by score, then
    (``ties="similarity"``) by first-stage similarity :math:`\mathbf{q}^\top\mathbf{x}_j`,
    so the many items that score exactly 0 keep their first-stage order (the best zero-scored
    items come from ``index.search``, a :class:`~graphrerank.graph.KNNIndex` of
    ``database``), or (``ties="index"``) by database index, lowest first.

    Args:
        cand_idx: :math:`(B, M)` candidate ids, ``-1`` padding, unique per row.
        cand_val: :math:`(B, M)` their scores.
        k: List length.
        queries: :math:`(B, D)` query descriptors (for first-stage similarities), or the
            queries' :class:`~graphrerank.graph.ScoreMatrix` against the database.
        database: :math:`(N, D)` database descriptors (unused with a score matrix).
        index: Index of ``database`` searched for the best zero-scored items (a
            :class:`~graphrerank.graph.ScoreIndex` with a score matrix).
        ties: ``"similarity"`` or ``"index"``.

    Returns:
        ``(scores, indices)`` :math:`(B, k)`, ``-1`` / ``-inf`` where fewer than ``k`` items
        exist.
    """
    b, m = cand_idx.shape
    n = database.shape[0]
    device, dtype = cand_idx.device, cand_val.dtype
    sec_dtype = torch.float64 if ties == "index" else dtype
    valid = (cand_idx >= 0) & (cand_val != 0)
    if m >= k:
        # fast path: k positive scores per query, no equal scores among the best k or at the
        # boundary (the usual case) -> a plain top-k
        pos_val = cand_val.masked_fill(~valid | (cand_val <= 0), float("-inf"))
        top = pos_val.topk(k, dim=1)
        v = top.values
        if bool((v[:, -1] > 0).all()):
            ties_inside = bool((v[:, 1:] == v[:, :-1]).any())
            at_edge = (pos_val == v[:, -1:]).sum(1) > 1
            if not ties_inside and not bool(at_edge.any()):
                return RerankResult(v, cand_idx.gather(1, top.indices))
    cand_idx = cand_idx.masked_fill(~valid, -1)
    npos = (valid & (cand_val > 0)).sum(1)
    nnz = valid.sum(1)
    need0 = (k - npos).clamp(min=0)
    idx_parts, val_parts = [cand_idx], [cand_val.masked_fill(~valid, 0)]
    if ties == "index":
        sec_parts = [-cand_idx.to(sec_dtype)]
    else:
        sec_parts = [torch.full(cand_idx.shape, float("nan"), dtype=sec_dtype, device=device)]
    rows = need0.nonzero().squeeze(1)
    if rows.numel():
        # the best zero-scored items: the first-stage list (or the lowest indices) with the
        # non-zero candidates removed; need0 + nnz first items always hold enough of them
        mm = int(min(n, int((need0 + nnz).index_select(0, rows).max())))
        if ties == "index":
            fi = torch.arange(mm, device=device).expand(rows.numel(), mm)
            fs = -fi.to(sec_dtype)
        else:
            fs, fi = index.search(queries.index_select(0, rows), mm)
        cs = cand_idx.index_select(0, rows).masked_fill(~valid.index_select(0, rows), n)
        cs = cs.sort(dim=1).values
        at = torch.searchsorted(cs, fi.masked_fill(fi < 0, n + 1)).clamp_(max=cs.shape[1] - 1)
        ok = (fi >= 0) & (cs.gather(1, at) != fi)
        take = ok & ((ok.cumsum(1) - 1) < need0.index_select(0, rows)[:, None])
        zi = torch.full((b, mm), -1, dtype=torch.long, device=device)
        zs = torch.full((b, mm), float("-inf"), dtype=sec_dtype, device=device)
        zi[rows] = torch.where(take, fi, -1)
        zs[rows] = fs.to(sec_dtype)
        idx_parts.append(zi)
        val_parts.append(torch.zeros(b, mm, dtype=dtype, device=device))
        sec_parts.append(zs)
    idx = torch.cat(idx_parts, dim=1)
    val = torch.cat(val_parts, dim=1)
    sec = torch.cat(sec_parts, dim=1)
    valid = idx >= 0
    val = val.masked_fill(~valid, float("-inf"))

    def fill_sec(mask: Tensor) -> None:
        # first-stage similarities where they decide an order and are not known yet
        todo = (mask & torch.isnan(sec)).nonzero()
        if todo.numel():
            r, c = todo[:, 0], todo[:, 1]
            j = idx[r, c]
            if isinstance(queries, ScoreMatrix):
                s = queries.pairs(r, j)
            else:
                s = (queries.index_select(0, r) * database.index_select(0, j)).sum(1)
            sec[r, c] = s.to(sec.dtype)

    kk = min(k, idx.shape[1])
    thr = val.topk(kk, dim=1).values[:, -1:]
    gt = val > thr
    eq = (val == thr) & valid
    need = kk - gt.sum(1, keepdim=True)
    crowded = eq.sum(1, keepdim=True) > need  # more tied items than places left
    fill_sec(eq & crowded)
    sec_eq = torch.where(eq, sec, float("-inf"))
    chosen_pos = sec_eq.topk(kk, dim=1).indices
    chosen = torch.zeros_like(eq)
    chosen.scatter_(1, chosen_pos, torch.arange(kk, device=device)[None, :] < need)
    selected = (gt | torch.where(crowded, chosen, eq)) & valid
    # min(kk, #valid) selected per row; bring them to the front, best score first
    key = val.masked_fill(~selected, float("-inf"))
    pos = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :kk]
    sel_ok = selected.gather(1, pos)
    s_idx = idx.gather(1, pos).masked_fill(~sel_ok, -1)
    s_val = val.gather(1, pos)
    # order equal scores by the secondary key
    dup = torch.zeros_like(sel_ok)
    same = (s_val[:, 1:] == s_val[:, :-1]) & sel_ok[:, 1:] & sel_ok[:, :-1]
    dup[:, 1:] |= same
    dup[:, :-1] |= same
    if bool(dup.any()):
        mask = torch.zeros_like(selected).scatter_(1, pos, dup)
        fill_sec(mask)
        s_sec = sec.gather(1, pos).nan_to_num(nan=float("-inf"))
        s_sec = s_sec.masked_fill(~sel_ok, float("-inf"))
        o = lexsort_desc(s_val, s_sec)
        s_idx, s_val = s_idx.gather(1, o), s_val.gather(1, o)
    if kk < k:  # fewer items than k (tiny database with an approximate index)
        pad = k - kk
        s_idx = torch.cat([s_idx, s_idx.new_full((b, pad), -1)], dim=1)
        s_val = torch.cat([s_val, s_val.new_full((b, pad), float("-inf"))], dim=1)
    return RerankResult(s_val, s_idx)


@checked(
    scores=Array(ndim=2, finite=True), k=Int(low=1, high=Ref("scores", dim=1)), ties=_TIE_RULES
)
def rank_dense(
    scores: Tensor, k: int, queries: Tensor, database: Tensor, ties: str
) -> RerankResult:
    """:func:`rank_candidates` for dense ``(B, N)`` scores and long lists (``k`` near ``N``):
    one stable ordering by score, then by the secondary key.

    ``scores`` must be finite (a real item has a real score); ``queries`` and ``database``
    (``ties="similarity"``) are finite descriptors, promoted to one dtype for their
    similarities."""
    if ties == "index":
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    else:
        if not isinstance(queries, ScoreMatrix):  # the secondary key: their similarities
            database = check_features(database, "database")
            queries = check_features(
                queries, "queries", dim=database.shape[1], dim_of="the dimension of database"
            )
            if (queries.shape[0], database.shape[0]) != tuple(scores.shape):
                raise ValueError(
                    f"scores must have shape (queries, database) = ({queries.shape[0]}, "
                    f"{database.shape[0]}), got {tuple(scores.shape)}"
                )
            if queries.dtype != database.dtype:
                dt = torch.promote_types(queries.dtype, database.dtype)
                queries, database = queries.to(dt), database.to(dt)
        first = queries.similarities() if isinstance(queries, ScoreMatrix) else queries @ database.T
        order = lexsort_desc(scores, first)[:, :k]
    return RerankResult(scores.gather(1, order), order)


@checked(F=CSR(), k=Int(low=1, high=Ref("F", dim=1)), ties=_TIE_RULES)
def rank_csr(
    F: Tensor, k: int, queries: Tensor, database: Tensor, index, ties: str
) -> RerankResult:
    """:func:`rank_candidates` for a ``(B, N)`` CSR score matrix (dense for long lists)."""
    if dense_ranking(k, F.shape[1]):
        return rank_dense(F.to_dense(), k, queries, database, ties)
    idx, val = csr_padded(F)
    check_index(idx, "F (a row's columns)", high=F.shape[1], padding=True, unique=True)
    return rank_candidates.__wrapped__(idx, val, k, queries, database, index, ties)


# ----------------------------------------------------------------------------- bounded scores
@checked(
    overlap=Array(ndim=2, finite=True),
    short_idx=Index(ndim=2, high=Ref("overlap", dim=1)),
    short_base=Array(shape=Ref("short_idx", fn=lambda s: tuple(s.shape)), nan=False),
    k=Int(low=1, high=Ref("short_idx", dim=1)),
)
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
    score_uses_base: bool = True,
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

    With ``score_uses_base=False`` (a score of the overlap alone, such as GNN re-ranking's
    at :math:`\lambda = 0`), ``base_of`` is asked only for the items outside the shortlists
    whose score equals another candidate's of the same row: the base only orders ties.

    Returns:
        ``(scores, indices)`` :math:`(R, k)`, best first; equal scores are ordered by the
        base (the better first).
    """
    r = overlap.shape[0]
    dev, dt = overlap.device, overlap.dtype
    s = short_idx.shape[1]
    s_short = score(overlap.gather(1, short_idx), short_base)
    kth = _topk(s_short, k)[0][:, -1]
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
    unknown = None
    if sr.numel():
        first = torch.cumsum(counts, 0) - counts
        pos = s + torch.arange(sr.numel(), device=dev) - first[sr]
        idx[sr, pos] = sc
        if score_uses_base:
            b = base_of(sr, sc)
            key[sr, pos] = score(p, b)
            base[sr, pos] = b
        else:  # the base of these only where a tie needs it (below)
            key[sr, pos] = score(p, short_base[sr, -1])
            unknown = torch.zeros((r, width), dtype=torch.bool, device=dev)
            unknown[sr, pos] = True
    # the k best by score; every item tied with the k-th comes along, then the base orders
    # equal scores (better first)
    if 4 * k <= width:  # narrow the field first
        kth = _topk(key, k)[0][:, -1:]
        take = int((key >= kth).sum(1).max())
        key, pos = _topk(key, take)
        idx, base = idx.gather(1, pos), base.gather(1, pos)
        if unknown is not None:
            unknown = unknown.gather(1, pos)
    if unknown is not None and key.shape[1] > 1:
        # items whose score equals another's in their row: their base orders them
        sk, so = key.sort(dim=1, descending=True, stable=True)
        eq = sk[:, 1:] == sk[:, :-1]
        tied_sorted = torch.zeros_like(unknown)
        tied_sorted[:, 1:] |= eq
        tied_sorted[:, :-1] |= eq
        tied = torch.zeros_like(unknown).scatter_(1, so, tied_sorted)
        need = unknown & tied & (idx >= 0)
        if bool(need.any()):
            nr, npos = need.nonzero(as_tuple=True)
            base[nr, npos] = base_of(nr, idx[nr, npos]).to(dt)
    order = _lexsort_desc(key, base if higher_base_is_better else -base)[:, :k]
    return key.gather(1, order), idx.gather(1, order)
