"""Retrieval evaluation: average precision, revisited Oxford/Paris, re-ID and class-level mAP.

Every metric takes rankings as ``(Q, K)`` database indices, one row per query, best first
(``-1`` for padding), as returned by :meth:`graphrerank.rerankers.Reranker.rerank`, and accepts
numpy arrays or torch tensors on any device (numpy inputs follow the device of the tensors
they are scored with; tensors on two different devices are refused).
"""

from .._imports import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ap": ("INTERPOLATIONS", "average_precision", "hits_from_relevance", "rank_by_scores"),
        "classes": ("class_average_precision", "class_map", "recall_at_k"),
        "reid": ("ReIDResult", "reid_metrics"),
        "revisited": (
            "PROTOCOLS",
            "ProtocolResult",
            "RevisitedResult",
            "ranks_from_cirtorch",
            "relevance_from_gnd",
            "revisited_map",
        ),
    },
)

__all__ = [
    "INTERPOLATIONS",
    "PROTOCOLS",
    "ProtocolResult",
    "ReIDResult",
    "RevisitedResult",
    "average_precision",
    "class_average_precision",
    "class_map",
    "hits_from_relevance",
    "rank_by_scores",
    "ranks_from_cirtorch",
    "recall_at_k",
    "reid_metrics",
    "relevance_from_gnd",
    "revisited_map",
]
