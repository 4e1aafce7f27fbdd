"""The retrieval substrate: kNN search and indexes (the only place faiss is imported), kNN
graphs, neighbour lists, sparse algebra and tie-aware ranking.

Modules: :mod:`~graphrerank.graph.knn` (search), :mod:`~graphrerank.graph.index`
(:class:`KNNIndex`), :mod:`~graphrerank.graph.build` (graphs), :mod:`~graphrerank.graph.lists`
(blocked scans, transductive graph nodes, truncation lists), :mod:`~graphrerank.graph.sparse`
(CSR helpers and overlap products), :mod:`~graphrerank.graph.ranking` (top-``k`` with ties),
:mod:`~graphrerank.graph.convert` (``torch.sparse`` / ``scipy.sparse``).
"""

from . import lists, ranking, sparse
from .build import (
    EdgeRescorer,
    edge_weights,
    knn_graph,
    mutual_knn_graph,
    normalize_adjacency,
    symmetrize,
)
from .convert import from_scipy, to_scipy, to_torch_csr
from .index import KNNIndex, database_index
from .knn import FAISS_GPU_MAX_K, knn_search, resolve_backend
from .lists import DistanceNodes, FeatureNodes, graph_lists, scan, self_first, truncation_lists
from .ranking import rank_candidates, rank_csr, rank_dense, select_topk, top_k_with_ties
from .scores import ScoreIndex, ScoreMatrix

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
    "sparse",
    "symmetrize",
    "to_scipy",
    "to_torch_csr",
    "top_k_with_ties",
    "truncation_lists",
]
