r"""Training-free local matching: chamfer similarity both ways, and mutual nearest neighbours.

Every function here scores a block of (query, candidate) pairs with **one** batched matrix
product: the cosines :math:`s_{ij} = \hat{\mathbf{q}}_i^\top \hat{\mathbf{x}}_j` of a query's
:math:`L_q` descriptors with all the :math:`W L_c` descriptors of its :math:`W` candidates
(:func:`torch.bmm` of :math:`(B, L_q, D)` by :math:`(B, D, W L_c)`), then reductions over that
block. These are the yardsticks a learned matcher has to beat.

With :math:`S \in [-1, 1]^{L_q \times L_c}` the cosines of query :math:`q` and candidate
:math:`x`:

* ``"chamfer"`` (query to database): :math:`\frac{1}{L_q} \sum_i \max_j S_{ij}`;
* ``"chamfer_db"`` (database to query): :math:`\frac{1}{L_c} \sum_j \max_i S_{ij}`;
* ``"chamfer_sym"``: the mean of the two;
* ``"mnn"``: the fraction :math:`\frac{1}{\min(L_q, L_c)} |\{(i, j) : j = \arg\max_{j'}
  S_{ij'},\ i = \arg\max_{i'} S_{i'j}\}|` of mutual nearest neighbours (ties go to the
  first index, as :func:`torch.argmax`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._checks import check_in, check_int
from .storage import StoredLocal, decode_local

__all__ = ["SIMILARITIES", "local_similarity", "shortlist_similarity"]

#: The training-free similarities of :func:`local_similarity`.
SIMILARITIES: tuple[str, ...] = ("chamfer", "chamfer_db", "chamfer_sym", "mnn")

Similarity = Literal["chamfer", "chamfer_db", "chamfer_sym", "mnn"]


def _reduce(sim: Tensor, kind: str) -> Tensor:
    """``(B, L_q, W, L_c)`` cosines -> ``(B, W)`` similarities of ``kind``."""
    if kind == "chamfer":
        return sim.amax(3).mean(1)
    if kind == "chamfer_db":
        return sim.amax(1).mean(2)
    if kind == "chamfer_sym":
        return 0.5 * (sim.amax(3).mean(1) + sim.amax(1).mean(2))
    # mutual nearest neighbours
    lq, lc = sim.shape[1], sim.shape[3]
    best_c = sim.argmax(3).transpose(1, 2)  # (B, W, L_q): the candidate's nn of query i
    best_q = sim.argmax(1)  # (B, W, L_c): the query's nn of candidate descriptor j
    back = best_q.gather(2, best_c)  # (B, W, L_q)
    mutual = back == torch.arange(lq, device=sim.device)
    return mutual.sum(2).to(sim.dtype) / min(lq, lc)


def local_similarity(query: Tensor, candidates: Tensor, kind: Similarity = "chamfer_sym") -> Tensor:
    r"""Training-free similarity of each query with each of its candidates.

    Args:
        query: :math:`(B, L_q, D)` local descriptors (normalised here).
        candidates: :math:`(B, W, L_c, D)` local descriptors of each query's candidates.
        kind: ``"chamfer"``, ``"chamfer_db"``, ``"chamfer_sym"`` or ``"mnn"`` (module
            docstring).

    Returns:
        :math:`(B, W)` similarities: cosines in :math:`[-1, 1]` for the chamfer forms, a
        fraction in :math:`[0, 1]` for ``"mnn"``; the dtype of the inputs.

    Raises:
        ValueError: an unknown ``kind``, or shapes that do not match.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> c = torch.tensor([[[[1.0, 0.0]], [[0.6, 0.8]]]])
        >>> local_similarity(q, c, "chamfer")
        tensor([[0.5000, 0.7000]])
        >>> local_similarity(q, c, "chamfer_db")  # the candidate's one vector finds its best
        tensor([[1.0000, 0.8000]])
        >>> local_similarity(q, c, "chamfer_sym")
        tensor([[0.7500, 0.7500]])
        >>> local_similarity(q, c, "mnn")
        tensor([[1., 1.]])
    """
    check_in(kind, "kind", SIMILARITIES)
    if query.dim() != 3 or candidates.dim() != 4:
        raise ValueError(
            f"query must be (B, L_q, D) and candidates (B, W, L_c, D), got {tuple(query.shape)} "
            f"and {tuple(candidates.shape)}"
        )
    b, w, lc, d = candidates.shape
    if query.shape[0] != b or query.shape[2] != d:
        raise ValueError(
            f"query {tuple(query.shape)} and candidates {tuple(candidates.shape)} must agree "
            "on B and D"
        )
    if w == 0 or b == 0:
        return query.new_empty(b, w)
    qn = torch.nn.functional.normalize(query, dim=-1)
    cn = torch.nn.functional.normalize(candidates.reshape(b, w * lc, d), dim=-1)
    sim = torch.bmm(qn, cn.transpose(1, 2)).view(b, query.shape[1], w, lc)
    return _reduce(sim, kind)


@torch.no_grad()
def shortlist_similarity(
    query_local: Tensor,
    database_local: Tensor | StoredLocal,
    shortlist: Tensor,
    kind: Similarity = "chamfer_sym",
    *,
    max_elements: int = 1 << 22,
) -> Tensor:
    r"""Training-free similarity of every query with the database images of its shortlist:
    :func:`local_similarity` over blocks of whole queries (each block one matrix product).

    Args:
        query_local: :math:`(Q, L_q, D)` float local descriptors of the queries.
        database_local: :math:`(N, L_d, D)` float local descriptors of the database, or a
            :class:`~graphrerank.models.StoredLocal` (decoded block by block).
        shortlist: :math:`(Q, M)` int64 database indices; ``-1`` is padding.
        kind: As in :func:`local_similarity`.
        max_elements: Bound on the gathered candidate descriptors and cosines of one block
            (floats); sets how many queries share a block. Queries of a block whose
            shortlists overlap (at most :math:`1.5 M` distinct candidates, as in all-vs-all
            search) are matched with all of the block's candidates in one product.

    Returns:
        :math:`(Q, M)` float32 similarities, ``-inf`` where ``shortlist`` is -1.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> db = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
        >>> shortlist_similarity(q, db, torch.tensor([[1, 0], [0, -1]]), "chamfer")
        tensor([[0.6000, 1.0000],
                [0.0000,   -inf]])
    """
    check_in(kind, "kind", SIMILARITIES)
    max_elements = check_int(max_elements, "max_elements", low=1)
    nq, m = shortlist.shape
    out = torch.full((nq, m), float("-inf"), dtype=torch.float32, device=shortlist.device)
    if nq == 0 or m == 0:
        return out
    stored = isinstance(database_local, StoredLocal)
    lq, d = query_local.shape[1], query_local.shape[2]
    ld = database_local.data.shape[1] if stored else database_local.shape[1]

    db_dtype = torch.float32 if stored else database_local.dtype
    dtype = torch.promote_types(query_local.dtype, db_dtype)

    def gather(rows: Tensor) -> Tensor:
        if stored:
            data = database_local.data[rows]
            out = decode_local(StoredLocal(data, database_local.storage, database_local.dim))
        else:
            out = database_local[rows]
        return out.to(dtype)

    per_query = m * ld * max(d, lq)
    chunk = max(1, max_elements // per_query)
    valid = shortlist >= 0
    qn = torch.nn.functional.normalize(query_local.to(dtype), dim=-1)
    for s in range(0, nq, chunk):
        rows = shortlist[s : s + chunk].clamp(min=0)
        b = rows.shape[0]
        uniq, inv = torch.unique(rows, return_inverse=True)
        if uniq.numel() <= m + m // 2:
            # the block's queries share their candidates (all-vs-all, overlapping shortlists):
            # one product of all the block's query descriptors with all its candidates'
            cand = torch.nn.functional.normalize(gather(uniq), dim=-1).reshape(-1, d)
            sim = (qn[s : s + b].reshape(b * lq, d) @ cand.T).view(b, lq, uniq.numel(), ld)
            sim = _reduce(sim, kind).gather(1, inv)
        else:
            cand = torch.nn.functional.normalize(gather(rows), dim=-1).reshape(b, m * ld, d)
            sim = torch.bmm(qn[s : s + b], cand.transpose(1, 2)).view(b, lq, m, ld)
            sim = _reduce(sim, kind)
        out[s : s + b] = sim.float().masked_fill(~valid[s : s + b], float("-inf"))
    return out
