r"""Average precision of ranked lists, in its two usual forms.

A ranked list is described by its *hits*: ``1`` for a positive, ``0`` for a negative and ``-1``
for a junk item. Junk items are removed from the ranking before anything is computed, so they
move every later item one rank up.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .._checks import check_in, check_int, check_same_device
from ..typing import TensorLike
from ._validate import _is_integer, as_array, check_ranking, follow

__all__ = ["INTERPOLATIONS", "average_precision", "hits_from_relevance", "rank_by_scores"]

Interpolation = Literal["step", "trapezoid"]

#: The two average-precision forms accepted by every metric that computes AP.
INTERPOLATIONS: tuple[str, ...] = ("step", "trapezoid")


def average_precision(
    hits: TensorLike,
    num_positives: TensorLike,
    *,
    interpolation: Interpolation,
) -> Tensor:
    r"""Average precision of each ranked list.

    Junk entries (``-1``) are removed first. Let :math:`P` be the number of positives of the
    query (``num_positives``) and let the retrieved positives, in rank order, have index
    :math:`j = 0, 1, \dots` among the positives and 0-based rank :math:`r_j` in the ranking
    without junk. Then

    .. math::
        \text{step:}\quad
        \mathrm{AP} = \frac{1}{P} \sum_j \frac{j + 1}{r_j + 1},
        \qquad
        \text{trapezoid:}\quad
        \mathrm{AP} = \frac{1}{P} \sum_j \frac{1}{2}
        \Bigl(\frac{j}{r_j} + \frac{j + 1}{r_j + 1}\Bigr),

    where :math:`j / r_j` is taken as 1 when :math:`r_j = 0`. ``"step"`` is the
    non-interpolated AP (the area under the precision-recall step curve, as scikit-learn,
    torchmetrics and most re-ID code compute it); ``"trapezoid"`` averages the precisions just
    before and at each positive, as the revisited Oxford/Paris evaluation does. Positives that
    are not in ``hits`` (e.g. beyond a truncated ranking) count as never retrieved.

    Args:
        hits: :math:`(Q, K)` integer (or boolean) array in rank order: 1 positive, 0 negative,
            -1 junk (ignored).
        num_positives: :math:`(Q,)` integer, the total number of positives of each query; at
            least the number of 1s in its row of ``hits``.
        interpolation: ``"step"`` or ``"trapezoid"`` (required: the two differ by several
            points on short rankings, so the choice must be explicit).

    Returns:
        :math:`(Q,)` float64 on the device of ``hits``; NaN where ``num_positives`` is 0.

    Raises:
        TypeError: ``hits`` or ``num_positives`` are not integer arrays.
        ValueError: wrong shapes, empty input, values of ``hits`` outside ``{-1, 0, 1}``,
            ``num_positives`` smaller than the positives in ``hits``, different devices, or an
            unknown ``interpolation``.

    Example:
        >>> hits = torch.tensor([[1, 0, 1, 0], [0, -1, 1, 0]])
        >>> average_precision(hits, torch.tensor([2, 2]), interpolation="step")
        tensor([0.8333, 0.2500], dtype=torch.float64)
        >>> average_precision(hits, torch.tensor([2, 2]), interpolation="trapezoid")
        tensor([0.7917, 0.1250], dtype=torch.float64)
    """
    check_in(interpolation, "interpolation", INTERPOLATIONS)
    h = as_array(hits, "hits")
    if h.dim() != 2:
        raise ValueError(f"hits must be a 2-D (num_queries, k) array, got shape {tuple(h.shape)}")
    if h.shape[0] == 0 or h.shape[1] == 0:
        raise ValueError(f"hits is empty: shape {tuple(h.shape)}")
    if h.dtype == torch.bool:
        h = h.to(torch.int8)
    elif not _is_integer(h):
        raise TypeError(f"hits must hold integers (1, 0, -1), got dtype {h.dtype}")
    bad = (h < -1) | (h > 1)
    if bool(bad.any()):
        raise ValueError(
            f"hits must hold only 1 (positive), 0 (negative) or -1 (junk), got {int(h[bad][0])}"
        )
    p = as_array(num_positives, "num_positives")
    if p.dim() != 1 or p.shape[0] != h.shape[0]:
        raise ValueError(
            f"num_positives must have shape ({h.shape[0]},) (one count per row of hits), got "
            f"shape {tuple(p.shape)}"
        )
    if not _is_integer(p):
        raise TypeError(f"num_positives must hold integer counts, got dtype {p.dtype}")
    p = follow(num_positives, p, h.device)
    check_same_device(hits=h, num_positives=p)
    if bool((p < 0).any()):
        q = int((p < 0).nonzero()[0])
        raise ValueError(f"num_positives must be >= 0, got num_positives[{q}]={int(p[q])}")
    retrieved = (h == 1).sum(1)
    short = p < retrieved
    if bool(short.any()):
        q = int(short.nonzero()[0])
        raise ValueError(
            f"num_positives[{q}]={int(p[q])} is smaller than the {int(retrieved[q])} positives "
            f"in row {q} of hits"
        )
    return _average_precision(h, p, interpolation)


def hits_from_relevance(indices: TensorLike, relevance: TensorLike) -> Tensor:
    r"""Read the relevance of each ranked item: ``hits[q, i] = relevance[q, indices[q, i]]``.

    Padding (``indices == -1``, from approximate search that found fewer than :math:`K`
    results) becomes junk (-1): it is nothing retrieved, so it must not take a rank.

    Args:
        indices: :math:`(Q, K)` ranked database indices, ``-1`` for padding.
        relevance: :math:`(Q, N)` integer (or boolean) relevance of every database item for
            every query: 1 positive, 0 negative, -1 junk.

    Returns:
        :math:`(Q, K)` int8 hits for :func:`average_precision`.

    Raises:
        TypeError: non-integer inputs.
        ValueError: wrong or mismatched shapes, empty input, indices out of ``[-1, N)``,
            relevance values outside ``{-1, 0, 1}``, different devices.

    Example:
        >>> rel = torch.tensor([[0, 1, -1, 1]])
        >>> hits_from_relevance(torch.tensor([[3, 2, 0, -1]]), rel)
        tensor([[ 1, -1,  0, -1]], dtype=torch.int8)
    """
    rel = as_array(relevance, "relevance")
    if rel.dim() != 2:
        raise ValueError(
            f"relevance must be a 2-D (num_queries, num_database) array, got shape "
            f"{tuple(rel.shape)}"
        )
    if rel.dtype == torch.bool:
        rel = rel.to(torch.int8)
    elif not _is_integer(rel):
        raise TypeError(f"relevance must hold integers (1, 0, -1), got dtype {rel.dtype}")
    if rel.numel() and bool(((rel < -1) | (rel > 1)).any()):
        bad = rel[(rel < -1) | (rel > 1)][0]
        raise ValueError(f"relevance must hold only 1, 0 or -1, got {int(bad)}")
    idx = check_ranking(indices, "indices", num_items=rel.shape[1], what="relevance (columns)")
    if idx.shape[0] != rel.shape[0]:
        raise ValueError(
            f"indices has {idx.shape[0]} rows (queries) but relevance has {rel.shape[0]}"
        )
    if isinstance(relevance, Tensor):
        idx = follow(indices, idx, rel.device)
    else:
        rel = follow(relevance, rel, idx.device)
    check_same_device(indices=idx, relevance=rel)
    out = rel.gather(1, idx.clamp(min=0)).to(torch.int8)
    return out.masked_fill_(idx < 0, -1)


def rank_by_scores(scores: TensorLike, k: int | None = None) -> Tensor:
    r"""Database indices sorted by descending score, ties broken by the lower index.

    .. math::
        \text{indices}[q, i] = \operatorname{argsort}_{\downarrow}(\text{scores}[q])_i,
        \quad i < k.

    Args:
        scores: :math:`(Q, N)` floating point similarities, higher is better (``-inf``
            allowed, NaN refused).
        k: Length of each ranking, ``1 <= k <= N``; ``None`` for the full ranking.

    Returns:
        :math:`(Q, k)` int64 indices on the device of ``scores``.

    Raises:
        TypeError: ``scores`` is not floating point, ``k`` is not an integer.
        ValueError: ``scores`` is not 2-D, is empty or has NaN; ``k`` out of range.

    Example:
        >>> rank_by_scores(torch.tensor([[0.1, 0.9, 0.5, 0.9]]), k=3)
        tensor([[1, 3, 2]])
    """
    s = as_array(scores, "scores")
    if not s.is_floating_point():
        raise TypeError(f"scores must be floating point, got dtype {s.dtype}")
    if s.dim() != 2:
        raise ValueError(
            f"scores must be a 2-D (num_queries, num_database) array, got shape {tuple(s.shape)}"
        )
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores is empty: shape {tuple(s.shape)}")
    if bool(s.isnan().any()):
        row = int(s.isnan().any(1).nonzero()[0])
        raise ValueError(f"scores contains NaN (first in row {row})")
    n = s.shape[1]
    k = n if k is None else check_int(k, "k", low=1, high=n)
    return torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]


# ---------------------------------------------------------------------- internals
class _Positives(NamedTuple):
    """The retrieved positives of a batch of ranked lists, junk removed (all 1-based).

    ``query``, ``rank``, ``nth`` have one entry per retrieved positive, in rank order within
    each query; ``count``, ``first`` and ``last`` one per query.
    """

    query: Tensor  # (M,) int64, the row
    rank: Tensor  # (M,) int64, rank in the list without junk
    nth: Tensor  # (M,) int64, index among the retrieved positives of the row
    count: Tensor  # (Q,) int64, retrieved positives per row
    first: Tensor  # (Q,) int64, rank of the first positive; a value > K where there is none
    last: Tensor  # (Q,) int64, rank of the last positive; 0 where there is none


def _positives(hits: Tensor) -> _Positives:
    """Locate the retrieved positives: two passes over ``hits`` (Q, K), the rest is O(M)."""
    nq, k = hits.shape
    rank_all = (hits >= 0).cumsum(1, dtype=torch.int32)
    query, col = (hits == 1).nonzero(as_tuple=True)  # row-major: rank order within a row
    rank = rank_all[query, col].long()
    count = torch.bincount(query, minlength=nq)
    start = count.cumsum(0) - count
    nth = torch.arange(query.shape[0], device=hits.device) - start[query] + 1
    first = torch.full((nq,), k + 1, dtype=torch.long, device=hits.device)
    first.scatter_reduce_(0, query, rank, reduce="amin")
    last = torch.zeros(nq, dtype=torch.long, device=hits.device)
    last.scatter_reduce_(0, query, rank, reduce="amax")
    return _Positives(query, rank, nth, count, first, last)


def _average_precision(
    hits: Tensor, num_positives: Tensor, interpolation: str, pos: _Positives | None = None
) -> Tensor:
    """AP without validation: ``hits`` (Q, K) with values in {-1, 0, 1}.

    Only the retrieved positives are visited (the float work is O(number of positives), not
    O(Q K)); each adds its precision to its query's sum.
    """
    if pos is None:
        pos = _positives(hits)
    r, j = pos.rank.double(), pos.nth.double()
    prec = j / r
    if interpolation == "trapezoid":
        before = torch.where(r > 1, (j - 1) / (r - 1).clamp(min=1), torch.ones_like(r))
        prec = (before + prec) / 2
    total = torch.zeros(hits.shape[0], dtype=torch.float64, device=hits.device)
    total.index_add_(0, pos.query, prec)
    p = num_positives.to(total.dtype)
    return torch.where(p > 0, total / p.clamp(min=1), torch.full_like(total, float("nan")))
