r"""Fusion of the first-stage (global) score with a local matching logit, and its tuning."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._checks import Array, Int, Real, check_index, check_real, checked
from ..typing import RerankResult

__all__ = ["FusionResult", "fuse_scores", "rerank_shortlist", "tune_fusion"]

#: Grids searched by :func:`tune_fusion` by default.
LAMBDAS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
GAMMAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)


#: Declared checks of the score arrays: numbers (``-inf`` allowed for padding), never NaN.
_SCORES = Array(kind="number", nan=False)
_LOGITS = Array(kind="number", nan=False)


def _real_grid(values: Sequence[float], name: str, **bounds: Any) -> list[float]:
    """The values of a grid argument, each checked (a scalar or a string is refused)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}")
    if isinstance(values, (Tensor, np.ndarray)):
        values = values.reshape(-1).tolist()
    return [check_real(v, name, **bounds) for v in values]


@checked(
    global_scores=_SCORES,
    logits=_LOGITS,
    lambda_value=Real(low=0, high=1),
    gamma=Real(low=0, low_open=True),
)
def fuse_scores(
    global_scores: Tensor, logits: Tensor, lambda_value: float = 0.5, gamma: float = 1.0
) -> Tensor:
    r"""The fused score of AMES and LOCORE.

    .. math::
        s = \lambda\, s_{\text{global}} + (1 - \lambda)\, \sigma(\gamma\, \ell)

    Args:
        global_scores: First-stage similarities :math:`s_{\text{global}}`, any shape.
        logits: Matching logits :math:`\ell`, the same shape.
        lambda_value: :math:`\lambda \in [0, 1]`; 0 ranks by the logit alone, 1 keeps the
            first stage.
        gamma: Temperature :math:`\gamma > 0` of the logit.

    Raises:
        ValueError: the shapes differ, an input holds NaN, or a setting is out of range.
        TypeError: an input is not a numeric array (numpy arrays and lists are converted).

    Example:
        >>> fuse_scores(torch.tensor([0.8]), torch.tensor([0.0]), 0.5, 1.0)
        tensor([0.6500])
    """
    return _fuse(global_scores, logits, lambda_value, gamma)


def _fuse(global_scores: Tensor, logits: Tensor, lambda_value: float, gamma: float) -> Tensor:
    if global_scores.shape != logits.shape:
        raise ValueError(
            f"global_scores {tuple(global_scores.shape)} and logits {tuple(logits.shape)} "
            "must have the same shape"
        )
    s = lambda_value * global_scores + (1 - lambda_value) * torch.sigmoid(gamma * logits)
    return s.masked_fill(torch.isinf(logits) & (logits < 0), float("-inf"))


#: Database ids must lie below this (no database of this library holds 2**32 images; a
#: larger id is a corrupt or wrongly typed ranking).
MAX_ITEMS = 2**32


def _check_ranking(
    scores: Tensor, indices: Tensor, logits: Tensor, num_items: int | None = None
) -> Tensor:
    """Cross-argument checks of a ranking and its logits (each already checked alone); returns
    ``indices`` checked as ids (``-1`` padding, no id twice in a row)."""
    if scores.shape != indices.shape:
        raise ValueError(
            f"scores and indices must be (Q, K) of one shape, got {tuple(scores.shape)} and "
            f"{tuple(indices.shape)}"
        )
    q, m = logits.shape
    if q != scores.shape[0] or m > scores.shape[1]:
        raise ValueError(
            f"logits must be (Q, M) with Q={scores.shape[0]} and M <= {scores.shape[1]}, got "
            f"{tuple(logits.shape)}"
        )
    if num_items is None:
        high = int(indices.max()) + 1 if indices.numel() else 0
        if high > MAX_ITEMS:
            raise ValueError(
                f"indices holds the id {high - 1}, out of range: database ids must be below "
                f"2**32 = {MAX_ITEMS}"
            )
        indices = check_index(indices, "indices", high=max(high, 0), padding=True, unique=True)
    else:
        indices = check_index(indices, "indices", high=num_items, padding=True, unique=True,
                              of="a database of num_items={high} item(s)")  # fmt: skip
    if scores.numel() and bool((~torch.isfinite(scores) & (indices >= 0)).any()):
        raise ValueError(
            "scores contains NaN or infinite values at real entries (indices >= 0); only "
            "padding (index -1) may score -inf"
        )
    return indices


