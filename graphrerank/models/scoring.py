r"""Scoring a shortlist of database images with local descriptors: pairwise, list-wise, chamfer."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._checks import check_in, check_int
from .baselines import SIMILARITIES, Similarity, shortlist_similarity
from .matcher import LocalMatcher
from .storage import StoredLocal, decode_local

__all__ = ["chamfer_similarity", "score_shortlist", "sliding_windows"]

Mode = Literal["pairwise", "listwise"]


def chamfer_similarity(query: Tensor, candidates: Tensor) -> Tensor:
    r"""Training-free local matching: mean over the query's descriptors of the best cosine in
    the candidate.

    .. math::
        c(q, x) = \frac{1}{L_q} \sum_{i=1}^{L_q} \max_{j} \hat{\mathbf{q}}_i^\top \hat{\mathbf{x}}_j

    Args:
        query: :math:`(B, L_q, D)` local descriptors.
        candidates: :math:`(B, W, L_c, D)` local descriptors of each query's candidates.

    Returns:
        :math:`(B, W)` similarities in :math:`[-1, 1]`.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> c = torch.tensor([[[[1.0, 0.0]], [[0.6, 0.8]]]])
        >>> chamfer_similarity(q, c)
        tensor([[0.5000, 0.7000]])
    """
    qn = torch.nn.functional.normalize(query, dim=-1)
    cn = torch.nn.functional.normalize(candidates, dim=-1)
    sim = torch.einsum("bid,bwjd->bwij", qn, cn)
    return sim.amax(-1).mean(-1)


def sliding_windows(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    r"""``[start, end)`` windows of ``window`` items every ``stride`` over ``length`` items; the
    last window is aligned to the end so that every item is covered.

    Example:
        >>> sliding_windows(10, 4, 3)
        [(0, 4), (3, 7), (6, 10)]
        >>> sliding_windows(3, 4, 2)
        [(0, 3)]
    """
    length = check_int(length, "length", low=0)
    window = check_int(window, "window", low=1)
    stride = check_int(stride, "stride", low=1)
    if length <= window:
        return [(0, length)] if length else []
    out = [(s, s + window) for s in range(0, length - window + 1, stride)]
    if out[-1][1] < length:
        out.append((length - window, length))
    return out


def _gather(local: Tensor | StoredLocal, index: Tensor) -> Tensor:
    """Float descriptors of the images ``index`` (any shape) of a tensor or stored set."""
    if isinstance(local, StoredLocal):
        return decode_local(StoredLocal(local.data[index], local.storage, local.dim))
    return local[index]


def _scorer(model):
    return model.score


def _rows(t: Tensor | None, index: Tensor) -> Tensor | None:
    return None if t is None else t[index]


@torch.no_grad()
def score_shortlist(
    model: LocalMatcher | None,
    query_local: Tensor | StoredLocal,
    database_local: Tensor | StoredLocal,
    shortlist: Tensor,
    *,
    mode: Mode = "pairwise",
    window: int = 100,
    stride: int = 50,
    batch_size: int = 256,
    query_positions: Tensor | None = None,
    database_positions: Tensor | None = None,
    query_global: Tensor | None = None,
    database_global: Tensor | None = None,
    own_index: Tensor | None = None,
    similarity: Similarity = "chamfer",
) -> Tensor:
    r"""Matching logits of every query with each database image of its shortlist.

    * ``mode="pairwise"``: one graph per (query, candidate) pair, ``batch_size`` pairs per
      batch (RRT, AMES).
    * ``mode="listwise"``: one graph per query and window of ``window`` consecutive candidates,
      windows every ``stride`` over the shortlist (the last one aligned to its end; LOCORE). A
      candidate covered by several windows gets the **mean** of its logits.

    With ``model=None`` the logit is the training-free ``similarity`` of
    :func:`~graphrerank.models.local_similarity`, computed for blocks of whole queries with one
    matrix product each (:func:`~graphrerank.models.shortlist_similarity`; ``mode`` and the
    batch settings do not apply).

    Args:
        model: A :class:`LocalMatcher` (put in evaluation mode for the call), or ``None``.
        query_local: :math:`(Q, L_q, D)` local descriptors of the queries (a tensor or a
            :class:`~graphrerank.models.StoredLocal`).
        database_local: :math:`(N, L_d, D)` local descriptors of the database (a tensor or
            a :class:`~graphrerank.models.StoredLocal`, decoded batch by batch).
        shortlist: :math:`(Q, M)` int64 database indices; ``-1`` is skipped.
        mode: ``"pairwise"`` or ``"listwise"``.
        window: List-wise window size :math:`W`.
        stride: List-wise window stride.
        batch_size: Pairs (query, candidate) per graph batch.
        query_positions: :math:`(Q, L_q, 2)`, for models that use positions.
        database_positions: :math:`(N, L_d, 2)`.
        query_global: :math:`(Q, D_g)` global descriptors, for models that use them.
        database_global: :math:`(N, D_g)`.
        own_index: :math:`(Q,)` the database index of each query itself, or -1 (all-vs-all
            search): that entry is scored alone, as a window of one, so that a duplicate of the
            query does not take part in the other candidates' lists.
        similarity: With ``model=None``: ``"chamfer"`` (query to database, the default),
            ``"chamfer_db"``, ``"chamfer_sym"`` or ``"mnn"``.

    Returns:
        :math:`(Q, M)` logits, ``-inf`` where ``shortlist`` is -1.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> db = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
        >>> score_shortlist(None, q, db, torch.tensor([[1, 0], [0, -1]]))
        tensor([[0.6000, 1.0000],
                [0.0000,   -inf]])
    """
    check_in(mode, "mode", ("pairwise", "listwise"))
    check_in(similarity, "similarity", SIMILARITIES)
    batch_size = check_int(batch_size, "batch_size", low=1)
    window = check_int(window, "window", low=1)
    stride = check_int(stride, "stride", low=1)
    if model is None:
        if isinstance(query_local, StoredLocal):
            query_local = decode_local(query_local)
        return shortlist_similarity(query_local, database_local, shortlist, similarity)
    dev = shortlist.device
    nq, m = shortlist.shape
    out = torch.full((nq, m), float("-inf"), dtype=torch.float32, device=dev)
    if nq == 0 or m == 0:
        return out
    was_training = model.training
    model.eval()
    try:
        score = _scorer(model)
        use_pos = model.config["use_positions"]
        qpos = query_positions if use_pos else None
        dpos = database_positions if use_pos else None
        use_glob = model.config["global_dim"] is not None
        qg = query_global if use_glob else None
        dg = database_global if use_glob else None
        valid = shortlist >= 0
        alone = torch.zeros_like(valid)
        if own_index is not None:
            alone = valid & (shortlist == own_index.view(-1, 1)) & (own_index.view(-1, 1) >= 0)
        if mode == "pairwise":
            rows, cols = valid.nonzero(as_tuple=True)
        else:
            rows, cols = alone.nonzero(as_tuple=True)
        for s in range(0, rows.numel(), batch_size):
            r, c = rows[s : s + batch_size], cols[s : s + batch_size]
            idx = shortlist[r, c]
            logit = score(
                _gather(query_local, r),
                _gather(database_local, idx).unsqueeze(1),
                _rows(qpos, r),
                None if dpos is None else dpos[idx].unsqueeze(1),
                _rows(qg, r),
                None if dg is None else dg[idx].unsqueeze(1),
            )
            out[r, c] = logit.view(-1).float()
        if mode == "listwise":
            _listwise(score, out, query_local, database_local, shortlist, valid & ~alone,
                      window, stride, batch_size, (qpos, dpos, qg, dg))  # fmt: skip
    finally:
        model.train(was_training)
    return out


def _listwise(score, out, qloc, dloc, shortlist, keep, window, stride, batch_size, extras):
    """Fill ``out`` for the ``keep`` entries, queries grouped by their number of candidates."""
    counts = keep.sum(1)
    # positions of the kept entries, in shortlist order, packed to the left
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    for count in counts.unique().tolist():
        if count == 0:
            continue
        rows = (counts == count).nonzero().flatten()
        cols = order[rows, :count]  # (G, count) shortlist columns
        idx = shortlist[rows[:, None], cols]
        total = torch.zeros(rows.numel(), count, dtype=torch.float32, device=out.device)
        seen = torch.zeros(count, dtype=torch.float32, device=out.device)
        for start, end in sliding_windows(count, window, stride):
            w = end - start
            chunk = max(1, batch_size // w)
            for s in range(0, rows.numel(), chunk):
                r = rows[s : s + chunk]
                i = idx[s : s + chunk, start:end]
                qpos, dpos, qg, dg = extras
                logit = score(
                    _gather(qloc, r),
                    _gather(dloc, i),
                    _rows(qpos, r),
                    _rows(dpos, i),
                    _rows(qg, r),
                    _rows(dg, i),
                )
                total[s : s + chunk, start:end] += logit.float()
            seen[start:end] += 1
        out[rows[:, None], cols] = total / seen
