r"""Scoring a shortlist of database images with local descriptors: pairwise, list-wise, chamfer."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._checks import Array, Check, Int, OneOf, Ref, check_index, check_int, check_tensor, checked
from .baselines import SIMILARITIES, Similarity, shortlist_similarity
from .matcher import EncodedLocal, LocalMatcher
from .storage import StoredLocal, decode_local

__all__ = ["chamfer_similarity", "score_shortlist", "sliding_windows"]

Mode = Literal["pairwise", "listwise"]

#: The most windows :func:`sliding_windows` makes (a list this long already takes gigabytes).
MAX_WINDOWS = 10**7


def _local(value: Tensor | StoredLocal, name: str, *, finite: bool = True) -> Tensor | StoredLocal:
    """A ``(N, L, D)`` local descriptor set: a float tensor (numpy converted; finite unless
    ``finite=False``) or a :class:`StoredLocal`, passed on."""
    if isinstance(value, StoredLocal):
        return value
    return check_tensor(value, name, ndim=3, finite=finite)


def _num_items(local: Tensor | StoredLocal) -> int:
    return int(local.data.shape[0] if isinstance(local, StoredLocal) else local.shape[0])


def _dim(local: Tensor | StoredLocal) -> int:
    return int(local.dim if isinstance(local, StoredLocal) else local.shape[-1])


def _shortlist(value: Tensor, name: str, *, database: Tensor | StoredLocal) -> Tensor:
    """``(Q, M)`` ids of ``database`` images (``-1`` padding)."""
    n = _num_items(database)
    try:
        return check_index(value, name, high=n, ndim=2, padding=True)
    except ValueError as err:
        if "out of range" not in str(err):
            raise
        raise ValueError(f"{err} (database_local holds {n} image(s))") from None


def _check_shortlisted(database: Tensor | StoredLocal, ids: Tensor) -> None:
    """The images ``ids`` names must hold finite descriptors (checked a block at a time, only
    those rows)."""
    if not isinstance(database, StoredLocal) and ids.numel():
        rows = ids[ids >= 0].unique()
        per = max(1, (16 * 2**20) // max(1, database[0].numel())) if rows.numel() else 1
        for s in range(0, rows.numel(), per):
            block = database[rows[s : s + per]]
            if block.is_floating_point() and not bool(torch.isfinite(block).all()):
                raise ValueError(
                    "database_local contains NaN or infinite values in images of the shortlist"
                )


def _model(value: object, name: str) -> LocalMatcher | None:
    if value is not None and not isinstance(value, LocalMatcher):
        raise TypeError(
            f"{name} must be a graphrerank.models.LocalMatcher or None, got {type(value).__name__}"
        )
    return value


@checked(
    query=Array(ndim=3, finite=True),
    candidates=Array(ndim=4, finite=True),
)
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

    Raises:
        ValueError: a shape is wrong, the two disagree in :math:`B` or :math:`D`, a set is
            empty, or an input holds NaN or infinite values.
        TypeError: an input is not a float array (numpy arrays and lists are converted).

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> c = torch.tensor([[[[1.0, 0.0]], [[0.6, 0.8]]]])
        >>> chamfer_similarity(q, c)
        tensor([[0.5000, 0.7000]])
    """
    if candidates.shape[0] != query.shape[0] or candidates.shape[3] != query.shape[2]:
        raise ValueError(
            f"candidates {tuple(candidates.shape)} must match query {tuple(query.shape)} in "
            "the number of queries B and the dimension D"
        )
    if query.shape[1] == 0 or candidates.shape[2] == 0 or query.shape[2] == 0:
        raise ValueError(
            f"query {tuple(query.shape)} and candidates {tuple(candidates.shape)} must hold at "
            "least one descriptor per image"
        )
    dtype = torch.promote_types(query.dtype, candidates.dtype)
    qn = torch.nn.functional.normalize(query.to(dtype), dim=-1)
    cn = torch.nn.functional.normalize(candidates.to(dtype), dim=-1)
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
    count = (length - window) // stride + 2
    if count > MAX_WINDOWS:
        raise ValueError(
            f"length={length}, window={window} and stride={stride} would make about {count} "
            f"windows, more than the {MAX_WINDOWS} allowed; use a larger window or stride"
        )
    out = [(s, s + window) for s in range(0, length - window + 1, stride)]
    if out[-1][1] < length:
        out.append((length - window, length))
    return out


def _gather(local: Tensor | StoredLocal, index: Tensor) -> Tensor:
    """Float descriptors of the images ``index`` (any shape) of a tensor or stored set."""
    if isinstance(local, StoredLocal):
        return decode_local(StoredLocal(local.data[index], local.storage, local.dim))
    return local[index]


def _rows(t: Tensor | None, index: Tensor) -> Tensor | None:
    return None if t is None else t[index]


def _encode_rows(model, local, rows, role, positions, glob, block=512) -> EncodedLocal:
    """:meth:`LocalMatcher.encode` of the images ``rows`` of ``local``, a block at a time."""
    parts = []
    for s in range(0, rows.numel(), block):
        r = rows[s : s + block]
        parts.append(
            model.encode(
                _gather(local, r),
                role=role,
                positions=_rows(positions, r),
                global_=_rows(glob, r),
            )
        )
    if len(parts) == 1:
        return parts[0]
    return EncodedLocal(*(None if f[0] is None else torch.cat(f) for f in zip(*parts)))


