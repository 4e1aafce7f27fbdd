r"""SuperGlobal re-ranking (Shao et al., ICCV 2023): shortlist refinement of global descriptors."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import check_in, check_int, check_normalized, check_real
from ..graph import KNNIndex
from ..nn.expansion import bipartite_adjacency
from ..nn.propagate import WeightedPropagation
from ..typing import RerankResult, TensorLike
from .base import Reranker

__all__ = ["SuperGlobal", "superglobal_rerank"]

Backend = Literal["auto", "faiss", "torch"]

_DEFAULT_BLOCK_BYTES = 256 * 2**20


class SuperGlobal(Reranker):
    r"""Re-ranking of a shortlist from `"Global Features are All You Need for Image Retrieval
    and Reranking" <https://arxiv.org/abs/2308.06954>`_ (Shao et al., ICCV 2023), as the official
    code computes it (``MDescAug`` then ``RerankwMDA``).

    For a query :math:`\mathbf{q}` with first-stage shortlist :math:`x_1, \dots, x_M` (its
    :math:`M` best database items):

    1. Database-side refinement: each shortlisted :math:`\mathbf{x}_i` is averaged with its
       :math:`K` nearest neighbours *within the shortlist*, itself first with weight 1,

       .. math::
           \tilde{\mathbf{x}}_i = \frac{\mathbf{x}_i + \beta \sum_{j \in \mathcal{N}_K(i)}
           s_{ij}\, \mathbf{x}_j}{1 + \beta \sum_{j \in \mathcal{N}_K(i)} s_{ij}},
           \qquad s_{ij} = \mathbf{x}_i^\top \mathbf{x}_j,

       not re-normalised (one hop of row-normalised message passing from the database to the
       shortlist, :class:`~graphrerank.nn.WeightedPropagation`), and scored
       :math:`a_i = \mathbf{q}^\top \tilde{\mathbf{x}}_i`.
    2. Query-side refinement: :math:`\tilde{\mathbf{q}}` is the elementwise maximum of the
       refined descriptors of the :math:`K + 1` best items by :math:`a` (the query itself is not
       included), and :math:`b_i = \tilde{\mathbf{q}}^\top \tilde{\mathbf{x}}_i`.
    3. The shortlist is sorted by :math:`(a_i + b_i) / 2`; items after the :math:`M`-th keep
       their first-stage order, their first-stage scores lowered by one constant where needed
       so that none exceeds the last shortlist score.

    Inductive (no database graph): new queries need nothing but their shortlist. Queries are
    processed in blocks (``block_bytes`` bounds the :math:`B \times M \times (M + D)` working
    set), with no loop over single queries. It re-ranks a given first-stage ranking
    (``rerank(..., initial=...)``, e.g. from an approximate index or an earlier stage of a
    :class:`~graphrerank.rerankers.Pipeline`; its first :math:`\min(M, m)` entries are the
    shortlist), else its own exact search.

    Args:
        M: Shortlist length :math:`M` (400 in the reference).
        K: Neighbours :math:`K` in both refinements (9 in the reference; :math:`K + 1` with the
            item itself).
        beta: Weight :math:`\beta` of the neighbours in the database-side refinement (0.15).
        backend: kNN backend of the first-stage search, ``"auto"``, ``"faiss"`` or ``"torch"``.
        block_bytes: Upper bound of the per-block working memory, in bytes.

    Shapes:
        - **fit:** database :math:`(N, D)`, rows L2-normalised
        - **rerank:** queries :math:`(Q, D)` or ``None``; ``initial`` :math:`(Q, m)`
          :math:`\to` scores, indices :math:`(Q, k)`

    Raises:
        ValueError: the database is not L2-normalised, or a setting is out of range.

    Asymmetric queries are accepted: the refinements compare database items with each other
    and the query only with database items.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(30, 4, generator=g), dim=1)
        >>> q = torch.nn.functional.normalize(torch.randn(1, 4, generator=g), dim=1)
        >>> from graphrerank.rerankers import KNN
        >>> KNN(backend="torch").fit(x).rerank(q, k=5).indices
        tensor([[28,  7,  1, 11,  3]])
        >>> SuperGlobal(M=10, K=2, backend="torch").fit(x).rerank(q, k=5).indices
        tensor([[28,  7,  1,  3, 11]])

    See Also:
        :func:`superglobal_rerank`
    """

    accepts_initial = True

    def __init__(
        self,
        *,
        M: int = 400,
        K: int = 9,
        beta: float = 0.15,
        backend: Backend = "auto",
        block_bytes: int = _DEFAULT_BLOCK_BYTES,
    ) -> None:
        self.M = M
        self.K = K
        self.beta = beta
        self.backend = backend
        self.block_bytes = block_bytes

    @property
    def shortlist_size(self) -> int:
        """The shortlist length :math:`M` an earlier stage should hand over."""
        return int(self.M)

    def _validate_params(self) -> None:
        check_int(self.M, "M", low=1)
        check_int(self.K, "K", low=0)
        check_real(self.beta, "beta", low=0)
        check_in(self.backend, "backend", ("auto", "faiss", "torch"))
        check_int(self.block_bytes, "block_bytes", low=1)

    @classmethod
    def _test_params(cls) -> dict[str, Any]:
        return {"M": 20, "K": 3}

    def _fit(self, database: Tensor) -> None:
        check_normalized(database, "database")
        self.index_ = KNNIndex(metric="ip", backend=self.backend).add(database)

    # ------------------------------------------------------------------ core
    def _block_size(self, m: int, d: int, elem: int) -> int:
        per_query = m * (m + 3 * d + 4 * (self.K + 1)) * elem
        return max(1, self.block_bytes // max(per_query, 1))

    def _refine(self, q: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Scores ``a`` and final scores ``(a + b) / 2`` of a shortlist block.

        ``q`` :math:`(B, D)`, ``idx`` :math:`(B, m)` database ids (``-1``: none); both outputs
        are :math:`(B, m)`, aligned with ``idx``, ``-inf`` at padding.
        """
        x = self.database_
        bsz, m = idx.shape
        valid = idx >= 0
        safe = idx.clamp(min=0)
        xm = x[safe]  # (B, m, D)
        # Similarities within the shortlist; the item itself first, padding never chosen.
        g = torch.bmm(xm, xm.transpose(1, 2))
        g.masked_fill_(~valid[:, None, :], float("-inf"))
        g.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        kk = min(self.K + 1, m)
        top_s, top_j = g.topk(kk, dim=2)  # (B, m, kk)
        del g
        absent = (top_s == float("-inf")) | ~valid[:, :, None]
        w = top_s.mul_(self.beta)
        w[..., 0] = 1.0
        w.masked_fill_(absent, 0.0)
        w = w / w.sum(-1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)
        # x~ = row-normalised aggregation over database items: one fused sparse product.
        nbr = safe.gather(1, top_j.flatten(1)).view(bsz, m, kk).masked_fill_(absent, -1)
        nbr = nbr.view(bsz * m, kk)
        adj = bipartite_adjacency(nbr, w.view(bsz * m, kk), x.shape[0])
        xt = WeightedPropagation()(x, adj).view(bsz, m, -1)
        a = torch.bmm(xt, q[:, :, None]).squeeze(2).masked_fill_(~valid, float("-inf"))
        # Query-side refinement: max over the refined top-(K+1) by a.
        top_a = a.topk(kk, dim=1).indices
        sel = xt.gather(1, top_a[:, :, None].expand(-1, -1, xt.shape[2]))
        ok = valid.gather(1, top_a)
        qt = sel.masked_fill(~ok[:, :, None], float("-inf")).amax(1)
        qt = qt.masked_fill(~torch.isfinite(qt), 0.0)
        b = torch.bmm(xt, qt[:, :, None]).squeeze(2)
        final = ((a + b) / 2).masked_fill_(~valid, float("-inf"))
        return a, final

    def _rerank_initial(self, q: Tensor, scores: Tensor, idx: Tensor, k: int) -> RerankResult:
        nq, m = idx.shape
        ms = min(int(self.M), m)
        out_k = min(k, m)
        out_s = torch.empty(nq, out_k, dtype=scores.dtype, device=scores.device)
        out_i = torch.empty(nq, out_k, dtype=torch.long, device=idx.device)
        bs = self._block_size(ms, self.database_.shape[1], self.database_.element_size())
        for s in range(0, nq, bs):
            e = min(nq, s + bs)
            head = idx[s:e, :ms]
            a, final = self._refine(q[s:e], head)
            # As the reference: sort by a, then (stably) by the final score.
            pre = a.argsort(dim=1, descending=True, stable=True)
            f = final.gather(1, pre)
            order = pre.gather(1, f.argsort(dim=1, descending=True, stable=True))
            new_s = final.gather(1, order)
            new_i = head.gather(1, order)
            tail_s, tail_i = self._tail(scores[s:e, ms:], idx[s:e, ms:], new_s)
            out_s[s:e] = torch.cat([new_s, tail_s], 1)[:, :out_k]
            out_i[s:e] = torch.cat([new_i, tail_i], 1)[:, :out_k]
        if out_k < k:
            pad = k - out_k
            out_s = torch.cat([out_s, out_s.new_full((nq, pad), float("-inf"))], 1)
            out_i = torch.cat([out_i, out_i.new_full((nq, pad), -1)], 1)
        return RerankResult(out_s, out_i)

    @staticmethod
    def _tail(scores: Tensor, idx: Tensor, head_scores: Tensor) -> tuple[Tensor, Tensor]:
        """Items after the shortlist: first-stage order, scores shifted below the shortlist."""
        if scores.shape[1] == 0:
            return scores, idx
        finite = torch.isfinite(head_scores)
        lowest = head_scores.masked_fill(~finite, float("inf")).amin(1, keepdim=True)
        first = scores[:, :1]
        shift = (first - lowest).clamp(min=0)
        shift = shift.masked_fill(~torch.isfinite(shift), 0.0)
        return (scores - shift).masked_fill(idx < 0, float("-inf")), idx

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        q = self.database_ if queries is None else check_normalized(queries, "queries")
        if initial is None:
            m = min(max(k, int(self.M)), self.n_database_)
            initial = RerankResult(*self.index_.search(q, m))
        return self._rerank_initial(q, initial.scores, initial.indices, k)

    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        """SuperGlobal scores of each database item ``rows[b]`` (as a query) against its
        candidate list ``candidates[b]`` (the shortlist, best first): :math:`(a + b)/2` for the
        first :math:`M` candidates, the shifted first-stage score after them, ``-inf`` at
        padding. The rows' candidate lists may come from any first stage."""
        self._check_fitted()
        x = self.database_
        rows = rows.to(device=x.device, dtype=torch.long)
        candidates = candidates.to(device=x.device, dtype=torch.long)
        scores = scores.to(device=x.device, dtype=x.dtype)
        b, m = candidates.shape
        ms = min(int(self.M), m)
        out = torch.empty(b, m, dtype=x.dtype, device=x.device)
        bs = self._block_size(ms, x.shape[1], x.element_size())
        for s in range(0, b, bs):
            e = min(b, s + bs)
            _, final = self._refine(x[rows[s:e]], candidates[s:e, :ms])
            out[s:e, :ms] = final
            out[s:e, ms:] = self._tail(scores[s:e, ms:], candidates[s:e, ms:], final)[0]
        return out.masked_fill(candidates < 0, float("-inf"))


