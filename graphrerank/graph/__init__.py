"""kNN search, nearest-neighbour indexes and kNN graphs (the only place faiss is imported)."""

from .build import EdgeRescorer, edge_weights, knn_graph, normalize_adjacency, symmetrize
from .convert import from_scipy, to_scipy, to_torch_csr
from .index import KNNIndex
from .knn import FAISS_GPU_MAX_K, knn_search, resolve_backend

__all__ = [
    "FAISS_GPU_MAX_K",
    "EdgeRescorer",
    "KNNIndex",
    "edge_weights",
    "from_scipy",
    "knn_graph",
    "knn_search",
    "normalize_adjacency",
    "resolve_backend",
    "symmetrize",
    "to_scipy",
    "to_torch_csr",
]
