"""graphrerank: image-retrieval re-ranking as graph computation on PyTorch Geometric."""

from ._version import __version__  # noqa: I001 - first: every layer may read it
from . import _startup  # noqa: F401 - second: defers torch._dynamo before PyG is imported
from . import datasets, diffusion, graph, metrics, models, nn, plot, rerankers
from .rerankers import KNN, Reranker
from .typing import KNNResult, RerankResult
from .tuning import tune

# Names of earlier releases that now live in a higher layer. The package root is the one place
# that may reach every layer, so it keeps them importable where they were (a lower layer never
# imports upward): the one-call re-rankers, once offered beside the solvers and models they use.
for _module, _names in (
    (diffusion, ("diffusion_rerank", "regional_diffusion_rerank", "fsr_rerank",
                 "offline_diffusion_rerank", "rdip_rerank")),
    (diffusion.offline, ("offline_diffusion_rerank", "rdip_rerank")),
    (models, ("local_descriptor_rerank",)),
):  # fmt: skip
    for _name in _names:
        setattr(_module, _name, getattr(rerankers, _name))
del _module, _names, _name

__all__ = [
    "KNN",
    "KNNResult",
    "RerankResult",
    "Reranker",
    "__version__",
    "datasets",
    "diffusion",
    "graph",
    "metrics",
    "models",
    "nn",
    "plot",
    "rerankers",
    "tune",
]
