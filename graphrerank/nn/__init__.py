"""PyG ``MessagePassing`` layers that propagate over kNN graphs (fused sparse aggregation)."""

from .gnn_rerank import GNNRerankConv, gnn_rerank_graph
from .propagate import WeightedPropagation, adjacency

__all__ = ["GNNRerankConv", "WeightedPropagation", "adjacency", "gnn_rerank_graph"]
