"""PyG ``MessagePassing`` layers that propagate over kNN graphs (fused sparse aggregation)."""

from .diffusion import DiffusionPropagation
from .expansion import ExpansionPropagation, bipartite_adjacency
from .gnn_rerank import GNNRerankConv, gnn_rerank_graph
from .propagate import WeightedPropagation, adjacency

__all__ = [
    "DiffusionPropagation",
    "ExpansionPropagation",
    "GNNRerankConv",
    "WeightedPropagation",
    "adjacency",
    "bipartite_adjacency",
    "gnn_rerank_graph",
]
