"""graphrerank: image-retrieval re-ranking as graph computation on PyTorch Geometric."""

__version__ = "0.1.0"

from . import datasets, graph, metrics, models, plot, rerankers
from .rerankers import KNN, Reranker
from .typing import KNNResult, RerankResult

__all__ = [
    "KNN",
    "KNNResult",
    "RerankResult",
    "Reranker",
    "__version__",
    "datasets",
    "graph",
    "metrics",
    "models",
    "plot",
    "rerankers",
]
