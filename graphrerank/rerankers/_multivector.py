"""Diffusion re-rankers over the database graph whose queries may hold several vectors each
(regional descriptors): the settings and the machinery that online diffusion and fast spectral
ranking share."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .._checks import as_tensor, check_features, check_k, check_normalized, check_same_device
from .._params import PROGRESS, Int, OneOf, Real, setting
from .._progress import ProgressCallback
from ..graph import ScoreMatrix, knn_graph, normalize_adjacency
from ..graph.knn import knn_search
from ..typing import (
    BACKENDS,
    SYMMETRIZATIONS,
    TIES,
    Backend,
    KNNResult,
    RerankResult,
    Symmetrization,
    TensorLike,
    Ties,
)
from .base import Reranker

__all__ = ["MultiVectorReranker", "RegionalQueries"]

#: ``(Q, D)``, ``(Q, R, D)`` (with a ``(Q, R)`` mask) or a list of ``(R_q, D)`` descriptors.
RegionalQueries = TensorLike | list | tuple


def _is_regional(queries: Any) -> bool:
    if isinstance(queries, (Tensor, np.ndarray)):
        return queries.ndim == 3
    if isinstance(queries, (list, tuple)) and queries:
        first = queries[0]
        return isinstance(first, (Tensor, np.ndarray)) and first.ndim == 2
    return False


class MultiVectorReranker(Reranker):
    """A diffusion re-ranker over the mutual kNN graph of L2-normalised database descriptors,
    whose queries may have several vectors.

    The settings shared by :class:`~graphrerank.rerankers.Diffusion` and
    :class:`~graphrerank.rerankers.FastSpectralRanking` are declared here once (see their
    docstrings). Subclasses implement :meth:`_search` for flat query vectors with the query of
    each.
    """

    kd: int = setting(50, Int(1))
    kq: int = setting(10, Int(1))
    alpha: float = setting(0.99, Real(0, 1, high_open=True))
    gamma: float = setting(3.0, Real(0))
    symmetrize: Symmetrization = setting("mutual", OneOf(SYMMETRIZATIONS))
    ties: Ties = setting("similarity", OneOf(TIES))
    batch_size: int | None = setting(None, Int(1) | None)
    backend: Backend = setting("auto", OneOf(BACKENDS))
    progress: bool | ProgressCallback | None = setting(None, PROGRESS)

    _renamed_params: ClassVar[dict[str, str]] = {"k": "kd", "num_neighbors": "kd"}

    # ------------------------------------------------------------------ the graph
    def _database_graph(self, database: Tensor) -> tuple[Data, Data]:
        r"""The affinity graph :math:`\mathbf{A}` (mutual kNN, :math:`s^\gamma`) of the
        validated database and its normalisation :math:`\mathbf{S}`."""
        if isinstance(database, ScoreMatrix):
            if database.kind != "similarity":
                raise ValueError(
                    f"{type(self).__name__} weights similarities (max(s, 0)^gamma): pass "
                    "kind='similarity' scores (ScoreMatrix.as_similarity() converts Euclidean "
                    "distances of unit vectors)"
                )
        else:
            check_normalized(database, "database")
        n = database.shape[0]
        check_k(self.kd, n, name="kd")
        check_k(self.kq, n, name="kq")
        graph = knn_graph(
            database,
            self.kd,
            k_includes_self=True,
            symmetrize=self.symmetrize,
            gamma=float(self.gamma),
            backend=self.backend,
        )
        s = normalize_adjacency(graph.edge_index, graph.edge_weight, n, "sym")
        return graph, Data(edge_index=graph.edge_index, edge_weight=s, num_nodes=n)

    def _first_stage(self) -> Tensor:
        """The descriptors of the ranked items (equal scores are ordered by first-stage
        similarity to them)."""
        return self.database_

    def _secondary(self, qsum: Tensor | ScoreMatrix) -> Callable[[Tensor], Tensor]:
        """The tie-breaking key of :func:`~graphrerank.graph.top_k_with_ties` for summed query
        vectors ``qsum`` (or the queries' score rows): first-stage similarity, or minus the
        index (``ties="index"``)."""
        items = self._first_stage()
        n = items.shape[0]
        if self.ties == "index":
            return lambda rows: (
                -torch.arange(n, dtype=torch.float64, device=rows.device).expand(rows.numel(), n)
            )
        if isinstance(qsum, ScoreMatrix):
            return lambda rows: qsum.index_select(0, rows).similarities()
        return lambda rows: qsum[rows] @ items.T

    def _summed_queries(self, qv: Tensor | ScoreMatrix, qid: Tensor, nb: int) -> Tensor:
        """Each query's vectors summed (its first-stage descriptor); score rows as they are."""
        if isinstance(qv, ScoreMatrix):
            return qv
        return torch.zeros(nb, qv.shape[1], dtype=qv.dtype, device=qv.device).index_add_(0, qid, qv)

    def rerank(
        self,
        queries: RegionalQueries | None = None,
        k: int = 100,
        *,
        query_mask: TensorLike | None = None,
        asymmetric: bool = False,
        initial: RerankResult | tuple[Tensor, Tensor] | None = None,
        leave_one_out: bool | str = False,
    ) -> RerankResult:
        """Rank the database for each query.

        Args:
            queries: :math:`(Q, D)` descriptors, :math:`(Q, R, D)` or a list of :math:`(R_q, D)`
                regional descriptors (several vectors per query), or ``None`` (all-vs-all).
            k: Length of each ranked list.
            query_mask: :math:`(Q, R)` bool, the valid vectors of :math:`(Q, R, D)` queries.
            asymmetric: Queries come from another encoder (allowed: no query-query
                similarity is used).
            initial: Not accepted (this method searches the database itself).
            leave_one_out: ``False`` or ``"strict"`` (with ``queries=None``; see
                :meth:`Reranker.rerank`).

        Returns:
            ``(scores, indices)``, each :math:`(Q, k)`, best first.
        """
        if queries is None or not _is_regional(queries):
            if query_mask is not None:
                raise ValueError("query_mask is only used with (Q, R, D) regional queries")
            return super().rerank(
                queries, k, asymmetric=asymmetric, initial=initial, leave_one_out=leave_one_out
            )
        self._check_fitted()
        if initial is not None:
            raise ValueError(
                f"{type(self).__name__} ranks the whole database itself and takes no initial "
                "ranking; use it as the first stage"
            )
        qv, qid, nq = self._regional_queries(queries, query_mask)
        k = check_k(k, self.n_database_)
        return self._search(qv, qid, nq, k)

    def _regional_queries(self, queries, query_mask) -> tuple[Tensor, Tensor, int]:
        db = self.database_
        d = db.shape[1]
        if isinstance(queries, (list, tuple)):
            parts = [check_features(q, f"queries[{i}]", dim=d) for i, q in enumerate(queries)]
            for i, p in enumerate(parts):
                check_same_device(database=db, **{f"queries[{i}]": p})
            qv = torch.cat([p.to(db.dtype) for p in parts])
            counts = torch.tensor([p.shape[0] for p in parts], device=db.device)
            qid = torch.repeat_interleave(torch.arange(len(parts), device=db.device), counts)
            nq = len(parts)
            if query_mask is not None:
                raise ValueError("query_mask is only used with (Q, R, D) queries, not a list")
        else:
            t = as_tensor(queries, "queries")
            if not t.is_floating_point():
                raise TypeError(f"queries must hold floating point descriptors, got {t.dtype}")
            nq, r, dd = t.shape
            if nq == 0 or r == 0:
                raise ValueError(f"queries is empty: shape {tuple(t.shape)}")
            if dd != d:
                raise ValueError(
                    f"queries has descriptors of dimension {dd}, expected {d} (the dimension "
                    "of the fitted database)"
                )
            check_same_device(database=db, queries=t)
            if query_mask is None:
                mask = torch.ones(nq, r, dtype=torch.bool, device=t.device)
            else:
                mask = as_tensor(query_mask, "query_mask")
                if mask.dtype != torch.bool or mask.shape != (nq, r):
                    raise ValueError(
                        f"query_mask must be a bool tensor of shape ({nq}, {r}), got "
                        f"{mask.dtype} of shape {tuple(mask.shape)}"
                    )
                check_same_device(queries=t, query_mask=mask)
            empty = (~mask.any(1)).nonzero().flatten()
            if empty.numel():
                raise ValueError(
                    f"query {int(empty[0])} has no valid vector in query_mask; every query "
                    "needs at least one"
                )
            qv = check_features(t[mask], "queries").to(db.dtype)
            qid = torch.arange(nq, device=t.device)[:, None].expand(nq, r)[mask]
        check_normalized(qv, "queries")
        return qv, qid, nq

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        if queries is None:
            qv, qid, nq = self._all_queries()
        elif isinstance(queries, ScoreMatrix):
            nq = queries.shape[0]
            qv, qid = queries, torch.arange(nq, device=queries.device)
        else:
            check_normalized(queries, "queries")
            nq = queries.shape[0]
            qv, qid = queries, torch.arange(nq, device=queries.device)
        return self._search(qv, qid, nq, k)

    def _all_queries(self) -> tuple[Tensor, Tensor, int]:
        n = self.database_.shape[0]
        return self.database_, torch.arange(n, device=self.database_.device), n

    #: With ``batch_size=None``, queries are batched so that one block of per-query values
    #: holds at most this many entries (64 MiB in float32) ...
    AUTO_BATCH_ENTRIES = 2**24
    #: ... and, for products with a whole-database sparse matrix on a CPU, about this many
    #: (4 MiB in float32, at least 8 queries): each product reads the block at random rows, and
    #: a block that stays in the CPU cache makes it several times faster per query.
    CPU_CACHE_ENTRIES = 2**20

    def _batch_size(self, nodes_per_query: int, *, cache_bound: bool = False) -> int:
        if self.batch_size is not None:
            return int(self.batch_size)
        nodes = max(1, nodes_per_query)
        size = max(1, self.AUTO_BATCH_ENTRIES // nodes)
        if cache_bound and self.database_.device.type == "cpu":
            size = min(size, max(8, self.CPU_CACHE_ENTRIES // nodes))
        return size

    def _batches(
        self, qv: Tensor, qid: Tensor, nq: int, nodes_per_query: int, *, cache_bound: bool = False
    ):
        """Yield ``(qv_b, qid_b, lo, nb)``: the vectors of queries ``lo .. lo + nb - 1`` with
        their query numbers relative to ``lo``."""
        size = self._batch_size(nodes_per_query, cache_bound=cache_bound)
        starts = torch.arange(0, nq + size, size, device=qid.device)
        bounds = torch.searchsorted(qid, starts).tolist()
        for b, lo in enumerate(range(0, nq, size)):
            nb = min(size, nq - lo)
            yield qv[bounds[b] : bounds[b + 1]], qid[bounds[b] : bounds[b + 1]] - lo, lo, nb

    def _knn(self, queries: Tensor | ScoreMatrix, database: Tensor, k: int) -> KNNResult:
        """Inner-product kNN of validated queries in a fitted (already validated) matrix,
        without :func:`~graphrerank.graph.knn_search`'s per-call checks of the whole database
        (they cost more than a single query's search)."""
        if isinstance(queries, ScoreMatrix):
            return queries.topk(k)
        if queries.dtype != database.dtype:
            queries = queries.to(database.dtype)
        return knn_search(queries, database, k, backend=self.backend, check_input=False)

    @abc.abstractmethod
    def _search(self, qv: Tensor, qid: Tensor, nq: int, k: int) -> RerankResult:
        """Rank for query vectors ``qv`` :math:`(M, D)` of queries ``qid`` :math:`(M,)` (sorted,
        ``0 .. nq - 1``, each at least once)."""
