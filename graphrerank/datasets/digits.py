"""scikit-learn's bundled handwritten digits as a small retrieval dataset."""

from __future__ import annotations

import numpy as np
import torch

from .._imports import require
from .base import RetrievalDataset

__all__ = ["load_digits_retrieval"]


def load_digits_retrieval() -> RetrievalDataset:
    """The 1797 8x8 handwritten digits of scikit-learn as an all-vs-all retrieval set.

    The 64 pixel values of each image (``float64``) are centred by the mean image of the
    whole set, then each row is L2-normalised, so that inner products are cosine
    similarities; the result is stored as ``float32``. Every image is a query
    (leave-one-out); the class is the digit. The data ship inside scikit-learn, nothing is
    downloaded. On this preprocessing the cosine baseline reaches a leave-one-out mAP of
    about 67.7, and graph re-rankers gain several points.

    Returns:
        A dataset with ``database`` ``(1797, 64)`` float32 (unit rows), ``database_labels``
        ``(1797,)`` int64 in ``0..9``, ``images`` ``(1797, 8, 8)`` float32 (raw pixel
        values ``0..16``), ``class_names`` ``"0".."9"`` and ``name="digits"``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'graphrerank[examples]'``).

    Example:
        >>> from graphrerank.datasets import load_digits_retrieval
        >>> ds = load_digits_retrieval()
        >>> ds
        RetrievalDataset(name='digits', database=1797x64 float32, classes=10, queries=all-vs-all, images=1797x8x8)
        >>> float(ds.database[0].norm())
        1.0
    """
    sklearn_datasets = require("sklearn.datasets", "load_digits_retrieval", "examples")
    digits = sklearn_datasets.load_digits()
    x = np.asarray(digits.data, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, np.finfo(np.float64).tiny)
    return RetrievalDataset(
        database=torch.from_numpy(x.astype(np.float32)),
        database_labels=torch.from_numpy(np.asarray(digits.target, dtype=np.int64)),
        name="digits",
        images=torch.from_numpy(np.asarray(digits.images, dtype=np.float32)),
        class_names=np.asarray([str(c) for c in digits.target_names]),
    )
