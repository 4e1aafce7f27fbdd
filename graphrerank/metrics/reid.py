r"""Person / object re-identification metrics: mAP, CMC and mINP under the Market-1501 rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import check_in, check_int, check_same_device
from ..typing import TensorLike
from ._validate import check_labels, check_ranking, follow
from .ap import INTERPOLATIONS, Interpolation, _average_precision, _positives

__all__ = ["ReIDResult", "reid_metrics"]


@dataclass(frozen=True)
class ReIDResult:
    r"""Re-ID scores; every value is a fraction in [0, 1].

    Attributes:
        map: Mean average precision over the valid queries.
        cmc: :math:`(\text{max\_rank},)` float64, ``cmc[r]``: fraction of valid queries whose
            first positive is within the first ``r + 1`` ranks.
        rank1: ``cmc[0]``, Rank-1 accuracy.
        rank5: Rank-5 accuracy.
        rank10: Rank-10 accuracy.
        minp: Mean inverse negative penalty.
        num_queries: Number of valid queries (with at least one positive).
        ap: :math:`(Q,)` float64 AP per query, NaN for the skipped queries.
        inp: :math:`(Q,)` float64 INP per query, NaN for the skipped queries.
    """

    map: float
    cmc: Tensor = field(repr=False)
    rank1: float
    rank5: float
    rank10: float
    minp: float
    num_queries: int
    ap: Tensor = field(repr=False)
    inp: Tensor = field(repr=False)

    def __str__(self) -> str:
        return (
            f"mAP {100 * self.map:.2f} | mINP {100 * self.minp:.2f} | "
            f"Rank-1 {100 * self.rank1:.2f} | Rank-5 {100 * self.rank5:.2f} | "
            f"Rank-10 {100 * self.rank10:.2f} ({self.num_queries} queries)"
        )


def reid_metrics(
    indices: TensorLike,
    query_ids: TensorLike,
    query_cams: TensorLike,
    gallery_ids: TensorLike,
    gallery_cams: TensorLike,
    *,
    max_rank: int = 50,
    interpolation: Interpolation = "step",
) -> ReIDResult:
    r"""mAP, CMC and mINP of re-identification rankings under the Market-1501 rule.

    For query :math:`q`, a gallery item :math:`g` is

    * junk (removed from the ranking) when :math:`\mathrm{id}_g = -1`, or when
      :math:`\mathrm{id}_g = \mathrm{id}_q` and :math:`\mathrm{cam}_g = \mathrm{cam}_q`
      (the same person seen by the same camera);
    * positive when :math:`\mathrm{id}_g = \mathrm{id}_q` otherwise;
    * negative else.

    A query without any positive in the gallery is skipped. With :math:`P` positives, junk
    removed, :math:`r_\text{first}` and :math:`r_\text{last}` the 1-based ranks of the first
    and the last positive:

    .. math::
        \mathrm{CMC}(r) = \frac{1}{|Q|}\sum_q [r_\text{first}(q) \le r], \qquad
        \mathrm{INP}(q) = \frac{P}{r_\text{last}(q)},

    and AP as in :func:`~graphrerank.metrics.average_precision`. On a truncated ranking a
    positive that was not retrieved is a miss: its AP term is 0, and a query whose last
    positive is not retrieved has INP 0.

    Args:
        indices: :math:`(Q, K)` ranked gallery indices, best first; ``-1`` is padding.
        query_ids: :math:`(Q,)` integer identities of the queries.
        query_cams: :math:`(Q,)` integer cameras of the queries.
        gallery_ids: :math:`(G,)` integer identities (``-1``: junk image).
        gallery_cams: :math:`(G,)` integer cameras.
        max_rank: Length of the returned CMC curve, at most :math:`\max(G, 50)` (the curve is
            constant beyond the gallery size :math:`G`).
        interpolation: AP form, ``"step"`` (torchreid / fast-reid, default) or ``"trapezoid"``.

    The label vectors may also be ``(1, n)`` or ``(n, 1)`` as stored in MATLAB files.

    Returns:
        :class:`ReIDResult` (``map``, ``cmc``, ``rank1``, ``rank5``, ``rank10``, ``minp``,
        ``num_queries``, per-query ``ap`` and ``inp``); ``str()`` gives a one-line summary.

    Raises:
        TypeError: non-integer inputs.
        ValueError: wrong or mismatched shapes, empty input, indices out of range, bad
            ``max_rank`` or ``interpolation``, inputs on different devices; no query has a
            positive (every mean would be over no query).

    Example:
        >>> indices = torch.tensor([[0, 1, 2, 3], [1, 3, 2, 0]])
        >>> ids, cams = torch.tensor([7, 8]), torch.tensor([0, 0])
        >>> g_ids, g_cams = torch.tensor([7, 8, 7, -1]), torch.tensor([0, 1, 1, 1])
        >>> result = reid_metrics(indices, ids, cams, g_ids, g_cams, max_rank=3)
        >>> result.map, result.rank1, result.minp
        (0.75, 0.5, 0.75)
        >>> result.cmc
        tensor([0.5000, 1.0000, 1.0000], dtype=torch.float64)
    """
    check_in(interpolation, "interpolation", INTERPOLATIONS)
    max_rank = check_int(max_rank, "max_rank", low=1)
    g_ids = check_labels(gallery_ids, "gallery_ids")
    g_cams = check_labels(gallery_cams, "gallery_cams", length=g_ids.shape[0], what="gallery_ids")
    idx = check_ranking(
        indices, "indices", num_items=g_ids.shape[0], what="gallery_ids", unique=True
    )
    nq = idx.shape[0]
    if max_rank > max(g_ids.shape[0], 50):  # the CMC is constant beyond the gallery size
        raise ValueError(
            f"max_rank={max_rank} is larger than the gallery ({g_ids.shape[0]} items) and than "
            "the default 50; the CMC curve is constant beyond the gallery size"
        )
    q_ids = check_labels(query_ids, "query_ids", length=nq, what="indices (rows)")
    q_cams = check_labels(query_cams, "query_cams", length=nq, what="indices (rows)")
    g_ids, g_cams = follow(gallery_ids, g_ids, idx.device), follow(gallery_cams, g_cams, idx.device)
    q_ids, q_cams = follow(query_ids, q_ids, idx.device), follow(query_cams, q_cams, idx.device)
    check_same_device(
        indices=idx, query_ids=q_ids, query_cams=q_cams, gallery_ids=g_ids, gallery_cams=g_cams
    )

    # Hits of each ranked item.
    padded = idx < 0
    safe = idx.clamp(min=0)
    rid, rcam = g_ids[safe], g_cams[safe]
    same_id = rid == q_ids[:, None]
    junk = padded | (rid == -1) | (same_id & (rcam == q_cams[:, None]))
    hits = same_id.to(torch.int8).masked_fill_(junk, -1)

    num_pos = _count_positives(q_ids, q_cams, g_ids, g_cams)
    valid = num_pos > 0
    nv = int(valid.sum())

    pos = _positives(hits)
    ap = _average_precision(hits, num_pos, interpolation, pos)
    first = pos.first
    all_found = pos.count == num_pos
    inp = torch.where(
        all_found & valid, num_pos.double() / pos.last.clamp(min=1).double(), torch.zeros_like(ap)
    )
    nan = torch.full_like(ap, float("nan"))
    ap = torch.where(valid, ap, nan)
    inp = torch.where(valid, inp, nan)

    if nv == 0:
        raise ValueError(
            f"no query has a positive: none of the {nq} queries' identities occurs in "
            "gallery_ids under another camera (same id and camera is junk), so there is "
            "nothing to average; check query_ids / gallery_ids and the cameras"
        )
    ranks = torch.arange(1, max_rank + 1, device=idx.device)
    fv = first[valid]
    cmc = (fv[:, None] <= ranks).double().mean(0)
    m, minp = float(ap[valid].mean()), float(inp[valid].mean())
    r1, r5, r10 = (float((fv <= r).double().mean()) for r in (1, 5, 10))
    return ReIDResult(
        map=m,
        cmc=cmc,
        rank1=r1,
        rank5=r5,
        rank10=r10,
        minp=minp,
        num_queries=nv,
        ap=ap,
        inp=inp,
    )


def _count_positives(q_ids: Tensor, q_cams: Tensor, g_ids: Tensor, g_cams: Tensor) -> Tensor:
    """Positives of each query in the whole gallery, without a (Q, G) matrix.

    Gallery items of the query's id, minus those of its id and camera; id -1 never counts.
    """
    # Compact codes for ids and for (id, cam) pairs, shared by queries and gallery.
    ids = torch.cat([q_ids, g_ids])
    pairs = torch.stack([ids, torch.cat([q_cams, g_cams])], 1)
    _, id_code = torch.unique(ids, return_inverse=True)
    _, pair_code = torch.unique(pairs, dim=0, return_inverse=True)
    nq = q_ids.shape[0]
    keep = g_ids != -1
    n_id = torch.bincount(id_code[nq:][keep], minlength=int(id_code.max()) + 1)
    n_pair = torch.bincount(pair_code[nq:][keep], minlength=int(pair_code.max()) + 1)
    return n_id[id_code[:nq]] - n_pair[pair_code[:nq]]
