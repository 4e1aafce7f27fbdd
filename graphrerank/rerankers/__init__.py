"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from ..diffusion.offline import offline_diffusion_rerank, rdip_rerank
from .base import NotFittedError, Reranker
from .knn import KNN
from .offline import OfflineDiffusion, RDiP

__all__ = [
    "KNN",
    "RERANKERS",
    "NotFittedError",
    "OfflineDiffusion",
    "RDiP",
    "Reranker",
    "offline_diffusion_rerank",
    "rdip_rerank",
]

#: Every public re-ranker class; the shared contract test and the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (KNN, OfflineDiffusion, RDiP)
