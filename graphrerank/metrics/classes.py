r"""Class-level retrieval metrics: a database item is relevant when it shares the query's label.

These are the usual scores of retrieval on classification sets (Corel, Holidays-style class
splits, product search): mAP over the ranking and Recall@K. Nothing of size
:math:`Q \times N` is built: positives are counted per label, so :math:`N` may be large.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_in, check_same_device
from ..typing import TensorLike
from ._validate import check_ks, check_labels, check_ranking, follow
from .ap import INTERPOLATIONS, Interpolation, _average_precision, _positives

__all__ = ["class_average_precision", "class_map", "recall_at_k"]


def _class_hits(
    indices: Any,
    database_labels: Any,
    query_labels: Any,
    leave_one_out: bool,
    *,
    indices_name: str = "indices",
) -> tuple[Tensor, Tensor]:
    """Validated ``(hits (Q, K) int8, num_positives (Q,))``; messages call the ranking
    ``indices_name``."""
    if not isinstance(leave_one_out, (bool, np.bool_)):
        raise TypeError(f"leave_one_out must be True or False, got {leave_one_out!r}")
    db = check_labels(database_labels, "database_labels")
    n = db.shape[0]
    idx = check_ranking(indices, indices_name, num_items=n, what="database_labels", unique=True)
    db = follow(database_labels, db, idx.device)
    nq = idx.shape[0]
    if query_labels is None:
        if nq != n:
            raise ValueError(
                f"query_labels=None means all-vs-all (query i is database item i), so "
                f"{indices_name} needs {n} rows (one per database item of database_labels), got "
                f"{nq}; pass query_labels for separate queries"
            )
        q = db
    else:
        q = check_labels(query_labels, "query_labels", length=nq, what=f"{indices_name} (rows)")
        q = follow(query_labels, q, idx.device)
    leave_one_out = bool(leave_one_out)
    if leave_one_out and nq != n:
        raise ValueError(
            f"leave_one_out=True needs query i to be database item i, so {indices_name} needs "
            f"{n} rows (the size of database_labels), got {nq}"
        )
    check_same_device(indices=idx, database_labels=db, query_labels=q)

    # Positives per query: number of database items of its label (bincount over compact codes).
    _, code = torch.unique(torch.cat([q, db]), return_inverse=True)
    counts = torch.bincount(code[nq:], minlength=int(code.max()) + 1)
    num_pos = counts[code[:nq]]

    padded = idx < 0
    hits = (db[idx.clamp(min=0)] == q[:, None]).to(torch.int8)
    junk = padded
    if leave_one_out:
        self_ = torch.arange(nq, device=idx.device)
        junk = junk | (idx == self_[:, None])
        num_pos = num_pos - (q == db).long()
    return hits.masked_fill_(junk, -1), num_pos


def _require_positives(num_pos: Tensor, query_labels: Any, leave_one_out: bool) -> None:
    """Refuse to average over no query: a mean of nothing is not a score."""
    if bool((num_pos > 0).any()):
        return
    queries = "query_labels" if query_labels is not None else "database_labels (the queries)"
    extra = " apart from the query itself (leave_one_out=True)" if leave_one_out else ""
    raise ValueError(
        f"no query has a positive: no label of {queries} occurs in database_labels{extra}, so "
        "there is nothing to average; check that the labels belong to this database"
    )


def class_average_precision(
    indices: TensorLike,
    database_labels: TensorLike,
    query_labels: TensorLike | None = None,
    *,
    leave_one_out: bool = False,
    interpolation: Interpolation = "step",
) -> Tensor:
    r"""Average precision of each query, relevant = same label.

    With :math:`P_q = |\{n : y_n = y_q\}|` (minus the query itself under leave-one-out) and the
    AP of :func:`~graphrerank.metrics.average_precision`:

    .. math::
        \mathrm{AP}_q = \frac{1}{P_q} \sum_{j} \mathrm{prec}_j, \qquad
        \mathrm{prec}_j = \frac{j + 1}{r_j + 1} \ (\text{"step"}).

    Positives beyond a truncated ranking count as misses.

    Args:
        indices: :math:`(Q, K)` ranked database indices, best first; ``-1`` is padding. A row
            should not repeat an index.
        database_labels: :math:`(N,)` integer class of every database item.
        query_labels: :math:`(Q,)` integer class of every query, or ``None`` for all-vs-all
            (query :math:`i` is database item :math:`i`, so :math:`Q = N`).
        leave_one_out: Ignore database item :math:`i` for query :math:`i` (it is removed from
            the ranking and not counted as a positive); needs :math:`Q = N`. Use it when the
            queries are the database items themselves (``rerank(None)``).
        interpolation: ``"step"`` (default, non-interpolated AP) or ``"trapezoid"``.

    Returns:
        :math:`(Q,)` float64 on the device of ``indices``; NaN for a query without positives.

    Raises:
        TypeError: non-integer inputs, non-boolean ``leave_one_out``.
        ValueError: wrong or mismatched shapes, empty input, indices out of range,
            ``leave_one_out`` or ``query_labels=None`` with :math:`Q \ne N`, bad
            ``interpolation``.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> indices = torch.tensor([[0, 2, 1, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 0, 2, 1]])
        >>> class_average_precision(indices, labels, leave_one_out=True)
        tensor([0.5000, 1.0000, 1.0000, 0.5000], dtype=torch.float64)
    """
    check_in(interpolation, "interpolation", INTERPOLATIONS)
    hits, num_pos = _class_hits(indices, database_labels, query_labels, leave_one_out)
    return _average_precision(hits, num_pos, interpolation)


def class_map(
    indices: TensorLike,
    database_labels: TensorLike,
    query_labels: TensorLike | None = None,
    *,
    leave_one_out: bool = False,
    interpolation: Interpolation = "step",
) -> float:
    r"""Mean of :func:`class_average_precision` over the queries with at least one positive.

    .. math::
        \mathrm{mAP} = \frac{1}{|\{q : P_q > 0\}|} \sum_{q : P_q > 0} \mathrm{AP}_q

    Args:
        indices: :math:`(Q, K)` ranked database indices, best first; ``-1`` is padding.
        database_labels: :math:`(N,)` integer classes.
        query_labels: :math:`(Q,)` integer classes, or ``None`` for all-vs-all.
        leave_one_out: Ignore database item :math:`i` for query :math:`i` (needs :math:`Q = N`).
        interpolation: ``"step"`` or ``"trapezoid"``.

    Returns:
        The mAP as a fraction in [0, 1].

    Raises:
        TypeError: see :func:`class_average_precision`.
        ValueError: see :func:`class_average_precision`; no query has a positive (the mean
            would be over no query).

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> indices = torch.tensor([[0, 2, 1, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 0, 2, 1]])
        >>> class_map(indices, labels, leave_one_out=True)
        0.75
    """
    check_in(interpolation, "interpolation", INTERPOLATIONS)
    hits, num_pos = _class_hits(indices, database_labels, query_labels, leave_one_out)
    _require_positives(num_pos, query_labels, bool(leave_one_out))
    ap = _average_precision(hits, num_pos, interpolation)
    return float(ap[num_pos > 0].mean())


def recall_at_k(
    indices: TensorLike,
    database_labels: TensorLike,
    query_labels: TensorLike | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    leave_one_out: bool = False,
) -> dict[int, float]:
    r"""Recall@K of product / metric-learning retrieval: a query scores when a positive is in
    its top :math:`k`.

    .. math::
        \mathrm{R}@k = \frac{1}{|\{q : P_q > 0\}|} \sum_{q : P_q > 0}
        [\, r_\text{first}(q) \le k \,]

    with :math:`r_\text{first}` the 1-based rank of the first positive after junk (the query
    itself under leave-one-out, and padding) is removed. Queries with no positive in the
    database are left out.

    Args:
        indices: :math:`(Q, K)` ranked database indices, best first; ``-1`` is padding.
        database_labels: :math:`(N,)` integer classes.
        query_labels: :math:`(Q,)` integer classes, or ``None`` for all-vs-all.
        ks: Cut-offs, each at most :math:`K`.
        leave_one_out: Ignore database item :math:`i` for query :math:`i` (needs :math:`Q = N`).

    Returns:
        ``{k: recall}`` as fractions in [0, 1].

    Raises:
        TypeError: non-integer inputs or cut-offs.
        ValueError: see :func:`class_average_precision`; a cut-off larger than :math:`K`; no
            query has a positive.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> indices = torch.tensor([[0, 2, 1, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 0, 2, 1]])
        >>> recall_at_k(indices, labels, ks=(1, 2), leave_one_out=True)
        {1: 0.5, 2: 1.0}
    """
    ks = check_ks(ks, "ks")
    hits, num_pos = _class_hits(indices, database_labels, query_labels, leave_one_out)
    width = hits.shape[1]
    too_long = [k for k in ks if k > width]
    if too_long:
        raise ValueError(
            f"ks contains {too_long[0]} but the rankings hold only {width} item(s) per query"
        )
    _require_positives(num_pos, query_labels, bool(leave_one_out))
    first = _positives(hits).first
    fv = first[num_pos > 0]
    return {k: float((fv <= k).double().mean()) for k in ks}
