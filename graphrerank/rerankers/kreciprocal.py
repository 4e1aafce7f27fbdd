r"""k-reciprocal encoding re-ranking (Zhong et al., CVPR 2017), computed sparsely."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

from .._checks import as_tensor, check_k, check_same_device
from .._params import PROGRESS, Int, Real, check_params, setting
from .._progress import ProgressCallback
from ..graph import lists as _lists
from ..graph.lists import (
    DistanceNodes,
    FeatureNodes,
    ScoreNodes,
    _database_scan,
    graph_lists,
)
from ..graph.ranking import select_topk
from ..graph.scores import ScoreMatrix
from ..graph.sparse import (
    csr,
    csr_rows,
    csr_transpose,
    overlap_cost,
    pair_overlap,
    pair_products,
    row_chunks,
)
from ..nn.kreciprocal import ENCODING_MATH, kreciprocal_encoding
from ..typing import RerankResult, TensorLike
from .base import Reranker

__all__ = ["KReciprocal", "kreciprocal_rerank", "kreciprocal_rerank_distances"]

#: Neighbours kept per database item at fit: enough for all-vs-all rankings of length
#: ``LIST_LENGTH - SHORTLIST_MARGIN`` (100) without a second search.
LIST_LENGTH = 500


#: Working blocks (:data:`~graphrerank.graph.lists.BLOCK_ELEMENTS`) of the dense overlap
#: accumulator of the final ranking.
_RANK_BLOCKS = 4


def _list_length(k1: int, k2: int, m: int) -> int:
    return min(m, max(k1 + 1, k2, LIST_LENGTH))


def _in_range(amax: float, x: Tensor) -> bool:
    """Whether features of largest magnitude ``amax`` have squared distances that neither
    overflow nor underflow in ``x``'s dtype."""
    fi = torch.finfo(x.dtype)
    return amax == 0.0 or (
        math.sqrt(fi.tiny) * 2**12 <= amax <= math.sqrt(fi.max / (4 * x.shape[1])) / 16
    )


def _feature_scale(amax: float, x: Tensor) -> float:
    """A power of two :math:`c` that brings features of largest magnitude ``amax`` into the
    range of :func:`_in_range` (1 where they are in it). The distances are normalised per row
    by the row's maximum, so the result does not depend on :math:`c`; a power of two scales
    every number exactly."""
    if _in_range(amax, x):
        return 1.0
    return math.ldexp(1.0, -math.frexp(amax)[1])


def _amax(x: Tensor) -> float:
    return float(x.abs().amax()) if x.numel() else 0.0


# ----------------------------------------------------------------------------- final ranking
def _inverted_index(vd: Tensor) -> Tensor:
    r""":math:`V_d^\top` in CSR form: on a CPU through SciPy's compiled conversion (one
    pass, no sort), elsewhere :func:`~graphrerank.graph.sparse.csr_transpose`."""
    if vd.device.type != "cpu":
        return csr_transpose(vd)
    crow, col, val = vd.crow_indices(), vd.col_indices(), vd.values()
    a = scipy.sparse.csr_matrix((val.numpy(), col.numpy(), crow.numpy()), shape=tuple(vd.shape))
    t = a.T.tocsr()
    t.sort_indices()
    return csr(
        torch.from_numpy(t.indptr.astype(np.int64)),
        torch.from_numpy(t.indices.astype(np.int64)),
        torch.from_numpy(t.data),
        (vd.shape[1], vd.shape[0]),
        check=False,
        sorted=True,
    )


