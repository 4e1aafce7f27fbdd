"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from .base import NotFittedError, Reranker
from .gnn import GNNRerank, gnn_rerank
from .knn import KNN
from .kreciprocal import KReciprocal, kreciprocal_rerank, kreciprocal_rerank_distances

__all__ = [
    "KNN",
    "RERANKERS",
    "GNNRerank",
    "KReciprocal",
    "NotFittedError",
    "Reranker",
    "gnn_rerank",
    "kreciprocal_rerank",
    "kreciprocal_rerank_distances",
]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (KNN, KReciprocal, GNNRerank)
