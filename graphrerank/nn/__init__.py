"""PyG ``MessagePassing`` layers that propagate over kNN graphs (fused sparse aggregation), and
the layer-level functions of the neighbourhood re-rankers (k-reciprocal encoding, GNN
re-ranking propagation)."""

from .diffusion import DiffusionPropagation
from .expansion import ExpansionPropagation, bipartite_adjacency
from .gnn_rerank import GNNRerankConv, gnn_propagate, gnn_rerank_graph
from .kreciprocal import kreciprocal_encoding, reciprocal_mask
from .propagate import WeightedPropagation, adjacency
from .whitening import PCAWhitening

__all__ = [
    "DiffusionPropagation",
    "ExpansionPropagation",
    "GNNRerankConv",
    "PCAWhitening",
    "WeightedPropagation",
    "adjacency",
    "bipartite_adjacency",
    "gnn_propagate",
    "gnn_rerank_graph",
    "kreciprocal_encoding",
    "reciprocal_mask",
]