def _rank(
    v: Tensor,
    nq: int,
    short_idx: Tensor,
    short_d: Tensor,
    row_max: Tensor,
    k: int,
    lambda_value: float,
    nodes,
    query_ids: Tensor,
    budget: int,
    bar=None,
) -> RerankResult:
    r"""Top-``k`` database items of each query node by the final distance

    .. math:: d^*(i, j) = (1 - \lambda)\, d_J(i, j) + \lambda\, d(i, j).

    ``v`` holds all :math:`M` encodings (queries first); database nodes are ``nq..M-1`` (all
    nodes when ``nq == 0``); ``query_ids`` are the node ids of the query rows, ``short_idx``
    (database positions) and ``short_d`` (raw distances) each query's nearest database items.
    """
    m = v.shape[0]
    nd = m - nq
    vq = v if nq == 0 else csr_rows(v, 0, nq)
    vd = v if nq == 0 else csr_rows(v, nq, m)
    inv = _inverted_index(vd)
    lam = float(lambda_value)
    tiny = torch.finfo(short_d.dtype).tiny
    dn_short = short_d / row_max[query_ids, None].clamp(min=tiny)

    def score(p: Tensor, dn: Tensor) -> Tensor:
        dj = 1 - p / (2 - p)
        return 0.0 - ((1 - lam) * dj + lam * dn)  # 0.0 - x: no negative zeros

    def min_overlap(kth: Tensor, dn: Tensor) -> Tensor:
        # score(p, dn) >= kth  <=>  p / (2 - p) >= u  <=>  p >= 2u / (1 + u)
        if lam == 1:
            return torch.full_like(kth, float("inf"))
        u = (1 - (-kth - lam * dn) / (1 - lam)).clamp(min=0)
        return (2 * u / (1 + u)) * (1 - 1e-6) - 1e-12  # err low: candidates are re-scored

    # internal calls on parts built here: the declared checks (passes over the dense
    # accumulator) are skipped; the accumulator is _RANK_BLOCKS working blocks, so that few
    # chunks (few operations) cover the queries
    cost = overlap_cost.__wrapped__(vq, inv)
    budget = budget * _RANK_BLOCKS
    nrows = vq.shape[0]
    scores = torch.empty(nrows, k, dtype=v.dtype, device=v.device)
    indices = torch.empty(nrows, k, dtype=torch.long, device=v.device)
    for a, b in row_chunks(cost, budget, max(1, budget // nd)):
        buf = torch.zeros(b - a, nd, dtype=v.dtype, device=v.device)
        pair_overlap.__wrapped__(csr_rows.__wrapped__(vq, a, b), inv, "min", buf)
        qid = query_ids[a:b]

        def base_of(r: Tensor, c: Tensor, qid=qid) -> Tensor:
            rows = qid[r]
            return nodes.pairs(rows, c + nq) / row_max[rows].clamp(min=tiny)

        s, i = select_topk.__wrapped__(
            buf, short_idx[a:b], dn_short[a:b], k, score, base_of, min_overlap,
            higher_base_is_better=False,
        )  # fmt: skip
        scores[a:b], indices[a:b] = s, i
        if bar is not None:
            bar.update(b - a)
    return RerankResult(scores, indices)


def _run(
    nodes,
    k: int,
    k1: int,
    k2: int,
    lambda_value: float,
    database: dict[str, Tensor] | None = None,
    budget: int | None = None,
    bar=None,
) -> RerankResult:
    """The whole method over the nodes of one graph; ``database`` optionally holds the
    database-only lists computed before (``indices``, ``values``, ``extreme``); ``bar`` (a
    progress bar over the query rows) advances as they are ranked."""
    budget = _lists.BLOCK_ELEMENTS if budget is None else budget
    m = nodes.m
    lists = graph_lists(
        nodes,
        graph_k=min(m, max(k1 + 1, k2)),
        length=_list_length(k1, k2, m),
        k=k,
        largest=False,
        extreme=True,
        database=database,
        budget=budget,
    )
    return _step(nodes, lists, k, k1, k2, lambda_value, budget, bar)


def _step(nodes, lists, k, k1, k2, lambda_value, budget, bar=None) -> RerankResult:
    """The method given the neighbour lists of :func:`~graphrerank.graph.graph_lists`:
    the encodings, the local query expansion, the Jaccard sums and the exact top-``k``."""
    nbr, nbr_d, row_max = lists["indices"], lists["values"], lists["extreme"]
    short_idx, short_d, query_ids = (
        lists["short_indices"],
        lists["short_values"],
        lists["query_ids"],
    )
    with _one_thread(nbr.device):
        v = kreciprocal_encoding(nbr, nbr_d, row_max, k1, k2, nodes.pairs, budget)
        return _rank(
            v, nodes.nq, short_idx, short_d, row_max, k, lambda_value, nodes, query_ids, budget, bar
        )


@contextlib.contextmanager
def _one_thread(device: torch.device):
    """torch on one thread for the step after the neighbour lists (CPU): its operations are
    passes over memory, which a second thread hardly speeds up, while every parallel operation
    waits for both cores; on the shared 2-core benchmark machine (load 15) the digits step
    took 9-11 s on two threads and 4.9 s on one (0.6 s of CPU time)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_MATH = r"""
    For the :math:`M` items of one graph (the queries and the database together) with squared
    Euclidean distances normalised per row by the row's maximum over all :math:`M` items,
    :math:`d(i, j) = \lVert \mathbf{x}_i - \mathbf{x}_j \rVert^2 / \max_l \lVert \mathbf{x}_i
    - \mathbf{x}_l \rVert^2`, and :math:`N(i, k)` the first :math:`k + 1` items of :math:`i`'s
    ranking (itself included):

    .. math::
        {ENCODING_MATH}, \\
        d_J(i, j) &= 1 - \frac{m_{ij}}{2 - m_{ij}}, \quad m_{ij} = \sum_l \min(V_{il}, V_{jl}),
        \qquad d^*(i, j) = (1 - \lambda)\, d_J(i, j) + \lambda\, d(i, j),

    where :math:`\tilde k` rounds halves to even (as numpy does) and the local query expansion
    (second line, right) is skipped when :math:`k_2 = 1`. The result is ranked by
    :math:`d^*` (scores are :math:`-d^*`).""".replace("{ENCODING_MATH}", ENCODING_MATH)


class KReciprocal(Reranker):
    __doc__ = (
        r"""Re-ranking with k-reciprocal encoding from the `"Re-ranking Person
    Re-identification with k-reciprocal Encoding" <https://arxiv.org/abs/1701.08398>`_ paper
    (Zhong et al., CVPR 2017), with exactly the semantics of the authors' Python code.
"""
        + _MATH
        + r"""

    Transductive: queries and database form one graph (queries are neighbours of the database
    items too), so the result of a query depends on the other queries. ``rerank(None)`` builds
    one graph over the :math:`N` database items. Computed sparsely: one blocked pass gives
    each item's nearest neighbours and its row maximum (from features, the database against
    itself in half the products: each piece on and above the diagonal serves its rows and
    its columns; the query-database block once for both directions); the encodings are
    sparse rows; the
    Jaccard sums run over pairs that share an encoded item only (an inverted index); and since
    pairs that share nothing have :math:`d_J = 1`, the top-``k`` is taken over the pairs with
    an overlap and each query's ``k`` nearest items, which is exactly the top-``k`` of the
    dense formula. Memory grows as :math:`O(M k)` plus fixed-size blocks, never :math:`M^2`.

    Query-query distances shape every query's neighbourhood, so they must mean what
    query-database distances mean. With queries from another modality or encoder (sketches
    against photos, a distilled query network) they mostly measure the query side's own
    style: on the PKU-Sketch re-ID result file the 20 nearest items of a sketch are 75%
    sketches, and re-ranking all 50 sketches in one graph lowers the mAP from 21.7 to 17.6
    (21.1 one sketch at a time). Such queries are refused with ``asymmetric=True``.

    :meth:`fit` keeps each database item's 500 nearest items (:math:`O(N)` memory), so that
    ``rerank(None, k)`` with ``k <= 100`` needs no second search; a query's shortlist holds
    its ``k + 400`` nearest database items, so that few pairs outside it need their distance
    computed.

    Args:
        k1: Neighbourhood size :math:`k_1` of the k-reciprocal sets (reference 20).
        k2: Local query expansion size :math:`k_2` (reference 6; 1 switches it off).
        lambda_value: Weight :math:`\lambda \in [0, 1]` of the original distance (reference
            0.3). Items with equal :math:`d^*` (with :math:`\lambda = 0`, all that share
            nothing with the query: :math:`d^* = 1`) are ordered by the original distance.
        progress: Progress of long re-rankings: ``None`` (a bar on a terminal, once a step
            runs longer than a second), ``True`` / ``False``, or a callback
            ``callback(done, total)``.

    Shapes:
        - **fit:** database :math:`(N, D)`
        - **rerank:** queries :math:`(Q, D)` or ``None`` :math:`\to` scores, indices
          :math:`(Q, k)`; scores are :math:`-d^*`, best (highest) first

    Raises:
        ValueError: invalid settings (at :meth:`fit`), bad inputs, or ``asymmetric=True``
            (the method compares queries with each other).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.5], [4.5], [10.0], [11.0], [13.0]], dtype=torch.float64)
        >>> q = torch.tensor([[0.4], [12.0]], dtype=torch.float64)
        >>> out = KReciprocal(k1=2, k2=1).fit(x).rerank(q, k=4)
        >>> out.indices
        tensor([[0, 1, 2, 3],
                [6, 5, 4, 3]])
        >>> out.scores
        tensor([[-0.0014, -0.0027, -0.7083, -0.7318],
                [-0.3515, -0.3534, -0.5687, -0.8172]], dtype=torch.float64)

    See Also:
        :func:`kreciprocal_rerank` (the function form),
        :func:`kreciprocal_rerank_distances` (from distance matrices).
    """
    )

    transductive = True
    accepts_scores = True
    candidate_scores = "negative_distance"
    needs_query_similarity = True
    #: Strict leave-one-out: query ``i`` with the other ``N - 1`` items as gallery is the
    #: all-vs-all graph of the ``N`` items, so it is that ranking without the own entry (exact).
    strict_leave_one_out = "own_entry"

    k1: int = setting(20, Int(1))
    k2: int = setting(6, Int(1))
    lambda_value: float = setting(0.3, Real(0.0, 1.0))
    progress: bool | ProgressCallback | None = setting(None, PROGRESS)

    @classmethod
    def _test_params(cls):
        return {"k1": 6, "k2": 3}

    def _nodes(self, queries, database=None, scale=None):
        db = self.database_ if database is None else database
        if isinstance(db, ScoreMatrix):
            return _score_nodes(db, queries, "k-reciprocal re-ranking", "distance")
        # Features of any finite magnitude (1e30, 1e-30): scaled by a power of two whose
        # squared distances are representable; the row-normalised distances do not change.
        c = getattr(self, "feature_scale_", 1.0) if scale is None else scale
        if c != 1.0:
            db = db * c
            queries = None if queries is None else queries * c
        return FeatureNodes(queries, db, "l2")

    def _fit(self, database: Tensor) -> None:
        n = database.shape[0]
        if not isinstance(database, ScoreMatrix):
            self.feature_scale_ = _feature_scale(_amax(database), database)
        nodes = self._nodes(None, database)
        length = _list_length(self.k1, self.k2, n)
        g = _database_scan(nodes, length, largest=False, extreme=True)
        self.neighbors_ = g["row_indices"]
        self.neighbor_distances_ = g["row_values"]
        self.row_max_ = g["row_extreme"]

    def _database_lists(self) -> dict[str, Tensor]:
        return {
            "indices": self.neighbors_,
            "values": self.neighbor_distances_,
            "extreme": self.row_max_,
        }

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        lists: dict[str, Tensor] | None = self._database_lists()
        scale = None
        if isinstance(queries, Tensor) and not isinstance(self.database_, ScoreMatrix):
            c = getattr(self, "feature_scale_", 1.0)
            if not _in_range(_amax(queries) * c, queries):
                # queries of another magnitude than the database: one scale for both, and
                # the database's lists (computed at fit at the fit's scale) computed again
                scale = _feature_scale(max(_amax(queries), _amax(self.database_)), queries)
                lists = None if scale != c else lists
        nodes = self._nodes(queries, scale=scale)
        with self._progress_bar(nodes.nq or nodes.nd, "KReciprocal") as bar:
            return _run(nodes, k, self.k1, self.k2, self.lambda_value, lists, bar=bar)

    def encodings(self) -> Tensor:
        r"""The encodings :math:`\mathbf{V}` (after local query expansion) of the database
        graph (all-vs-all), a ``torch.sparse_csr`` :math:`(N, N)` tensor; rows sum to one."""
        self._check_fitted()
        if not hasattr(self, "encodings_"):
            n = self.n_database_
            length = _list_length(self.k1, self.k2, n)
            nodes = self._nodes(None)
            self.encodings_ = kreciprocal_encoding(
                self.neighbors_[:, :length],
                self.neighbor_distances_[:, :length],
                self.row_max_,
                self.k1,
                self.k2,
                nodes.pairs,
            )
        return self.encodings_

    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        r"""Minus the final distance :math:`-d^*(i, j)` of each database pair (row
        :math:`i`, candidate :math:`j`) in the all-vs-all graph of the database (the edge
        re-scoring hook of :func:`~graphrerank.graph.knn_graph`); ``-inf`` at padding."""
        v = self.encodings()
        check_same_device(database=self.database_, rows=rows, candidates=candidates)
        b, m = candidates.shape
        valid = candidates >= 0
        r = rows[:, None].expand(b, m)[valid]
        c = candidates[valid]
        nodes = self._nodes(None)
        dn = nodes.pairs(r, c) / self.row_max_[r].clamp(min=torch.finfo(v.dtype).tiny)
        out = torch.full((b, m), float("-inf"), dtype=v.dtype, device=v.device)
        lam = float(self.lambda_value)
        overlap = pair_products(v, r, c, "min", _lists.BLOCK_ELEMENTS)
        out[valid] = 0.0 - ((1 - lam) * (1 - overlap / (2 - overlap)) + lam * dn)
        return out


def _score_nodes(database: ScoreMatrix, queries: ScoreMatrix | None, method: str, kind: str):
    """The graph nodes of precomputed scores (dense, of ``kind``; the queries' own scores
    among themselves are needed: the method compares queries with queries)."""
    for name, s in (("database", database), ("queries", queries)):
        if s is None:
            continue
        if s.kind != kind:
            conv = "as_distance" if kind == "distance" else "as_similarity"
            raise ValueError(
                f"{method} works on {kind}s: pass kind={kind!r} {name} scores (ScoreMatrix."
                f"{conv}() converts with the unit-sphere identity d^2 = 2 - 2 s)"
            )
        if s.is_sparse:
            raise ValueError(
                f"{method} needs every pair's score (row extremes, reciprocal lists, the scores "
                f"of pairs outside the top lists): pass dense {name} scores, not a sparse top-k"
            )
    nodes = DistanceNodes if kind == "distance" else ScoreNodes
    if queries is None:
        return nodes(None, None, database.matrix)
    if queries.query_scores is None:
        raise ValueError(
            f"{method} compares queries with each other: give the queries' scores among "
            "themselves, ScoreMatrix(query_x_database, query_scores=query_x_query)"
        )
    return nodes(queries.query_scores, queries.matrix, database.matrix)


def kreciprocal_rerank(
    queries: TensorLike | None,
    database: TensorLike,
    k: int = 100,
    **settings: Any,
) -> RerankResult:
    r"""k-reciprocal re-ranking of ``database`` for ``queries`` (``None``: all-vs-all), the
    function form of :class:`KReciprocal`:
    ``KReciprocal(**settings).fit(database).rerank(queries, k)`` (settings ``k1``, ``k2``,
    ``lambda_value``).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.5], [4.5], [10.0], [11.0], [13.0]])
        >>> kreciprocal_rerank(None, x, k=3, k1=2, k2=2).indices
        tensor([[0, 1, 2],
                [1, 0, 2],
                [2, 1, 3],
                [3, 2, 1],
                [4, 5, 6],
                [5, 4, 6],
                [6, 5, 4]])
    """
    return KReciprocal(**settings).fit(database).rerank(queries, k)


def _check_distance(x, name: str, shape: tuple[int, int] | None = None) -> Tensor:
    t = as_tensor(x, name)
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense matrix, got layout {t.layout}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must hold floating point distances, got dtype {t.dtype}")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if bool((t < 0).any()):
        raise ValueError(f"{name} contains negative distances")
    top = float(t.max())
    if not math.isfinite(top * top) or top * top > torch.finfo(t.dtype).max:
        raise ValueError(
            f"{name} holds distances up to {top:.3g}, whose squares (the method squares the "
            f"distances) overflow {t.dtype}: scale all three matrices by one factor (the "
            "result does not change) or pass float64"
        )
    return t


def kreciprocal_rerank_distances(
    q_g_dist: TensorLike | None,
    q_q_dist: TensorLike | None,
    g_g_dist: TensorLike,
    k: int = 100,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> RerankResult:
    r"""k-reciprocal re-ranking from Euclidean distance matrices, as the reference API takes
    them (``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``).

    The distances are squared here, as the reference does, so Euclidean distances of features
    give the same result as :func:`kreciprocal_rerank` on the features. Row :math:`i` of the
    normalised matrix is column :math:`i` of ``[[q_q, q_g], [q_g^T, g_g]]``, as in the
    reference (identical for symmetric inputs). Nothing :math:`(Q+N) \times (Q+N)` is
    assembled: the blocks are read in place.

    Args:
        q_g_dist: Query-database distances :math:`(Q, N)`, or ``None`` (with ``q_q_dist``) for
            all-vs-all over ``g_g_dist``.
        q_q_dist: Query-query distances :math:`(Q, Q)`, or ``None``.
        g_g_dist: Database-database distances :math:`(N, N)`.
        k: Length of each ranked list, ``1 <= k <= N``.
        k1, k2, lambda_value: As in :class:`KReciprocal`.

    Returns:
        ``(scores, indices)`` :math:`(Q, k)` (:math:`(N, k)` all-vs-all), scores
        :math:`-d^*`, best first.

    Raises:
        ValueError: shapes disagree, a matrix is empty, not finite or negative, the matrices
            are on different devices, or a setting is out of range.
        TypeError: a matrix is not a dense floating point array.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [4.0]], dtype=torch.float64)
        >>> d = torch.cdist(x, x)
        >>> kreciprocal_rerank_distances(d[:1, 1:], d[:1, :1], d[1:, 1:], k=3, k1=2, k2=1).indices
        tensor([[0, 1, 2]])
    """
    settings = {"k1": k1, "k2": k2, "lambda_value": lambda_value}
    check_params(settings, KReciprocal._constraints())
    gg = _check_distance(g_g_dist, "g_g_dist")
    nd = gg.shape[0]
    if gg.shape[1] != nd:
        raise ValueError(f"g_g_dist must be square, got shape {tuple(gg.shape)}")
    if (q_g_dist is None) != (q_q_dist is None):
        raise ValueError("give both q_g_dist and q_q_dist, or neither (all-vs-all)")
    qg = qq = None
    if q_g_dist is not None:
        qg = _check_distance(q_g_dist, "q_g_dist")
        if qg.shape[1] != nd:
            raise ValueError(
                f"q_g_dist has {qg.shape[1]} columns but g_g_dist describes {nd} database items"
            )
        qq = _check_distance(q_q_dist, "q_q_dist")
        if qq.shape[0] != qq.shape[1]:
            raise ValueError(f"q_q_dist must be square, got shape {tuple(qq.shape)}")
        if qg.shape[0] != qq.shape[0]:
            raise ValueError(
                f"q_g_dist has {qg.shape[0]} row(s) but q_q_dist describes {qq.shape[0]} "
                "queries: both must describe the same queries"
            )
        check_same_device(g_g_dist=gg, q_g_dist=qg, q_q_dist=qq)
        dtype = torch.promote_types(torch.promote_types(gg.dtype, qg.dtype), qq.dtype)
        gg, qg, qq = gg.to(dtype), qg.to(dtype), qq.to(dtype)
    k = check_k(k, nd)
    return _run(DistanceNodes(qq, qg, gg), k, k1, k2, lambda_value)
