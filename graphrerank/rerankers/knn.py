"""The first-stage baseline: plain nearest-neighbour search."""

from __future__ import annotations

from torch import Tensor

from .._params import OneOf, setting
from ..graph import KNNIndex, ScoreIndex, ScoreMatrix
from ..typing import BACKENDS, METRICS, Backend, Metric, RerankResult
from .base import Reranker

__all__ = ["KNN"]


class KNN(Reranker):
    r"""Plain k-nearest-neighbour ranking, the baseline every re-ranker is compared with.

    .. math::
        \text{score}(q, x_j) = \mathbf{q}^\top \mathbf{x}_j \quad (\text{"ip"})
        \quad\text{or}\quad -\lVert \mathbf{q} - \mathbf{x}_j \rVert_2^2 \quad (\text{"l2"}).

    Args:
        metric: ``"ip"`` (cosine for L2-normalised descriptors) or ``"l2"``.
        backend: kNN backend, ``"auto"``, ``"faiss"`` or ``"torch"``.

    Shapes:
        - **fit:** database :math:`(N, D)`
        - **rerank:** queries :math:`(Q, D)` or ``None`` :math:`\to` scores, indices :math:`(Q, k)`

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> KNN(backend="torch").fit(x).rerank(k=2).indices
        tensor([[0, 2],
                [1, 2],
                [2, 1]])
    """

    accepts_scores = True
    #: Strict leave-one-out is the all-vs-all ranking without each item's own entry (exact).
    strict_leave_one_out = "own_entry"

    metric: Metric = setting("ip", OneOf(METRICS))
    backend: Backend = setting("auto", OneOf(BACKENDS))

    def _fit(self, database: Tensor | ScoreMatrix) -> None:
        if isinstance(database, ScoreMatrix):
            self.index_ = ScoreIndex(database.shape[0])
        else:
            self.index_ = KNNIndex(metric=self.metric, backend=self.backend).add(database)

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        q = self.database_ if queries is None else queries
        return RerankResult(*self.index_.search(q, k))

    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        """The plain similarity of each (row, candidate) pair (an identity re-scorer)."""
        self._check_fitted()
        x = self.database_
        if isinstance(x, ScoreMatrix):
            rr = rows[:, None].expand_as(candidates)
            s = x.pairs(rr.reshape(-1), candidates.clamp(min=0).reshape(-1)).view_as(candidates)
            return s.masked_fill(candidates < 0, float("-inf"))
        cand = x[candidates.clamp(min=0)]
        q = x[rows]
        if self.metric == "ip":
            s = (cand * q[:, None, :]).sum(-1)
        else:
            s = -(cand - q[:, None, :]).pow(2).sum(-1)
        return s.masked_fill(candidates < 0, float("-inf"))