@checked(
    scores=Array(kind="number", nan=False, ndim=2),
    indices=Array(kind="int", ndim=2),
    logits=Array(kind="float", nan=False, ndim=2),
    lambda_value=Real(low=0, high=1),
    gamma=Real(low=0, low_open=True),
    num_items=Int(low=0, optional=True),
)
def rerank_shortlist(
    scores: Tensor,
    indices: Tensor,
    logits: Tensor,
    lambda_value: float = 0.5,
    gamma: float = 1.0,
    *,
    num_items: int | None = None,
) -> RerankResult:
    r"""Re-order the first :math:`M` entries of a ranking by the fused score, keep the rest.

    The first :math:`M` columns (:math:`M` = ``logits.shape[1]``) are sorted by
    :func:`fuse_scores`; the entries after them keep their first-stage order, and their scores
    are shifted down per query by the amount that puts them below every re-ranked score (so the
    scores stay sorted). Padding (index -1, logit :math:`-\infty`) goes last.

    Args:
        scores: :math:`(Q, K)` first-stage scores, best first.
        indices: :math:`(Q, K)` int64 database indices, -1 for padding.
        logits: :math:`(Q, M)` logits of the first :math:`M \le K` entries.
        lambda_value: :math:`\lambda` of :func:`fuse_scores`.
        gamma: :math:`\gamma` of :func:`fuse_scores`.
        num_items: The database size :math:`N`, if known: ids must then lie in
            :math:`[0, N)` (else below :math:`2^{32}`).

    Returns:
        :class:`~graphrerank.typing.RerankResult` ``(scores, indices)`` :math:`(Q, K)`.

    Raises:
        ValueError: shapes disagree, an id is below -1, out of range (``num_items``, or
            :math:`2^{32}` without it) or repeated within a row, a real entry scores NaN or
            :math:`\pm\infty`, or a logit is NaN.
        TypeError: an input is not a numeric array of the right kind (numpy arrays and
            lists are converted).

    Example:
        >>> s = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
        >>> i = torch.tensor([[3, 1, 2, 0]])
        >>> out = rerank_shortlist(s, i, torch.tensor([[-5.0, 5.0]]), lambda_value=0.0)
        >>> out.indices  # 1 and 3 swap; 2 and 0 follow in their first-stage order
        tensor([[1, 3, 2, 0]])
        >>> out.scores
        tensor([[ 0.9933,  0.0067,  0.0067, -0.0933]])
    """
    indices = _check_ranking(scores, indices, logits, num_items)
    return _rerank(scores, indices, logits, lambda_value, gamma)


def _rerank(
    scores: Tensor, indices: Tensor, logits: Tensor, lambda_value: float, gamma: float
) -> RerankResult:
    m = logits.shape[1]
    logits = logits.masked_fill(indices[:, :m] < 0, float("-inf"))
    fused = _fuse(scores[:, :m].to(logits.dtype), logits, lambda_value, gamma)
    rest = scores[:, m:].to(fused.dtype)
    if rest.shape[1]:
        # shift the rest below the lowest re-ranked score (a monotone map: its order is kept)
        low = fused.masked_fill(~torch.isfinite(fused), float("inf")).amin(1, keepdim=True)
        top_rest = rest[:, :1]
        ok = torch.isfinite(low) & torch.isfinite(top_rest) & (top_rest > low)
        shifted = torch.minimum(rest - top_rest + low, low)
        rest = torch.where(ok, shifted, rest)
    all_scores = torch.cat([fused, rest], dim=1)
    order = all_scores.argsort(dim=1, descending=True, stable=True)
    return RerankResult(all_scores.gather(1, order), indices.gather(1, order))


class FusionResult(NamedTuple):
    """Outcome of :func:`tune_fusion`.

    Attributes:
        lambda_value: The best :math:`\\lambda`.
        gamma: The best :math:`\\gamma`.
        map: The mAP (fraction) reached with them.
        grid: :math:`(|\\Lambda|, |\\Gamma|)` mAP of every pair tried (float64).
    """

    lambda_value: float
    gamma: float
    map: float
    grid: Tensor


