r"""Offline diffusion (Yang et al., AAAI 2019) and R-DiP (Kato, Komamizu and Ide, DEXA 2024)."""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .._checks import check_normalized
from .._io import CorruptFileError, load_arrays
from .._params import PROGRESS, AnyOf, Bool, Function, InstanceOf, Int, OneOf, Real, setting
from .._progress import ProgressCallback
from ..diffusion import offline_diffusion
from ..diffusion.distributed import sharded_offline_diffusion
from ..diffusion.offline import _query_rows
from ..diffusion.store import OfflineStore, array_fingerprint
from ..graph import (
    EdgeRescorer,
    KNNIndex,
    ScoreIndex,
    ScoreMatrix,
    database_index,
    knn_graph,
    mutual_knn_graph,
    symmetrize,
)
from ..graph.ranking import dense_ranking, rank_candidates, rank_csr, rank_dense
from ..graph.sparse import csr, csr_padded, csr_row_normalize, csr_rows, csr_transpose
from ..typing import (
    BACKENDS,
    SEARCHES,
    TIES,
    Backend,
    KNNResult,
    RerankResult,
    Search,
    TensorLike,
    Ties,
)
from ._persist import checked_database
from .base import Reranker

__all__ = ["OfflineDiffusion", "RDiP", "offline_diffusion_rerank", "rdip_rerank"]

#: The first format of offline-diffusion files, still read (:func:`load_legacy`).
LEGACY_FORMAT = "graphrerank.OfflineDiffusion"
_LEGACY_VERSION = 1

#: Candidate entries (queries x non-zero scores) handled at once when ranking.
_RANK_ENTRIES = 2**23
#: Largest (Q + N) x (Q + N) transductive matrix scored densely.
_DENSE_ENTRIES = 2**25