def superglobal_rerank(
    queries: TensorLike | None,
    database: TensorLike,
    k: int = 100,
    *,
    M: int = 400,
    K: int = 9,
    beta: float = 0.15,
    backend: Backend = "auto",
    initial: RerankResult | tuple[Tensor, Tensor] | None = None,
) -> RerankResult:
    r"""SuperGlobal re-ranking in one call:
    ``SuperGlobal(M=M, K=K, beta=beta, backend=backend).fit(database).rerank(queries, k,
    initial=initial)``; see :class:`SuperGlobal` for the math.

    Args:
        queries: :math:`(Q, D)` L2-normalised, or ``None`` (all-vs-all).
        database: :math:`(N, D)` L2-normalised.
        k: Length of each ranked list.
        M: Shortlist length.
        K: Neighbours in the refinements.
        beta: Neighbour weight of the database-side refinement.
        backend: kNN backend of the first-stage search.
        initial: Optional first-stage ``(scores, indices)`` :math:`(Q, m)`.

    Returns:
        ``(scores, indices)``, each :math:`(Q, k)`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.nn.functional.normalize(torch.randn(30, 4, generator=g), dim=1)
        >>> q = torch.nn.functional.normalize(torch.randn(1, 4, generator=g), dim=1)
        >>> superglobal_rerank(q, x, k=5, M=10, K=2, backend="torch").indices
        tensor([[28,  7,  1,  3, 11]])
    """
    reranker = SuperGlobal(M=M, K=K, beta=beta, backend=backend)
    return reranker.fit(database).rerank(queries, k, initial=initial)
