"""Re-rankers: estimators with ``fit(database)`` and ``rerank(queries, k)``."""

from ..diffusion.offline import offline_diffusion_rerank, rdip_rerank
from .base import NotFittedError, Reranker
from .knn import KNN
from .learned import LocalDescriptorReranker, ShortlistLogits, local_descriptor_rerank
from .offline import OfflineDiffusion, RDiP

__all__ = [
    "KNN",
    "RERANKERS",
    "RERANKERS_WITH_LOCAL",
    "LocalDescriptorReranker",
    "NotFittedError",
    "OfflineDiffusion",
    "RDiP",
    "Reranker",
    "ShortlistLogits",
    "local_descriptor_rerank",
    "offline_diffusion_rerank",
    "rdip_rerank",
]

#: Every public re-ranker class that needs only global descriptors; the shared contract test and
#: the demo iterate over it.
RERANKERS: tuple[type[Reranker], ...] = (KNN, OfflineDiffusion, RDiP)

#: Re-rankers that also need local descriptors (``fit(database, local=...)``,
#: ``rerank(queries, k, local=...)``) and usually a trained model. They keep the same contract,
#: checked with local descriptors by their own test (``tests/rerankers/test_learned.py``).
RERANKERS_WITH_LOCAL: tuple[type[Reranker], ...] = (LocalDescriptorReranker,)
