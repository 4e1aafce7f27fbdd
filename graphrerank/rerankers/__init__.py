"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from .base import NotFittedError, Reranker
from .knn import KNN

__all__ = ["KNN", "RERANKERS", "NotFittedError", "Reranker"]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (KNN,)