# ---------------------------------------------------------------------------- base class
class _OfflineBase(Reranker):
    """Shared machinery of the offline diffusion re-rankers."""

    # ------------------------------------------------------------------ hooks
    def _graph(self, x: Tensor, knn: KNNResult) -> Data:  # pragma: no cover - abstract
        raise NotImplementedError

    def _num_candidates(self) -> int:
        return self.kd

    kd: int = setting(50, Int(1))
    kq: int = setting(10, Int(1))
    truncation: int = setting(1000, Int(1))
    alpha: float = setting(0.99, Real(0, 1, low_open=True, high_open=True))
    gamma: float = setting(3.0, Real(0))
    ties: Ties = setting("similarity", OneOf(TIES))
    tol: float = setting(1e-6, Real(0))
    max_iter: int = setting(20, Int(0))
    normalize: bool = setting(False, Bool())
    search: Search = setting("auto", OneOf(SEARCHES))
    backend: Backend = setting("auto", OneOf(BACKENDS))
    block_size: int | None = setting(None, Int(1) | None)
    progress: bool | ProgressCallback | None = setting(None, PROGRESS)
    store: str | None = setting(None, AnyOf(None, InstanceOf(str, "a folder path (str)")))
    chunk_rows: int | None = setting(None, Int(1) | None)

    accepts_scores = True

    def fit(self, database: TensorLike, /, *, client: Any = None) -> _OfflineBase:
        """Fit on the database (see :meth:`Reranker.fit`).

        Args:
            database: Descriptors :math:`(N, D)` (or a similarity
                :class:`~graphrerank.graph.ScoreMatrix` without ``client`` and ``store``).
            client: A ``dask.distributed.Client``: the offline step then runs as tasks of its
                cluster, chunk by chunk
                (:func:`~graphrerank.diffusion.distributed.sharded_offline_diffusion`). It is
                an argument of this call, not a setting: a live connection to a cluster
                changes where the work runs, not the result, and cannot be saved or cloned.
        """
        self._client, self._store = client, None
        try:
            return super().fit(database)
        finally:
            self._client = None

    def _prepare(self, x: Tensor | ScoreMatrix, name: str) -> Tensor | ScoreMatrix:
        if isinstance(x, ScoreMatrix):
            if x.kind != "similarity":
                raise ValueError(
                    f"{type(self).__name__} weights similarities (max(s, 0)^gamma): pass "
                    f"kind='similarity' {name} scores (ScoreMatrix.as_similarity() converts "
                    "Euclidean distances of unit vectors)"
                )
            return x
        if self.normalize:
            return torch.nn.functional.normalize(x, dim=1)
        return check_normalized(x, name)

    # ------------------------------------------------------------------ offline
    def _offline(self, x: Tensor, index: KNNIndex) -> Tensor:
        n = x.shape[0]
        if self.kd > n:
            raise ValueError(f"kd={self.kd} is larger than the database ({n} items)")
        return offline_diffusion(
            x,
            kd=self.kd,
            truncation=self.truncation,
            alpha=self.alpha,
            gamma=self.gamma,
            tol=self.tol,
            max_iter=self.max_iter,
            graph=self._graph,
            block_size=self.block_size,
            progress=self.progress,
            index=index,
            num_candidates=self._num_candidates(),
        )

    def _setup(self, x: Tensor) -> None:
        """Prepare what the graph needs besides the descriptors (R-DiP: its re-scorer)."""

    def _fit(self, database: Tensor) -> None:
        x = self._prepare(database, "database")
        self.x_ = x
        self._setup(x)
        if isinstance(x, ScoreMatrix):
            self.index_ = ScoreIndex(x.shape[0])
        else:
            self.index_ = database_index(x, self.search, self.backend)
        if getattr(self, "_client", None) is None and self.store is None:
            self.C_ = self._offline(x, self.index_)
            return
        if isinstance(x, ScoreMatrix):
            raise TypeError(
                f"{type(self).__name__} with a client or a store needs database descriptors, "
                "not a ScoreMatrix"
            )
        if getattr(self, "transductive", False):
            raise ValueError(
                "transductive=True repeats the offline step at every call, so it cannot use a "
                "client or a store; use transductive=False (the paper's method)"
            )
        if self.kd > x.shape[0]:
            raise ValueError(f"kd={self.kd} is larger than the database ({x.shape[0]} items)")
        params = {
            k: v if v is None or isinstance(v, (bool, int, float, str)) else type(v).__name__
            for k, v in self.get_params().items()
            if k not in ("progress", "block_size", "store", "chunk_rows")
        }

        def run(folder: str) -> OfflineStore:
            return sharded_offline_diffusion(
                x,
                folder,
                client=self._client,
                kd=self.kd,
                truncation=self.truncation,
                alpha=self.alpha,
                gamma=self.gamma,
                tol=self.tol,
                max_iter=self.max_iter,
                graph=self._graph,
                search=self.search,
                backend=self.backend,
                index=self.index_,
                num_candidates=self._num_candidates(),
                block_size=self.block_size,
                chunk_rows=self.chunk_rows,
                progress=self.progress,
                settings={"estimator": type(self).__name__, **params},
            )

        if self.store is None:  # a client but no store: C comes back into memory
            import tempfile

            with tempfile.TemporaryDirectory(prefix="graphrerank-store-") as folder:
                self.C_ = run(folder).to_csr(x.device)
        else:
            self._store = run(self.store)

    def _matrix(self) -> Tensor | OfflineStore:
        """The offline matrix: in memory (``C_``), or the store, opened on first use."""
        if self.store is None:
            return self.C_
        st = getattr(self, "_store", None)
        if st is None:
            st = OfflineStore.open(self.store)
            if st.n != self.n_database_ or st.settings.get("data") != array_fingerprint(self.x_):
                raise ValueError(
                    f"the offline store at {self.store!r} was computed on other data than "
                    "this fitted database: fit again with this store path, or pass the store "
                    "of this database"
                )
            self._store = st
        return st

    # ------------------------------------------------------------------ online
    def _query_knn(self, q: Tensor, all_vs_all: bool) -> KNNResult:
        return self.index_.search(q, min(self.kq, self.n_database_))

    def _batch(self, width: int) -> int:
        return max(1, _RANK_ENTRIES // max(1, width))

    def _inductive(self, queries: Tensor | None, k: int) -> RerankResult:
        q = self.x_ if queries is None else self._prepare(queries, "queries")
        out_s, out_i = [], []
        bs = self._batch(min(self.kq, self.n_database_) * min(self.truncation, self.n_database_))
        shared = self._shares_similarities(q, bs)
        x, nq = self.x_, q.shape[0]
        res = None
        if shared and _ranks_densely(self._matrix(), x.dtype, k, self.n_database_):
            # the batches' lists are written straight into the result
            res = RerankResult(
                torch.empty(nq, k, dtype=torch.float32, device=x.device),
                torch.empty(nq, k, dtype=torch.long, device=x.device),
            )
        buf = None
        for s in range(0, nq, bs):
            qb = q[s : s + bs]
            sims = None
            if shared:  # one product serves the kNN search and the zero-score ties
                if buf is None:  # one block for every batch (no fresh pages per batch)
                    buf = torch.empty(qb.shape[0], x.shape[0], dtype=x.dtype, device=x.device)
                sims = torch.mm(qb.to(x.dtype), x.T, out=buf[: qb.shape[0]])
                top = sims.topk(min(self.kq, self.n_database_), dim=1)
                knn = KNNResult(top.values, top.indices)
            else:
                knn = self._query_knn(qb, queries is None)
            if res is not None:
                out = RerankResult(res.scores[s : s + bs], res.indices[s : s + bs])
                r = self._online(knn, k, qb, sims, out=out)  # (overwrites sims)
                if r is not out:  # (ranked another way after all)
                    out.scores.copy_(r.scores)
                    out.indices.copy_(r.indices)
                continue
            r = self._online(knn, k, qb, sims)
            out_s.append(r.scores)
            out_i.append(r.indices)
        if res is not None:
            return res
        if len(out_s) == 1:
            return RerankResult(out_s[0], out_i[0])
        return RerankResult(torch.cat(out_s), torch.cat(out_i))

    def _shares_similarities(self, q: Tensor | ScoreMatrix, batch: int) -> bool:
        """Whether the online step computes the dense query x database similarities of each
        batch once, for its kNN search (an exact inner-product index: the same neighbours,
        up to float ties) and for ordering the zero-scored items (``ties="similarity"``),
        instead of an index search plus a second, deeper one: descriptors (no score
        matrix), the base kNN search, and batches of at most ``2 * _SHORT_ENTRIES`` scores."""
        return (
            type(self)._query_knn is _OfflineBase._query_knn
            and self.ties == "similarity"
            and isinstance(q, Tensor)
            and isinstance(self.x_, Tensor)
            and q.device == self.x_.device
            and isinstance(self.index_, KNNIndex)
            and self.index_.kind == "flat"
            and self.index_.metric == "ip"
            and min(batch, q.shape[0]) * self.n_database_ <= 2 * _SHORT_ENTRIES
        )

    def _online(
        self,
        knn: KNNResult,
        k: int,
        q: Tensor,
        sims: Tensor | None = None,
        out: RerankResult | None = None,
    ) -> RerankResult:
        """The ``k``-lists of a batch: ``F`` from the kNN result, ranked by
        :func:`_rank_lexicographic` where the batch's dense similarities ``sims`` are given
        (and float32; ``out``: where to write its lists), else by :func:`_rank_rows`."""
        C = self._matrix()
        dense = sims is not None and _ranks_densely(C, sims.dtype, k, sims.shape[1])
        if isinstance(C, OfflineStore):
            F = C.scores(knn, self.gamma)
            F = F.to_dense() if dense else F
        else:
            F = _query_rows(C, knn.scores, knn.indices, self.gamma, dense=dense)
        if dense:
            return _rank_lexicographic(F, sims, k, out)
        return _rank_rows(F, k, q, self.x_, self.index_, self.ties, sims)

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        return self._inductive(queries, k)


# ---------------------------------------------------------------------------- offline diffusion
class OfflineDiffusion(_OfflineBase):
    r"""Offline diffusion from the `"Efficient Image Retrieval via Decoupling Diffusion into
    Online and Offline Processing" <https://arxiv.org/abs/1811.10907>`_ paper (Yang et al.,
    AAAI 2019), with late truncation.

    Offline, on the L2-normalised database: the mutual kNN graph (``kd`` neighbours counting
    the item itself, the item then removed wherever it appears), weights
    :math:`a_{ij} = \max(\mathbf{x}_i^\top\mathbf{x}_j, 0)^\gamma`, and for every item
    :math:`i` the system restricted to its ``truncation`` nearest items :math:`T_i`:

    .. math::
        \mathbf{L}_\alpha = \mathbf{I} - \alpha\mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2},
        \qquad \mathbf{L}_\alpha[T_i, T_i]\,\mathbf{c}_i = \mathbf{e}_i,
        \qquad \mathbf{C}_{i, T_i} = \mathbf{c}_i^\top,

    solved by conjugate gradients (:math:`\mathbf{c} = 0` start, ``tol``, ``max_iter``) many
    systems at once (:func:`~graphrerank.diffusion.late_truncation`); :math:`\mathbf{C}` is
    kept sparse. Online (the paper's method, the reference code's ``search_old``), a query
    with its ``kq`` nearest database items :math:`j` and similarities :math:`s_j` scores

    .. math::
        \mathbf{f} = \sum_{j} \max(s_j, 0)^\gamma\, \mathbf{C}_{j,:},

    a sparse combination of ``kq`` rows of :math:`\mathbf{C}`: a new query costs a kNN search
    and that combination, no graph change. Items with equal scores, in particular the items
    outside every truncation list involved (score 0), are ordered by first-stage similarity.

    With ``transductive=True`` (the reference code's default ``search``) the queries are
    inserted into the graph: the offline step runs over queries and database together (over
    the :math:`N` items only for ``rerank(None)``), rows of :math:`\mathbf{C}` are
    L2-normalised and a query scores database item :math:`j` by
    :math:`\hat{\mathbf{c}}_q^\top \hat{\mathbf{c}}_j`. Every call then repeats the offline
    step, and each query's result depends on the other queries.

    Args:
        kd: :math:`k_d`, graph neighbours per item, the item itself included (reference 50).
        kq: :math:`k_q`, database neighbours of a query in the online step (reference 10).
        truncation: :math:`|T_i|`, items per truncated system (reference 1000; capped at
            :math:`N`).
        alpha: :math:`\alpha \in (0, 1)` (reference 0.99).
        gamma: :math:`\gamma`, similarity exponent of graph and query weights (reference 3).
            The reference code raises the query similarities to :math:`\gamma` without
            clamping; here negative similarities give weight 0, as in the graph.
        tol: CG relative residual tolerance (reference 1e-6).
        max_iter: CG iteration cap (reference 20, at which :math:`\alpha = 0.99` systems have
            not converged: the cap defines the reference results).
        transductive: Insert the queries into the graph (see above).
        ties: Order of items with equal scores: ``"similarity"`` (first-stage similarity,
            best first; the items outside every truncation list involved all score 0 and
            keep the order of the plain kNN ranking) or ``"index"`` (lowest database index
            first, the order a stable sort of the dense score matrix gives, as the reference
            code ranks its transductive scores).
        normalize: L2-normalise database and queries; otherwise they must be normalised.
        search: kNN search for graph, truncation lists and queries: ``"exact"``, ``"ivf"``
            (faiss IVF, approximate) or ``"auto"`` (IVF from 100,000 items on a CPU with faiss,
            as the reference does for its truncation lists).
        backend: Backend of the exact kNN search (``"auto"``, ``"faiss"``, ``"torch"``).
        block_size: Items solved per batched CG call (default: about two million gathered
            matrix entries per call).
        progress: Progress of the offline step: ``None`` (a bar on a terminal only),
            ``True`` / ``False``, or a callback ``callback(done, total)``.
        store: A folder for :math:`\mathbf{C}`: the offline step then runs chunk by chunk
            into this on-disk store (resumed if a run was killed;
            :mod:`graphrerank.diffusion.store`) and :meth:`rerank` reads it memory-mapped, so
            ``C_`` is not held in memory. ``fit(x, client=...)`` runs the chunks on a Dask
            cluster (see :doc:`/scaling`).
        chunk_rows: Items per shard and per task of the chunked offline step (with ``store``
            or a client; default 16384).

    Shapes:
        - **fit:** database :math:`(N, D)`, L2-normalised
        - **rerank:** queries :math:`(Q, D)` or ``None`` :math:`\to` scores, indices
          :math:`(Q, k)`
        - **C_:** :math:`(N, N)` ``torch.sparse_csr``, at most :math:`N \cdot |T|` entries

    Raises:
        ValueError: a setting is out of range, descriptors are not L2-normalised (and
            ``normalize=False``), or ``kd`` exceeds the database.

    Example:
        >>> x = torch.nn.functional.normalize(torch.tensor(
        ...     [[1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [0.1, 1.0], [0.2, 1.0], [0.3, 1.0]]), dim=1)
        >>> r = OfflineDiffusion(kd=3, kq=2, truncation=4).fit(x)
        >>> out = r.rerank(x[:1], k=6)
        >>> out.indices  # 1, the centre of the query's cluster, first; the other cluster
        ...              # scores 0 and keeps its first-stage order
        tensor([[1, 0, 2, 5, 4, 3]])
        >>> out.scores[0, 3:]
        tensor([0., 0., 0.])
        >>> r.C_.shape
        torch.Size([6, 6])
    """

    # the setting is also the instance's declaration (it shadows the class attribute)
    transductive: bool = setting(False, Bool())

    @property
    def strict_leave_one_out(self) -> str:  # type: ignore[override]
        """``"own_entry"`` with ``transductive=True`` (query :math:`i` and the other
        :math:`N - 1` items form the all-vs-all graph: exact), else ``"refit"`` (removing an
        item changes the graph normalisation and every truncated system around it)."""
        return "own_entry" if self.transductive else "refit"

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"kd": 8, "kq": 4, "truncation": 20}

    def _graph(self, x: Tensor, knn: KNNResult) -> Data:
        return mutual_knn_graph(x, self.kd, gamma=self.gamma, candidates=knn)

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        if not self.transductive:
            return self._inductive(queries, k)
        if isinstance(self.x_, ScoreMatrix):
            raise ValueError(
                "transductive=True inserts the queries into the graph, which needs the "
                "descriptors; with a ScoreMatrix use transductive=False (the paper's method)"
            )
        n = self.n_database_
        if queries is None:
            q, C = self.x_, self.C_
        else:
            q = self._prepare(queries, "queries")
            both = torch.cat([q, self.x_])
            C = self._offline(both, database_index(both, self.search, self.backend))
        F = csr_row_normalize(C)
        nq = q.shape[0]
        total = F.shape[0]
        out_s, out_i = [], []
        if total * total <= _DENSE_ENTRIES:
            # small problems: cosines by one dense product (BLAS beats sparse-sparse here)
            Fd = F.to_dense()
            Fq, Fdb = Fd[:nq], (Fd if queries is None else Fd[nq:])
            bs = max(1, _RANK_ENTRIES // (2 * n))
            cols = torch.arange(n, device=Fd.device)
            for s in range(0, nq, bs):
                e = min(nq, s + bs)
                scores = Fq[s:e] @ Fdb.T
                if dense_ranking(k, n):
                    r = rank_dense(scores, k, q[s:e], self.x_, self.ties)
                else:
                    idx = cols.expand(e - s, n)
                    r = rank_candidates(idx, scores, k, q[s:e], self.x_, self.index_, self.ties)
                out_s.append(r.scores)
                out_i.append(r.indices)
            return RerankResult(torch.cat(out_s), torch.cat(out_i))
        Fq = csr_rows(F, 0, nq)
        FdbT = csr_transpose(F if queries is None else csr_rows(F, nq, nq + n))
        bs = max(1, _RANK_ENTRIES // (2 * n))
        for s in range(0, nq, bs):
            e = min(nq, s + bs)
            scores = csr_rows(Fq, s, e) @ FdbT  # (b, N) cosines between rows of C
            r = rank_csr(scores, k, q[s:e], self.x_, self.index_, self.ties)
            out_s.append(r.scores)
            out_i.append(r.indices)
        return RerankResult(torch.cat(out_s), torch.cat(out_i))


# ---------------------------------------------------------------------------- R-DiP
#: ``RDiP(rescorer="superglobal")``: the R-DiP paper's configuration (SuperGlobal re-scoring
#: with its reference settings).
PAPER_RESCORER = "superglobal"


def _resolved(rescorer: Any) -> Any:
    """A re-scorer setting with ``"superglobal"`` made the re-ranker it names."""
    if _is_paper(rescorer):
        from .superglobal import SuperGlobal

        return SuperGlobal()
    return rescorer


def _is_paper(rescorer: Any) -> bool:
    return isinstance(rescorer, str) and rescorer == PAPER_RESCORER


def _is_combination(rescorer: Any) -> bool:
    return isinstance(rescorer, (list, tuple)) and not isinstance(rescorer, str)


class _Rescorers(AnyOf):
    """RDiP's ``rescorer``: one re-scorer, or a non-empty list of ``(re-scorer, weight)``
    pairs with weights >= 0 summing to more than 0."""

    def __init__(self, single: AnyOf) -> None:
        super().__init__(single, what=single.what)
        self.single = single

    def check(self, value: Any, name: str, params: Any) -> None:
        if not _is_combination(value):
            self.single.check(value, name, params)
            return
        if len(value) == 0:
            raise ValueError(f"{name} must hold at least one (rescorer, weight) pair, got []")
        total = 0.0
        for j, pair in enumerate(value):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise TypeError(
                    f"{name}[{j}] must be a (rescorer, weight) pair, got {type(pair).__name__}"
                )
            r, w = pair
            if r is None:
                raise TypeError(f"{name}[{j}] has no rescorer (None); leave the pair out")
            self.single.check(r, f"{name}[{j}][0]", params)
            Real(0).check(w, f"{name}[{j}][1]", params)
            total += float(w)
        if total <= 0:
            raise ValueError(f"the weights of {name} must not all be 0, got {value!r}")

    def describe(self) -> str:
        return f"{self.single.describe()}, or a list of (rescorer, weight) pairs"


def _combined(parts: list[tuple[Any, float]], n: int):
    r"""The edge re-scoring hook of several re-scorers: :math:`\sum_m w_m \hat s_m /
    \sum_m w_m`, each re-scorer's scores made similarities :math:`\hat s_m` (minus a distance in
    :math:`[0, 1]`, as k-reciprocal's :math:`-d^*`, becomes :math:`1 - d^*`)."""
    fns, weights = [], []
    for r, w in parts:
        if isinstance(r, Reranker):
            fn, kind = r.as_rescorer(), r.candidate_scores
        elif isinstance(r, ScoreMatrix):
            fn, kind = _matrix_rescorer(r, n), "similarity"
        else:
            fn, kind = r, "similarity"
        fns.append((fn, kind == "negative_distance"))
        weights.append(float(w))
    total = sum(weights)

    def rescore(rows: Tensor, candidates: Tensor, base: Tensor) -> Tensor:
        out = None
        for (fn, is_distance), w in zip(fns, weights, strict=True):
            if w == 0:
                continue
            s = fn(rows, candidates, base).to(base.dtype)
            s = s.masked_fill(candidates < 0, 0.0)
            s = 1 + s if is_distance else s
            out = w * s if out is None else out + w * s
        return (out / total).masked_fill(candidates < 0, float("-inf"))

    return rescore


class RDiP(_OfflineBase):
    r"""R-DiP, re-ranking-based diffusion (Kato, Komamizu and Ide, DEXA 2024): offline diffusion
    over a database graph rebuilt with a re-ranker's similarities.

    Offline: the ``km`` nearest items of every database item by the base similarity are
    re-scored by ``rescorer`` (an edge re-scoring hook,
    :data:`~graphrerank.graph.EdgeRescorer`), the best ``kd <= km`` by the new score
    :math:`s'_{ij}` (the item itself counted, then removed) become edges, and offline diffusion
    runs unchanged on that graph (:class:`OfflineDiffusion`, late truncation by the base
    similarity). Online: identical to offline diffusion, a query costs a kNN search and a
    sparse combination of ``kq`` rows of :math:`\mathbf{C}`:

    .. math::
        a_{ij} = w(s'_{ij}) \text{ on the re-scored } k_d\text{-NN graph}, \qquad
        \mathbf{f} = \sum_{j \in \mathrm{kNN}(q)} \max(s_{qj}, 0)^\gamma\, \mathbf{C}_{j,:}.

    The paper leaves these choices open; they are settings here, with these defaults:

    * ``symmetrize="min"``: keep an edge only if both items selected each other (the mutual
      filter of offline diffusion) with weight :math:`\min(a_{ij}, a_{ji})`. A re-scorer need
      not be symmetric (SuperGlobal's refined similarity is not); the minimum keeps
      :math:`\mathbf{A}` symmetric, which conjugate gradients need, and equals the reference
      mutual graph whenever the scores are symmetric. ``"mutual"`` (each side's own weight,
      for symmetric re-scorers only: an asymmetric result raises), ``"max"`` and ``"union"``
      (no mutual filter: :math:`\max` or :math:`a_{ij} + a_{ji}`) are the alternatives.
    * ``edge_weights="auto"`` (default): ``"rescored_distance"`` for a re-ranker whose
      ``candidate_scores`` is ``"negative_distance"`` (:class:`KReciprocal`), else
      ``"rescored"``. ``"rescored"``: :math:`w(s') = \max(s', 0)^\gamma` (:math:`\gamma` applied
      after re-scoring, as offline diffusion weights its similarities);
      ``"rescored_raw"``: :math:`\max(s', 0)`; ``"rescored_distance"``:
      :math:`\max(1 + s', 0)^\gamma`, for re-scorers that return minus a distance in
      :math:`[0, 1]` (k-reciprocal's :math:`-d^*`), whose similarity is :math:`1 - d^*`;
      ``"base"``: the re-scorer only selects the edges, weights are
      :math:`\max(s, 0)^\gamma` of the base similarity.
    * ``query_scores="base"``: the query side :math:`\mathbf{y}` uses base similarities, so
      the online step is exactly offline diffusion's (the paper's stated cost). ``"rescored"``
      re-scores the query's neighbours too (weights as for the edges, :math:`\gamma` power of
      the re-scored similarity; all-vs-all always, new queries only when ``rescorer`` is a
      re-ranker, through its ``rerank``).
    * ``truncation=1000``: as offline diffusion; truncation lists use the base similarity.

    :math:`k_m` and :math:`k_d` have no published defaults; ``kd=50`` matches offline
    diffusion's ``kd`` and ``km=100`` leaves the re-scorer twice as many candidates.

    **The paper's configuration is the default**: ``RDiP()`` re-scores with SuperGlobal
    (``rescorer="superglobal"``, :class:`SuperGlobal` with its reference settings
    :math:`M = 400, K = 9, \beta = 0.15`; its shortlist is each item's :math:`k_m` candidates).
    ``rescorer=None`` is plain offline diffusion, as ``RDiP()`` was in earlier releases.
    **Several re-scorers** (the paper's future work): a list of ``(rescorer, weight)`` pairs,
    e.g. ``[(SuperGlobal(), 1.0), (KReciprocal(), 0.5)]``, re-scores each candidate pair by
    the weighted mean :math:`\sum_m w_m \hat s_m / \sum_m w_m` of their scores, each made a
    similarity first (:math:`\hat s = 1 + s'` for a ``"negative_distance"`` re-scorer such as
    k-reciprocal's :math:`-d^*`, else :math:`s'`), weighted as ``"rescored"`` similarities.

    **Strict leave-one-out** (``rerank(None, k, leave_one_out="strict")``) refits: removing an
    item changes the graph normalisation and the truncated systems of its neighbours (and the
    re-scorer's own lists), so the N-fit loop is the exact computation.

    Args:
        rescorer: ``"superglobal"`` (default: the paper's SuperGlobal re-scoring), ``None``
            (the base similarity itself: R-DiP is then exactly offline diffusion), a list of
            ``(rescorer, weight)`` pairs (weights >= 0, not all 0; see above), a
            :class:`~graphrerank.rerankers.Reranker` implementing
            ``score_candidates`` (fitted on the database by :meth:`fit`, as a fresh copy
            with the same settings), a database x database
            :class:`~graphrerank.graph.ScoreMatrix` of similarities (precomputed re-scores:
            a chamfer or a cross-encoder matrix, dense or sparse, read for each candidate
            pair), or a callable ``(rows, candidates, scores) -> scores`` over the database
            being fitted.
        km: :math:`k_m`, candidates re-scored per item (``k_m`` in earlier releases).
        kd: :math:`k_d \le k_m`, graph neighbours kept per item, the item itself included
            (``k_d`` in earlier releases; spelled as :class:`OfflineDiffusion`'s ``kd``).
        kq: :math:`k_q`, database neighbours of a query (reference 10).
        truncation: :math:`|T_i|` (reference 1000; capped at :math:`N`).
        alpha: :math:`\alpha` (reference 0.99).
        gamma: :math:`\gamma` (reference 3).
        symmetrize: ``"min"``, ``"mutual"``, ``"max"`` or ``"union"`` (see above).
        edge_weights: ``"auto"``, ``"rescored"``, ``"rescored_raw"``,
            ``"rescored_distance"`` or ``"base"`` (see above).
        query_scores: ``"base"`` or ``"rescored"`` (see above).
        ties: Order of items with equal scores, ``"similarity"`` or ``"index"``, as in
            :class:`OfflineDiffusion`.
        tol: CG tolerance (reference 1e-6).
        max_iter: CG iteration cap (reference 20).
        normalize: L2-normalise database and queries.
        search: ``"auto"``, ``"exact"`` or ``"ivf"`` as in :class:`OfflineDiffusion`.
        backend: Backend of the exact kNN search.
        block_size: Items per batched CG call.
        progress: Progress of the offline step (``None``, ``True``/``False`` or a callback).
        store: A folder for the on-disk :math:`\mathbf{C}`, as in :class:`OfflineDiffusion`.
        chunk_rows: Items per shard and per task, as in :class:`OfflineDiffusion`.
        rescore_batch_size: Items re-scored per ``rescorer`` call.

    Shapes:
        - **fit:** database :math:`(N, D)`, L2-normalised
        - **rerank:** queries :math:`(Q, D)` or ``None`` :math:`\to` scores, indices
          :math:`(Q, k)`

    Raises:
        ValueError: a setting is out of range (e.g. ``kd > km``), the re-scored graph is
            not symmetric with ``symmetrize="mutual"``, or no re-scored edge has a positive
            weight (e.g. distance-like scores weighted as similarities).

    Example:
        >>> x = torch.nn.functional.normalize(torch.tensor(
        ...     [[1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [0.1, 1.0], [0.2, 1.0], [0.3, 1.0]]), dim=1)
        >>> plain = OfflineDiffusion(kd=3, kq=2, truncation=4).fit(x).rerank(k=6)
        >>> rdip = RDiP(rescorer=None, km=4, kd=3, kq=2, truncation=4).fit(x).rerank(k=6)
        >>> torch.equal(plain.indices, rdip.indices)  # no rescorer: plain offline diffusion
        True
        >>> RDiP().rescorer  # the paper's configuration
        'superglobal'
        >>> from graphrerank.rerankers import KNN, SuperGlobal
        >>> both = RDiP(rescorer=[(SuperGlobal(), 1.0), (KNN(), 0.5)], km=4, kd=3, kq=2,
        ...             truncation=4).fit(x)
        >>> both.rerank(k=6).indices.shape
        torch.Size([6, 6])
    """

    rescorer: Reranker | EdgeRescorer | ScoreMatrix | str | list | None = setting(
        "superglobal",
        _Rescorers(
            AnyOf(
                None,
                OneOf(("superglobal",)),
                InstanceOf(Reranker, "a Reranker"),
                InstanceOf(ScoreMatrix, "a ScoreMatrix"),
                Function("a callable"),
                what="'superglobal', None, a Reranker, a ScoreMatrix or a callable (rows, "
                "candidates, scores) -> scores",
            )
        ),
    )
    km: int = setting(100, Int(low="kd"))
    symmetrize: Literal["min", "mutual", "max", "union"] = setting(
        "min", OneOf(("min", "mutual", "max", "union"))
    )
    edge_weights: Literal["auto", "rescored", "rescored_raw", "rescored_distance", "base"] = (
        setting("auto", OneOf(("auto", "rescored", "rescored_raw", "rescored_distance", "base")))
    )
    query_scores: Literal["base", "rescored"] = setting("base", OneOf(("base", "rescored")))
    rescore_batch_size: int = setting(1024, Int(1))

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"km": 12, "kd": 8, "kq": 4, "truncation": 20}

    _renamed_params: ClassVar[dict[str, str]] = {"k_m": "km", "k_d": "kd"}

    _derived_state: ClassVar[tuple[str, ...]] = ("rescore_",)

    def _num_candidates(self) -> int:
        return self.km

    def _after_load(self) -> None:
        if _is_combination(self.rescorer):
            fitted = list(getattr(self, "rescorers_", []))
            parts = [
                (f if f is not None else _resolved(r), w)
                for f, (r, w) in zip(fitted, self.rescorer, strict=True)
            ]
            self.rescore_ = _combined(parts, self.n_database_)
            return
        r = getattr(self, "rescorer_", None)
        if r is None and _is_paper(self.rescorer):
            # the file's re-scorer was not stored (a callable): it took the default's place,
            # but the fitted state is another re-scorer's; the online step needs none
            self.rescorer = None
        if r is not None:
            self.rescore_ = r.as_rescorer()
        elif isinstance(self.rescorer, ScoreMatrix):
            self.rescore_ = _matrix_rescorer(self.rescorer, self.n_database_)
        else:
            self.rescore_ = self.rescorer

    def _setup(self, x: Tensor) -> None:
        if _is_combination(self.rescorer):
            fitted = []
            for r, _ in self.rescorer:
                r = _resolved(r)
                fitted.append(r.clone().fit(x) if isinstance(r, Reranker) else None)
            self.rescorers_ = fitted
            parts = [
                (f if f is not None else _resolved(r), w)
                for f, (r, w) in zip(fitted, self.rescorer, strict=True)
            ]
            self.rescore_ = _combined(parts, x.shape[0])
            return
        if isinstance(x, ScoreMatrix) and _is_paper(self.rescorer):
            raise TypeError(
                "RDiP's default re-scorer, SuperGlobal, refines descriptors and cannot be fitted "
                "on a ScoreMatrix: pass rescorer=None (plain offline diffusion) or the "
                "re-scored similarities as rescorer=ScoreMatrix(...)"
            )
        rescorer = _resolved(self.rescorer)
        if isinstance(rescorer, Reranker):
            self.rescorer_ = rescorer.clone().fit(x)
            self.rescore_ = self.rescorer_.as_rescorer()
        elif isinstance(rescorer, ScoreMatrix):
            self.rescore_ = _matrix_rescorer(rescorer, x.shape[0])
        else:
            self.rescore_ = rescorer

    def _graph(self, x: Tensor, knn: KNNResult) -> Data:
        n = x.shape[0]
        km = min(self.km, n)
        cand = KNNResult(knn.scores[:, :km], knn.indices[:, :km])
        weights = self._edge_weights()
        weight_gamma = self.gamma if weights in ("rescored", "base") else None
        g = knn_graph(
            x,
            self.kd,
            k_includes_self=True,
            gamma=weight_gamma,
            candidates=cand,
            rescore=self.rescore_,
            rescore_batch_size=self.rescore_batch_size,
        )
        w = g.edge_weight
        if weights == "rescored_raw":
            w = w.clamp(min=0)
        elif weights == "rescored_distance":
            w = (1 + w).clamp(min=0).pow(self.gamma)
        elif weights == "base":
            src, dst = g.edge_index
            if isinstance(x, ScoreMatrix):
                s = x.pairs(dst, src)
            else:
                s = (x.index_select(0, src) * x.index_select(0, dst)).sum(1)
            w = s.clamp(min=0).pow(self.gamma)
        if self.rescore_ is not None and n > 1 and w.numel() and not bool((w > 0).any()):
            raise ValueError(
                f"no re-scored edge has a positive weight with edge_weights={weights!r} and "
                f"gamma={self.gamma!r}: the rescorer's scores are not similarities in [-1, 1] "
                "(for minus a distance in [0, 1] use edge_weights='rescored_distance'; to keep "
                "the base similarities as weights use 'base'), or gamma is so large that every "
                "max(s, 0) ** gamma underflows to 0"
            )
        g.edge_weight = w
        return self._symmetrized(g, n)

    def _edge_weights(self) -> str:
        """``edge_weights`` with ``"auto"`` resolved from the re-scorer."""
        if self.edge_weights != "auto":
            return self.edge_weights
        if _is_combination(self.rescorer):
            return "rescored"  # the combination is a weighted mean of similarities
        kind = getattr(_resolved(self.rescorer), "candidate_scores", "similarity")
        return "rescored_distance" if kind == "negative_distance" else "rescored"

    def _symmetrized(self, g: Data, n: int) -> Data:
        ei, w = symmetrize(g.edge_index, g.edge_weight, n, self.symmetrize)
        if self.symmetrize == "mutual":
            keys = ei[1] * n + ei[0]
            rev = ei[0] * n + ei[1]
            order = keys.argsort()
            pos = torch.searchsorted(keys[order], rev)
            if ei.shape[1] and not torch.allclose(w[order][pos], w, rtol=1e-5, atol=0):
                raise ValueError(
                    "the re-scored graph is not symmetric (the rescorer's scores are "
                    "asymmetric), which conjugate gradients cannot solve; use "
                    "symmetrize='min' (default), 'max' or 'union'"
                )
        return Data(edge_index=ei, edge_weight=w, num_nodes=n)

    def _query_knn(self, q: Tensor, all_vs_all: bool) -> KNNResult:
        kq = min(self.kq, self.n_database_)
        if self.query_scores == "base" or self.rescore_ is None:
            return self.index_.search(q, kq)
        if all_vs_all:
            raise AssertionError("handled in _rerank")
        if not isinstance(getattr(self, "rescorer_", None), Reranker):
            raise ValueError(
                "query_scores='rescored' scores new queries with the rescorer's rerank(), so "
                "rescorer must be a Reranker (a callable only re-scores database pairs)"
            )
        scores, idx = self.rescorer_.rerank(q, kq)
        return KNNResult(self._similarity(scores), idx)

    def _similarity(self, rescored: Tensor) -> Tensor:
        """Re-scored query-side scores as the similarities the query weights are made of."""
        return 1 + rescored if self._edge_weights() == "rescored_distance" else rescored

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        if queries is not None or self.query_scores == "base" or self.rescore_ is None:
            return self._inductive(queries, k)
        # all-vs-all with re-scored query sides: re-score each item's km candidates
        n = self.n_database_
        km, kq = min(self.km, n), min(self.kq, n)
        out_s, out_i = [], []
        bs = self._batch(kq * min(self.truncation, n))
        for s in range(0, n, bs):
            e = min(n, s + bs)
            q = self.x_[s:e]
            cs, ci = self.index_.search(q, km)
            rows = torch.arange(s, e, device=q.device)
            new = self.rescore_(rows, ci, cs).to(cs.dtype).masked_fill(ci < 0, float("-inf"))
            top = new.topk(kq, dim=1)
            knn = KNNResult(self._similarity(top.values), ci.gather(1, top.indices))
            r = self._online(knn, k, q)
            out_s.append(r.scores)
            out_i.append(r.indices)
        return RerankResult(torch.cat(out_s), torch.cat(out_i))


def offline_diffusion_rerank(
    queries: TensorLike | None, database: TensorLike, k: int = 100, **settings: Any
) -> RerankResult:
    """``OfflineDiffusion(**settings).fit(database).rerank(queries, k)``.

    See :class:`OfflineDiffusion` for the method and its settings.

    Example:
        >>> x = torch.nn.functional.normalize(torch.tensor(
        ...     [[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [0.2, 1.0]]), dim=1)
        >>> offline_diffusion_rerank(x[:1], x, k=4, kd=2, kq=1, truncation=2).indices
        tensor([[0, 1, 3, 2]])
    """
    return OfflineDiffusion(**settings).fit(database).rerank(queries, k)


def rdip_rerank(
    queries: TensorLike | None, database: TensorLike, k: int = 100, **settings: Any
) -> RerankResult:
    """``RDiP(**settings).fit(database).rerank(queries, k)``: offline diffusion over a graph
    rebuilt with a re-scorer's similarities (Kato, Komamizu and Ide, DEXA 2024).

    See :class:`RDiP` for the method and its settings.

    Example:
        >>> x = torch.nn.functional.normalize(torch.tensor(
        ...     [[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [0.2, 1.0]]), dim=1)
        >>> rdip_rerank(x[:1], x, k=4, km=3, kd=2, kq=1, truncation=2).indices
        tensor([[0, 1, 3, 2]])
    """
    return RDiP(**settings).fit(database).rerank(queries, k)


def load_legacy(
    cls: type, path: str | os.PathLike, database: Any, settings: dict[str, Any]
) -> _OfflineBase:
    """Read a file of the first offline-diffusion format (``C`` and the settings only; the
    kNN index is rebuilt from ``database``)."""
    if database is None:
        raise ValueError(
            f"{str(path)!r} holds an offline matrix without its database: pass the database "
            "to load(path, database)"
        )
    arrays, meta = load_arrays(path, format=LEGACY_FORMAT, version=_LEGACY_VERSION)
    if cls.__name__ not in ("Reranker", meta.get("class")):
        raise CorruptFileError(
            f"{str(path)!r} holds a {meta.get('class')!r} result, not a {cls.__name__!r}"
        )
    try:
        params = dict(meta["params"])
        fp = meta["database"]
    except (KeyError, TypeError) as err:
        raise CorruptFileError(f"{str(path)!r} has invalid metadata: {err}") from None
    params.update(settings)
    target = OfflineDiffusion if meta.get("class") == "OfflineDiffusion" else RDiP
    try:
        r = target(**params)
    except TypeError as err:
        raise CorruptFileError(f"{str(path)!r} has invalid settings: {err}") from None
    r.validate_params()
    db = checked_database(database, fp, repr(str(path)))
    n = db.shape[0]
    crow, col, values = arrays.get("crow"), arrays.get("col"), arrays.get("values")
    if (
        crow is None
        or col is None
        or values is None
        or crow.shape != (n + 1,)
        or col.shape != values.shape
        or col.ndim != 1
        or int(crow[-1]) != col.shape[0]
        or (col.size and (int(col.min()) < 0 or int(col.max()) >= n))
        or bool((np.diff(crow) < 0).any())
    ):
        raise CorruptFileError(f"{str(path)!r}: the stored matrix does not match the database")
    device = db.device
    r.database_ = db
    x = r._prepare(db, "database")
    r.x_ = x
    r._setup(x)
    r.index_ = database_index(x, r.search, r.backend)
    r.C_ = csr(
        torch.from_numpy(crow).to(device),
        torch.from_numpy(col).to(device),
        torch.from_numpy(values).to(device=device, dtype=x.dtype),
        (n, n),
    )
    return r


#: Entries of one (rows x N) block of packed keys in :func:`_rank_lexicographic` (a block
#: that stays in a core's cache while its keys are built and selected).
_KEY_ENTRIES = 2**17


def _ranks_densely(C, sims_dtype: torch.dtype, k: int, n: int) -> bool:
    """Whether the online step ranks a batch whose dense first-stage similarities it has
    (:meth:`_OfflineBase._shares_similarities`) by :func:`_rank_lexicographic`: scores and
    similarities are float32 (two of them fit one int64 key), ``k <= n``."""
    if sims_dtype != torch.float32 or not 0 < k <= n:
        return False
    if isinstance(C, OfflineStore):
        return C.value_dtype == np.float32
    return C.values().dtype == torch.float32


def _ordered_bits(a: Tensor) -> Tensor:
    """The int32 bit patterns of float32 ``a`` made to sort as the floats do (negative
    floats have their magnitude bits flipped; ``-0.0`` sorts just below ``+0.0``). The map is
    its own inverse."""
    i = a.view(torch.int32)
    return i ^ ((i >> 31) & 0x7FFFFFFF)


def _rank_lexicographic(
    F: Tensor, sims: Tensor, k: int, out: RerankResult | None = None
) -> RerankResult:
    """The ``k`` best items of each row of the dense float32 scores ``F`` :math:`(B, N)`, by
    score, equal scores by first-stage similarity ``sims`` :math:`(B, N)`, best first: the
    ranking of :func:`~graphrerank.graph.ranking.rank_csr` with ``ties="similarity"`` (every
    zero-scored item, stored or not, ``-0.0`` included, by similarity; negative scores
    after them), up to float ties (equal score and equal similarity).

    Each (score, similarity) pair is packed into one int64 whose order is the
    lexicographic order of the pair (the order-preserving bits of the score above those of
    the similarity), so one selection and one sort of ``k`` keys per row rank it: on a CPU
    NumPy's vectorised ``argpartition`` and ``argsort`` (:func:`_lex_top_numpy`; a torch
    ``topk`` of the same keys is several times slower there), elsewhere torch's ``topk``
    (:func:`_lex_top_torch`). ``F`` and ``sims`` are overwritten; ``out``: float32 scores
    and int64 indices :math:`(B, k)` to write the lists into (returned)."""
    if out is None:
        b = F.shape[0]
        out = RerankResult(
            torch.empty(b, k, dtype=torch.float32, device=F.device),
            torch.empty(b, k, dtype=torch.long, device=F.device),
        )
    if F.device.type == "cpu":
        _lex_top_numpy(F, sims, k, out)
    else:
        _lex_top_torch(F, sims, k, out)
    return out


def _lex_top_torch(F: Tensor, sims: Tensor, k: int, out: RerankResult) -> None:
    """:func:`_rank_lexicographic` in torch ops (any device)."""
    key = _ordered_bits(F.add_(0.0)).to(torch.int64).bitwise_left_shift_(32)  # -0.0 -> +0.0
    key += _ordered_bits(sims).to(torch.int64) + 2**31  # the low half, in [0, 2**32)
    kv, idx = key.topk(k, dim=1)
    hi = _ordered_bits(kv.bitwise_right_shift(32).to(torch.int32))
    out.scores.copy_(hi.view(torch.float32))
    out.indices.copy_(idx)


def _lex_top_numpy(F: Tensor, sims: Tensor, k: int, out: RerankResult) -> None:
    """:func:`_rank_lexicographic` in NumPy (CPU tensors), a block of rows at a time (its
    keys stay in cache while they are built in place and selected)."""
    b, n = F.shape
    f32, s32 = F.numpy(), sims.numpy()
    out_s, out_i = out.scores.numpy().view(np.int32), out.indices.numpy()
    step = max(1, _KEY_ENTRIES // max(1, n))
    key = np.empty((min(step, b), n), dtype=np.int64)
    tmp = np.empty((min(step, b), n), dtype=np.int32)
    for s in range(0, b, step):
        e = min(b, s + step)
        kk, tt = key[: e - s], tmp[: e - s]
        f, si = f32[s:e], s32[s:e].view(np.int32)
        np.add(f, np.float32(0), out=f)  # -0.0 + 0 = +0.0: a stored -0.0 is a zero too
        fi = f.view(np.int32)
        for v in (fi, si):  # order-preserving bits (_ordered_bits), in place
            np.right_shift(v, 31, out=tt)
            np.bitwise_and(tt, 0x7FFFFFFF, out=tt)
            np.bitwise_xor(v, tt, out=v)
        kk[...] = fi
        np.left_shift(kk, 32, out=kk)
        np.bitwise_xor(si, np.int32(-(2**31)), out=si)  # as uint32: the same order
        np.bitwise_or(kk, si.view(np.uint32), out=kk)
        if k < n:
            part = np.argpartition(kk, n - k, axis=1)[:, n - k :]
            kv = np.take_along_axis(kk, part, axis=1)
        else:
            part, kv = None, kk
        o = np.argsort(~kv, axis=1)  # ~v = -v - 1: descending
        hi = out_s[s:e]  # the scores: the ordered bits of the keys' top halves, undone
        hi[...] = np.right_shift(np.take_along_axis(kv, o, axis=1), 32)
        hi ^= (hi >> 31) & 0x7FFFFFFF
        out_i[s:e] = o if part is None else np.take_along_axis(part, o, axis=1)


def _rank_rows(
    F: Tensor, k: int, q, x, index, ties: str, sims: Tensor | None = None
) -> RerankResult:
    """:func:`~graphrerank.graph.ranking.rank_csr` of the ``(B, N)`` CSR scores, with a
    shortcut for the rows whose ``k``-th best stored score is positive.

    Such a row's ``k`` best items are among its stored entries (every item it does not store
    scores 0), so its ranking is the top of its stored entries: by score, equal scores (float
    ties) ordered by the tie rule, the first-stage similarity computed for the tied entries
    only, or the index. The other rows (fewer than ``k`` positive scores) go through
    :func:`~graphrerank.graph.ranking.rank_csr`.
    """
    b, n = F.shape
    if b == 0 or k >= n:
        return rank_csr(F, k, q, x, index, ties)
    idx, val = csr_padded(F)  # padding: index -1, value 0 (the score of an unstored item)
    short = ties == "similarity" and isinstance(q, Tensor) and isinstance(x, Tensor)
    if short and not bool(((val > 0).sum(1) >= k).any()):  # no row takes the shortcut
        scores = torch.zeros(b, k, dtype=val.dtype, device=val.device)
        indices = torch.zeros(b, k, dtype=torch.long, device=val.device)
        rows = torch.arange(b, device=val.device)
        bad = _rank_short_rows(idx, val, rows, k, q, x, scores, indices, sims)
        _rank_subset_into(idx, val, bad, k, q, x, index, ties, F, scores, indices)
        return RerankResult(scores, indices)
    if val.shape[1] <= k:
        pad = k + 1 - val.shape[1]
        idx = torch.cat([idx, idx.new_full((b, pad), -1)], dim=1)
        val = torch.cat([val, val.new_zeros(b, pad)], dim=1)
    top, pos = val.topk(k + 1, dim=1)
    kth = top[:, k - 1 : k]
    ok = kth[:, 0] > 0
    # entries tied with the k-th beyond the window compete for its last places: widen it
    extra = int(((val == kth).sum(1) - (top[:, :k] == kth).sum(1)).masked_fill(~ok, 0).max())
    if extra > 1:
        top, pos = val.topk(min(val.shape[1], k + extra), dim=1)
    cand = idx.gather(1, pos)
    dup = torch.zeros_like(top, dtype=torch.bool)
    same = top[:, 1:] == top[:, :-1]
    dup[:, 1:] |= same
    dup[:, :-1] |= same
    dup &= cand >= 0  # (padding sits below the k-th of a row that takes the shortcut)
    tied = (dup.any(1) & ok).nonzero().squeeze(1)
    exact_sec = ties == "index" or (isinstance(q, Tensor) and isinstance(x, Tensor))
    if tied.numel() and exact_sec:
        tv, ti, td = (
            top.index_select(0, tied),
            cand.index_select(0, tied),
            dup.index_select(0, tied),
        )
        sec = torch.full(tv.shape, float("-inf"), dtype=torch.float64, device=tv.device)
        r, c = td.nonzero(as_tuple=True)
        j = ti[r, c]
        if ties == "index":
            sec[r, c] = -j.double()
        else:
            s = (q.index_select(0, tied[r]) * x.index_select(0, j)).sum(1)
            sec[r, c] = s.double()
        o = torch.sort(sec, dim=1, descending=True, stable=True).indices
        o = o.gather(1, torch.sort(tv.gather(1, o), dim=1, descending=True, stable=True).indices)
        top[tied], cand[tied] = tv.gather(1, o), ti.gather(1, o)
    elif tied.numel():
        ok[tied] = False
    scores, indices = top[:, :k].contiguous(), cand[:, :k].contiguous()
    bad = (~ok).nonzero().squeeze(1)
    if bad.numel() and short:
        bad = _rank_short_rows(idx, val, bad, k, q, x, scores, indices, sims)
    _rank_subset_into(idx, val, bad, k, q, x, index, ties, F, scores, indices)
    return RerankResult(scores, indices)


def _rank_subset_into(idx, val, bad, k, q, x, index, ties, F, scores, indices) -> None:
    """:func:`~graphrerank.graph.ranking.rank_csr` of the rows ``bad`` of the padded scores,
    written into their rows of ``scores`` / ``indices``."""
    if not bad.numel():
        return
    n = F.shape[1]
    sub_idx, sub_val = idx.index_select(0, bad), val.index_select(0, bad)
    keep = sub_idx >= 0
    crow = torch.zeros(bad.numel() + 1, dtype=F.crow_indices().dtype, device=F.device)
    crow[1:] = keep.sum(1).cumsum(0)
    itype = F.col_indices().dtype
    Fb = csr(crow, sub_idx[keep].to(itype), sub_val[keep], (bad.numel(), n), check=False)
    qb = None if q is None else q.index_select(0, bad)  # a Tensor or a ScoreMatrix
    r = rank_csr(Fb, k, qb, x, index, ties)
    scores[bad] = r.scores.to(scores.dtype)
    indices[bad] = r.indices.to(indices.dtype)


#: Entries of one dense (rows x N) similarity block of :func:`_rank_short_rows`.
_SHORT_ENTRIES = 2**24


def _rank_short_rows(
    idx: Tensor,
    val: Tensor,
    rows: Tensor,
    k: int,
    q: Tensor,
    x: Tensor,
    scores: Tensor,
    indices: Tensor,
    sims: Tensor | None = None,
) -> Tensor:
    """Rank the ``rows`` of the padded scores ``(idx, val)`` that store fewer than ``k``
    positive scores, by ``ties="similarity"``, into ``scores`` / ``indices``: their positive
    entries (by score, equal scores by first-stage similarity), then the zero-scored items
    (unstored, or stored as 0) by first-stage similarity from one dense block of
    ``q @ x.T`` per chunk of rows (instead of a second, deeper kNN search; ``sims``: those
    similarities of all rows of ``F``, already computed). Returns the rows
    left for :func:`~graphrerank.graph.ranking.rank_csr`: those with negative entries
    inside their ``k`` best."""
    n = x.shape[0]
    step = max(1, _SHORT_ENTRIES // max(1, n))
    left = []
    for s in range(0, rows.numel(), step):
        r = rows[s : s + step]
        ri, rv = idx.index_select(0, r), val.index_select(0, r)
        valid = ri >= 0
        if sims is None:  # (R, N) first-stage similarities
            sr = q.index_select(0, r).to(x.dtype) @ x.T
        else:
            sr = sims.index_select(0, r)

        nzv = valid & (rv != 0)  # the stored non-zero scores (unique columns per row)
        npos = (valid & (rv > 0)).sum(1)
        fits = npos + (n - nzv.sum(1)) >= k  # enough zero-scored items after the positives
        if not bool(fits.all()):
            left.append(r[~fits])
        # positive entries: by score, equal scores by similarity (two stable sorts)
        pv = rv.masked_fill(~(valid & (rv > 0)), float("-inf"))
        o = torch.sort(pv, dim=1, descending=True).indices
        top = pv.gather(1, o)
        if bool(((top[:, 1:] == top[:, :-1]) & (top[:, 1:] > 0)).any()):  # equal scores
            sec = torch.where(pv > 0, sr.gather(1, ri.clamp(min=0)), float("-inf")).double()
            o = torch.sort(sec, dim=1, descending=True, stable=True).indices
            o = o.gather(
                1, torch.sort(pv.gather(1, o), dim=1, descending=True, stable=True).indices
            )
        pos_i, pos_v = ri.gather(1, o), rv.gather(1, o)
        need = int((k - npos).clamp(min=0).max())
        rr, cc = nzv.nonzero(as_tuple=True)
        zs = sr.index_put_((rr, ri[rr, cc]), sr.new_tensor(float("-inf")))
        zi = zs.topk(min(need, n), dim=1).indices if need else zs.new_zeros((r.numel(), 0))
        # row j: its npos[j] positives, then its best zero-scored items
        j = torch.arange(k, device=r.device)[None, :]
        from_pos = j < npos[:, None]
        pi = pos_i.gather(1, j.clamp(max=pos_i.shape[1] - 1).expand(r.numel(), k))
        pvv = pos_v.gather(1, j.clamp(max=pos_v.shape[1] - 1).expand(r.numel(), k))
        zj = (j - npos[:, None]).clamp(min=0, max=max(0, zi.shape[1] - 1))
        zz = zi.long().gather(1, zj) if zi.shape[1] else torch.zeros_like(zj)
        out_i = torch.where(from_pos, pi, zz)
        out_v = torch.where(from_pos, pvv, torch.zeros_like(pvv))
        keep = fits.nonzero().squeeze(1)
        indices[r[keep]] = out_i.index_select(0, keep).to(indices.dtype)
        scores[r[keep]] = out_v.index_select(0, keep).to(scores.dtype)
    return torch.cat(left) if left else rows[:0]


def _matrix_rescorer(scores: ScoreMatrix, n: int):
    """The edge re-scoring hook that reads each (row, candidate) pair from a database x
    database similarity matrix (pairs a sparse matrix does not store: ``-inf``, dropped)."""
    if scores.shape != (n, n):
        raise ValueError(
            f"rescorer scores must be ({n}, {n}), the database against itself, got {scores.shape}"
        )
    if scores.kind != "similarity":
        raise ValueError(
            "rescorer scores weigh edges as similarities: pass kind='similarity' "
            "(ScoreMatrix.as_similarity() converts Euclidean distances of unit vectors)"
        )

    def rescore(rows: Tensor, candidates: Tensor, base: Tensor) -> Tensor:
        r = rows[:, None].expand_as(candidates).reshape(-1)
        c = candidates.clamp(min=0).reshape(-1)
        out = scores.pairs(r.to(scores.device), c.to(scores.device)).view_as(candidates)
        return out.to(base.device, base.dtype).masked_fill(candidates < 0, float("-inf"))

    return rescore
