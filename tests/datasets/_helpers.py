"""Small helpers shared by the dataset tests (the metrics package is written elsewhere)."""

import numpy as np


def loo_class_map(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Leave-one-out class mAP and 1-NN accuracy of an all-vs-all ``(N, N)`` score matrix."""
    s = np.array(scores, dtype=np.float64)
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :-1]
    rel = labels[order] == labels[:, None]
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    ap = (precision * rel).sum(axis=1) / np.maximum(rel.sum(axis=1), 1)
    return float(ap.mean()), float(rel[:, 0].mean())


def cosine_class_map(x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """:func:`loo_class_map` of the inner products of the rows of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return loo_class_map(x @ x.T, labels)