def _scorer(model, query_local, database_local, shortlist, extras, database_encoded):
    """``score(rows, ids)``: logits :math:`(B, W)` of the queries ``rows`` :math:`(B,)` with
    the database images ``ids`` :math:`(B, W)`."""
    qpos, dpos, qg, dg = extras
    if model.config["design"] != "late" or type(model).score is not LocalMatcher.score:
        # the joint design (or a subclass with its own score): graphs of the gathered images

        def score(r, i):
            return model.score(
                _gather(query_local, r),
                _gather(database_local, i),
                _rows(qpos, r),
                _rows(dpos, i),
                _rows(qg, r),
                _rows(dg, i),
            )

        return score
    # late design: each batch encodes its queries (once for all their candidates) and, without
    # a cached database, its candidates; the pairs only run the cross attention and readout

    def score(r, i):
        w = i.shape[1]
        if bool((r == r[0]).all()):  # one query for the whole batch: shared, one product
            q = _encode_rows(model, query_local, r[:1], 0, qpos, qg)
        else:
            rows, inv = r.unique(return_inverse=True)
            q = _encode_rows(model, query_local, rows, 0, qpos, qg)[inv]
        if database_encoded is not None:
            c = database_encoded[i.reshape(-1)]
        else:
            ids, inv = i.reshape(-1).unique(return_inverse=True)
            c = _encode_rows(model, database_local, ids, 1, dpos, dg)[inv]
        return model.match(q, c, w)

    return score


@torch.no_grad()
@checked(
    model=Check(_model),
    mode=OneOf(("pairwise", "listwise")),
    similarity=OneOf(SIMILARITIES),
    batch_size=Int(low=1),
    window=Int(low=1),
    stride=Int(low=1),
    query_local=Check(_local),
    database_local=Check(_local, finite=False),
    shortlist=Check(_shortlist, database=Ref("database_local")),
    own_index=Array(kind="int", ndim=1, optional=True),
)
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
    database_encoded: EncodedLocal | None = None,
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
        database_encoded: For a ``design="late"`` model, the whole database encoded once
            (:meth:`LocalMatcher.encode` with ``role=1``, as
            :class:`~graphrerank.rerankers.LocalDescriptorReranker` caches it); without it the
            images of the shortlist are encoded in the call. Each query is encoded once and
            scored against ``batch_size`` candidates per dense batched pass
            (:meth:`LocalMatcher.match`).

    Returns:
        :math:`(Q, M)` logits, ``-inf`` where ``shortlist`` is -1.

    Raises:
        ValueError: a shape is wrong or disagrees with another (:math:`Q`, :math:`D`), an id
            of ``shortlist`` is out of range, or ``query_local`` (or an image of
            ``database_local`` that the shortlist names) holds NaN or infinite values.
        TypeError: ``model`` is not a :class:`LocalMatcher` or ``None``, or an input is not
            an array of the right kind (numpy arrays and lists are converted).

    Example:
        >>> q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> db = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
        >>> score_shortlist(None, q, db, torch.tensor([[1, 0], [0, -1]]))
        tensor([[0.6000, 1.0000],
                [0.0000,   -inf]])
    """
    nq = _num_items(query_local)
    if shortlist.shape[0] != nq:
        raise ValueError(
            f"shortlist has {shortlist.shape[0]} row(s) but query_local holds {nq} queries"
        )
    if _dim(query_local) != _dim(database_local):
        raise ValueError(
            f"query_local has descriptors of dimension {_dim(query_local)} but database_local "
            f"of dimension {_dim(database_local)}"
        )
    if own_index is not None and own_index.shape[0] != nq:
        raise ValueError(f"own_index must have shape ({nq},), got {tuple(own_index.shape)}")
    if database_encoded is None or model is None or model.config["design"] != "late":
        # with a cached database the descriptors are not read (the states are, and their
        # logits are checked below): no scan of the shortlisted images per call then
        _check_shortlisted(database_local, shortlist)
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
        use_pos = model.config["use_positions"]
        qpos = query_positions if use_pos else None
        dpos = database_positions if use_pos else None
        use_glob = model.config["global_dim"] is not None
        qg = query_global if use_glob else None
        dg = database_global if use_glob else None
        if database_encoded is not None:
            if not isinstance(database_encoded, EncodedLocal):
                raise TypeError(
                    "database_encoded must be a graphrerank.models.EncodedLocal or None, got "
                    f"{type(database_encoded).__name__}"
                )
            if database_encoded.num_images != _num_items(database_local):
                raise ValueError(
                    f"database_encoded holds {database_encoded.num_images} image(s) but "
                    f"database_local {_num_items(database_local)}"
                )
            if model.config["design"] != "late":
                database_encoded = None
        score = _scorer(model, query_local, database_local, shortlist, (qpos, dpos, qg, dg),
                        database_encoded)  # fmt: skip
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
            out[r, c] = score(r, idx.unsqueeze(1)).reshape(-1).float()
        if mode == "listwise":
            _listwise(score, out, shortlist, valid & ~alone, window, stride, batch_size)
        if database_encoded is not None and not bool(torch.isfinite(out[valid]).all()):
            raise ValueError(
                "database_encoded holds NaN or infinite states for images of the shortlist "
                "(encoded from non-finite descriptors?)"
            )
    finally:
        model.train(was_training)
    return out


def _listwise(score, out, shortlist, keep, window, stride, batch_size):
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
                total[s : s + chunk, start:end] += score(r, i).float()
            seen[start:end] += 1
        out[rows[:, None], cols] = total / seen
