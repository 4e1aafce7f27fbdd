"""The retrieval substrate: kNN search and indexes (the only place faiss is imported), kNN
graphs, neighbour lists, sparse algebra and tie-aware ranking.

Modules: :mod:`~graphrerank.graph.knn` (search), :mod:`~graphrerank.graph.index`
(:class:`KNNIndex`), :mod:`~graphrerank.graph.build` (graphs), :mod:`~graphrerank.graph.lists`
(blocked scans, transductive graph nodes, truncation lists), :mod:`~graphrerank.graph.sparse`
(CSR helpers and overlap products), :mod:`~graphrerank.graph.ranking` (top-``k`` with ties),
:mod:`~graphrerank.graph.convert` (``torch.sparse`` / ``scipy.sparse``).
"""

from .._imports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "lists": (
            "DistanceNodes",
            "FeatureNodes",
            "graph_lists",
            "scan",
            "self_first",
            "truncation_lists",
        ),
        "ranking": ("rank_candidates", "rank_csr", "rank_dense", "select_topk", "top_k_with_ties"),
        "sparse": (),
        "build": (
            "EdgeRescorer",
            "edge_weights",
            "knn_graph",
            "mutual_knn_graph",
            "normalize_adjacency",
            "symmetrize",
        ),
        "convert": ("from_scipy", "to_scipy", "to_torch_csr"),
        "index": ("KNNIndex", "database_index"),
        "knn": ("FAISS_GPU_MAX_K", "knn_search", "resolve_backend", "self_knn"),
        "scores": ("ScoreIndex", "ScoreMatrix"),
    },
)

__all__ = [
    "FAISS_GPU_MAX_K",
    "DistanceNodes",
    "EdgeRescorer",
    "FeatureNodes",
    "KNNIndex",
    "ScoreIndex",
    "ScoreMatrix",
    "database_index",
    "edge_weights",
    "from_scipy",
    "graph_lists",
    "knn_graph",
    "knn_search",
    "lists",
    "mutual_knn_graph",
    "normalize_adjacency",
    "rank_candidates",
    "rank_csr",
    "rank_dense",
    "ranking",
    "resolve_backend",
    "scan",
    "select_topk",
    "self_first",
    "self_knn",
    "sparse",
    "symmetrize",
    "to_scipy",
    "to_torch_csr",
    "top_k_with_ties",
    "truncation_lists",
]
