"""PyG ``MessagePassing`` layers that propagate over kNN graphs (fused sparse aggregation), and
the layer-level functions of the neighbourhood re-rankers (k-reciprocal encoding, GNN
re-ranking propagation)."""

from .._imports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "diffusion": ("DiffusionPropagation",),
        "expansion": ("ExpansionPropagation", "bipartite_adjacency"),
        "gnn_rerank": ("GNNRerankConv", "gnn_propagate", "gnn_rerank_graph"),
        "kreciprocal": ("kreciprocal_encoding", "reciprocal_mask"),
        "propagate": ("WeightedPropagation", "adjacency"),
        "whitening": ("PCAWhitening",),
    },
)

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
