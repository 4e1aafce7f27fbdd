"""Retrieval evaluation: average precision, revisited Oxford/Paris, re-ID and class-level mAP.

Every metric takes rankings as ``(Q, K)`` database indices, one row per query, best first
(``-1`` for padding), as returned by :meth:`graphrerank.rerankers.Reranker.rerank`, and accepts
numpy arrays or torch tensors on any device.
"""

from .ap import INTERPOLATIONS, average_precision, hits_from_relevance, rank_by_scores

__all__ = ["INTERPOLATIONS", "average_precision", "hits_from_relevance", "rank_by_scores"]
