"""graphrerank: image-retrieval re-ranking as graph computation on PyTorch Geometric.

The subpackages and the names below are imported on first use (``graphrerank.rerankers.KNN``
imports the kNN re-ranker's modules only): ``import graphrerank`` imports neither torch,
PyTorch Geometric, SciPy nor faiss. ``GRAPHRERANK_EAGER_IMPORTS=1`` imports everything at once.
"""

from ._version import __version__  # noqa: I001 - first: every layer may read it
from . import _startup  # noqa: F401 - second: defers torch._dynamo before PyG is imported
from ._imports import forward, lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "datasets": (),
        "diffusion": (),
        "graph": (),
        "metrics": (),
        "models": (),
        "nn": (),
        "plot": (),
        "rerankers": ("KNN", "Reranker"),
        "typing": ("KNNResult", "RerankResult"),
        "tuning": ("tune",),
    },
    submodules=("cli", "testing"),
)

# Names of earlier releases that now live in a higher layer. The package root is the one place
# that may reach every layer, so it keeps them importable where they were (a lower layer never
# imports upward): the one-call re-rankers, once offered beside the solvers and models they use,
# resolved on first access (graphrerank._imports.forward).
forward(
    "graphrerank.diffusion",
    ("diffusion_rerank", "regional_diffusion_rerank", "fsr_rerank", "offline_diffusion_rerank",
     "rdip_rerank"),
    "graphrerank.rerankers",
)  # fmt: skip
forward("graphrerank.diffusion.offline", ("offline_diffusion_rerank", "rdip_rerank"),
        "graphrerank.rerankers")  # fmt: skip
forward("graphrerank.models", ("local_descriptor_rerank",), "graphrerank.rerankers")
del forward, lazy_exports

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