@checked(
    scores=Array(kind="number", nan=False, ndim=2),
    indices=Array(kind="int", ndim=2),
    logits=Array(kind="float", nan=False, ndim=2),
    database_labels=Array(kind=None, ndim=1),
    query_labels=Array(kind=None, ndim=1, optional=True),
)
def tune_fusion(
    scores: Tensor,
    indices: Tensor,
    logits: Tensor,
    database_labels: Tensor,
    query_labels: Tensor | None = None,
    *,
    leave_one_out: bool = False,
    lambdas: Sequence[float] = LAMBDAS,
    gammas: Sequence[float] = GAMMAS,
) -> FusionResult:
    r"""Grid-search :math:`(\lambda, \gamma)` of :func:`fuse_scores` for the best class mAP.

    Each pair re-orders the shortlist with :func:`rerank_shortlist` and is scored with
    :func:`~graphrerank.metrics.class_map` over the whole ranking; ties go to the first pair in
    grid order (smaller :math:`\lambda`, then smaller :math:`\gamma`).

    Args:
        scores: :math:`(Q, K)` first-stage scores of a validation split, best first.
        indices: :math:`(Q, K)` their database indices.
        logits: :math:`(Q, M)` matching logits of the first :math:`M` entries.
        database_labels: :math:`(N,)` classes of the database (all-vs-all: :math:`N = Q`).
        query_labels: :math:`(Q,)` classes of the queries, or ``None`` for all-vs-all.
        leave_one_out: Ignore each query's own entry (all-vs-all).
        lambdas: Values of :math:`\lambda` to try, in :math:`[0, 1]`.
        gammas: Values of :math:`\gamma > 0` to try.

    Returns:
        :class:`FusionResult`.

    Raises:
        ValueError: as :func:`rerank_shortlist`; an id of ``indices`` has no label; the labels
            do not match the ranking's :math:`Q` rows (``query_labels``, or
            ``database_labels`` without them); a grid is empty or out of range.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> s = torch.tensor([[1.0, 0.9, 0.8, 0.1], [1.0, 0.9, 0.8, 0.1],
        ...                   [1.0, 0.9, 0.8, 0.1], [1.0, 0.9, 0.8, 0.1]])
        >>> i = torch.tensor([[0, 2, 1, 3], [1, 3, 0, 2], [2, 0, 3, 1], [3, 1, 2, 0]])
        >>> logit = torch.tensor([[5.0, -5.0, 5.0], [5.0, -5.0, 5.0],
        ...                       [5.0, -5.0, 5.0], [5.0, -5.0, 5.0]])
        >>> best = tune_fusion(s, i, logit, labels, leave_one_out=True,
        ...                    lambdas=[0.0, 1.0], gammas=[1.0])
        >>> best.lambda_value, best.map
        (0.0, 1.0)
    """
    from ..metrics import class_map

    lambdas = _real_grid(lambdas, "lambdas", low=0, high=1)
    gammas = _real_grid(gammas, "gammas", low=0, low_open=True)
    if not lambdas or not gammas:
        raise ValueError("lambdas and gammas must each hold at least one value")
    indices = _check_ranking(scores, indices, logits)
    n = database_labels.shape[0]
    if indices.numel() and int(indices.max()) >= n:
        raise ValueError(
            f"indices holds the id {int(indices.max())}, out of range for the {n} database_labels"
        )
    nq = scores.shape[0]
    if query_labels is None and n != nq:
        raise ValueError(
            f"database_labels has {n} entries but the ranking {nq} rows: without query_labels "
            "the search is all-vs-all and the queries are the database (one label per row)"
        )
    if query_labels is not None and query_labels.shape[0] != nq:
        raise ValueError(
            f"query_labels has {query_labels.shape[0]} entries but the ranking {nq} rows"
        )
    grid = torch.empty(len(lambdas), len(gammas), dtype=torch.float64)
    for a, lam in enumerate(lambdas):
        for b, gam in enumerate(gammas):
            out = _rerank(scores, indices, logits, lam, gam)
            grid[a, b] = class_map(
                out.indices, database_labels, query_labels, leave_one_out=leave_one_out
            )
    best = int(torch.nan_to_num(grid, nan=-1.0).flatten().argmax())
    a, b = divmod(best, len(gammas))
    return FusionResult(lambdas[a], gammas[b], float(grid[a, b]), grid)
