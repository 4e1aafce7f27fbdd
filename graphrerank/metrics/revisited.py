r"""The revisited Oxford and Paris protocol (Radenović et al., CVPR 2018).

Each query of :math:`\mathcal{R}`\ Oxford / :math:`\mathcal{R}`\ Paris has ``easy``, ``hard``
and ``junk`` database images. Three protocols score the same ranking:

========  =================  ======================
protocol  positives          ignored (junk)
========  =================  ======================
Easy      ``easy``           ``junk`` + ``hard``
Medium    ``easy`` + ``hard``  ``junk``
Hard      ``hard``           ``junk`` + ``easy``
========  =================  ======================

Scores follow the benchmark's own evaluation: interpolated (trapezoid) AP with junk removed from
the ranking first, and mP@k capped at the rank of the last positive. A query with no positive in
a protocol is left out of that protocol's means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._checks import check_in, check_int
from ..typing import TensorLike
from ._validate import _is_integer, as_array, check_ks, check_ranking
from .ap import _average_precision, _positives

__all__ = [
    "PROTOCOLS",
    "ProtocolResult",
    "RevisitedResult",
    "ranks_from_cirtorch",
    "relevance_from_gnd",
    "revisited_map",
]

Protocol = Literal["easy", "medium", "hard"]

#: Positive and junk keys of the ground truth for each protocol.
PROTOCOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


@dataclass(frozen=True)
class ProtocolResult:
    """Scores of one protocol (Easy, Medium or Hard); all values are fractions in [0, 1].

    Attributes:
        map: Mean AP over the queries with at least one positive; NaN (with
            ``num_queries == 0``) for a protocol under which no query has a positive (e.g.
            Easy when the ground truth lists only hard images).
        mp_at_k: ``{kappa: mean precision at kappa}`` over the same queries.
        ap: :math:`(Q,)` float64 AP of every query, NaN for the queries left out.
        precision: :math:`(Q, len(kappas))` float64 precision at each kappa, NaN rows for the
            queries left out.
        num_queries: Number of queries with at least one positive.
    """

    map: float
    mp_at_k: dict[int, float]
    ap: Tensor = field(repr=False)
    precision: Tensor = field(repr=False)
    num_queries: int


@dataclass(frozen=True)
class RevisitedResult:
    """Easy, Medium and Hard scores of a revisited Oxford/Paris evaluation.

    ``result.medium.map`` or ``result["medium"].map``; ``str(result)`` is a compact table in
    percent. ``kappas`` are the cut-offs of ``mp_at_k``.
    """

    easy: ProtocolResult
    medium: ProtocolResult
    hard: ProtocolResult
    kappas: tuple[int, ...]

    def __getitem__(self, protocol: str) -> ProtocolResult:
        check_in(protocol, "protocol", tuple(PROTOCOLS))
        return getattr(self, protocol)

    def __str__(self) -> str:
        cols = (self.easy, self.medium, self.hard)
        rows = [("mAP", [c.map for c in cols])]
        rows += [(f"mP@{k}", [c.mp_at_k[k] for c in cols]) for k in self.kappas]
        width = max(len(name) for name, _ in rows)
        lines = [" " * width + "".join(f"{h:>8}" for h in ("E", "M", "H"))]
        for name, vals in rows:
            lines.append(f"{name:<{width}}" + "".join(f"{100 * v:8.2f}" for v in vals))
        return "\n".join(lines)


def _gnd_list(gnd: Any) -> tuple[Sequence[Mapping[str, Any]], int | None]:
    """The per-query list; the whole pickled benchmark dict is accepted too."""
    n = None
    if isinstance(gnd, Mapping) and "gnd" in gnd:
        if "imlist" in gnd:
            n = len(gnd["imlist"])
        gnd = gnd["gnd"]
    if isinstance(gnd, (str, bytes, Mapping)) or not isinstance(gnd, Sequence):
        raise TypeError(
            f"gnd must be the list of per-query dicts of a revisitop gnd_*.pkl file, got "
            f"{type(gnd).__name__}"
        )
    if len(gnd) == 0:
        raise ValueError("gnd is empty: it has no queries")
    for i, q in enumerate(gnd):
        if not isinstance(q, Mapping):
            raise TypeError(f"gnd[{i}] must be a dict, got {type(q).__name__}")
        missing = [key for key in ("easy", "hard", "junk") if key not in q]
        if missing:
            raise ValueError(f"gnd[{i}] has no key(s) {missing}; it has {sorted(q)}")
    return gnd, n


def _gnd_indices(q: Mapping[str, Any], key: str, i: int) -> np.ndarray:
    value = q[key]
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.device.type == "meta":
            raise TypeError(
                f"gnd[{i}][{key!r}] must be a list or array of indices, got a "
                f"{value.layout} tensor on {value.device}"
            )
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value).reshape(-1)
    except (TypeError, ValueError) as err:
        raise TypeError(f"gnd[{i}][{key!r}] must be a list or array of indices: {err}") from None
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"gnd[{i}][{key!r}] must hold integer indices, got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.integer):
        finite = np.issubdtype(a.dtype, np.floating) and bool(np.isfinite(a).all())
        if finite and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"gnd[{i}][{key!r}] must hold integer indices, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _gnd_max(gnd: Sequence[Mapping[str, Any]]) -> int:
    top = -1
    for i, q in enumerate(gnd):
        for key in ("easy", "hard", "junk"):
            a = _gnd_indices(q, key, i)
            if a.size:
                top = max(top, int(a.max()))
    return top


def relevance_from_gnd(
    gnd: Sequence[Mapping[str, Any]],
    num_database: int,
    protocol: Protocol,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Dense relevance of every database image for every query under one protocol.

    .. math::
        R_{qn} = \begin{cases} 1 & n \in \text{positives}(q) \\
        -1 & n \in \text{junk}(q) \setminus \text{positives}(q) \\ 0 & \text{otherwise}
        \end{cases}

    with positives and junk of the protocol as in :data:`PROTOCOLS`.

    Args:
        gnd: The per-query dicts of a revisitop ``gnd_*.pkl`` file (keys ``easy``, ``hard``,
            ``junk``; 0-based database indices, lists or arrays), or the whole pickled dict.
        num_database: Database size :math:`N`.
        protocol: ``"easy"``, ``"medium"`` or ``"hard"``.
        device: Where to create the result (default CPU).

    Returns:
        :math:`(Q, N)` int8 with 1 positive, 0 negative, -1 junk.

    Raises:
        TypeError: ``gnd`` is not a list of dicts or holds non-integer indices.
        ValueError: unknown ``protocol``, missing keys, indices outside ``[0, N)``.

    Example:
        >>> gnd = [{"easy": [0], "hard": [2], "junk": [3]}]
        >>> relevance_from_gnd(gnd, 5, "medium")
        tensor([[ 1,  0,  1, -1,  0]], dtype=torch.int8)
        >>> relevance_from_gnd(gnd, 5, "hard")
        tensor([[-1,  0,  1, -1,  0]], dtype=torch.int8)
    """
    check_in(protocol, "protocol", tuple(PROTOCOLS))
    gnd, _ = _gnd_list(gnd)
    num_database = check_int(num_database, "num_database", low=1)
    if len(gnd) * num_database > _DENSE_LIMIT:
        raise ValueError(
            f"num_database={num_database} with {len(gnd)} queries would need a dense "
            f"({len(gnd)}, {num_database}) relevance matrix of more than {_DENSE_LIMIT:,} "
            "entries; pass the real database size (revisited_map needs no dense matrix)"
        )
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a torch.device or a string, got {device!r}")
    try:
        device = torch.device("cpu") if device is None else torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not a valid device: {err}") from None
    codes = _gnd_codes(gnd, num_database, device)
    return _relevance_of_codes(codes, protocol)


#: Largest dense (Q, N) relevance matrix :func:`relevance_from_gnd` builds.
_DENSE_LIMIT = 2**32

#: Bit of each ground-truth list in the per-image codes of :func:`_gnd_codes`.
_BITS = {"easy": 1, "hard": 2, "junk": 4}


def _relevance_of_codes(codes: Tensor, protocol: str) -> Tensor:
    """Relevance (int8 1 / 0 / -1) of codes under ``protocol``; a positive bit wins over junk."""
    pos_keys, junk_keys = PROTOCOLS[protocol]
    pos = (codes & sum(_BITS[k] for k in pos_keys)) != 0
    junk = (codes & sum(_BITS[k] for k in junk_keys)) != 0
    return pos.to(torch.int8) - (junk & ~pos).to(torch.int8)


def _gnd_codes(gnd: Sequence[Mapping[str, Any]], num_database: int, device: torch.device) -> Tensor:
    """``(Q, N)`` uint8: for each query and image, the OR of the bits of the lists holding it."""
    codes = torch.zeros(len(gnd), num_database, dtype=torch.uint8, device=device)
    for key, bit in _BITS.items():
        rows, cols = [], []
        for i, q in enumerate(gnd):
            a = _gnd_indices(q, key, i)
            if a.size and (a.min() < 0 or a.max() >= num_database):
                bad = a[(a < 0) | (a >= num_database)][0]
                raise ValueError(
                    f"gnd[{i}][{key!r}] contains {bad}, out of range for num_database="
                    f"{num_database}"
                )
            rows.append(np.full(a.size, i, dtype=np.int64))
            cols.append(a)
        r = torch.from_numpy(np.concatenate(rows)).to(device)
        c = torch.from_numpy(np.concatenate(cols)).to(device)
        codes[r, c] |= bit  # repeated indices write the same value
    return codes


def _gnd_sparse_codes(gnd: Sequence[Mapping[str, Any]], num_database: int) -> tuple[Tensor, Tensor]:
    """The nonzero entries of :func:`_gnd_codes` without the dense matrix.

    Returns ``(keys, codes)``: sorted int64 keys ``query * num_database + image`` of the images
    named in a query's lists, and the uint8 OR of the bits of the lists holding each.
    """
    if len(gnd) * num_database >= 2**59:
        raise ValueError(
            f"num_database={num_database} is too large for {len(gnd)} queries (an index "
            "would overflow 64 bits); pass the real database size"
        )
    keys = []
    for key, bit in _BITS.items():
        for i, q in enumerate(gnd):
            a = _gnd_indices(q, key, i)
            if a.size and (a.min() < 0 or a.max() >= num_database):
                bad = a[(a < 0) | (a >= num_database)][0]
                raise ValueError(
                    f"gnd[{i}][{key!r}] contains {bad}, out of range for num_database="
                    f"{num_database}"
                )
            keys.append((i * num_database + a) * 8 + bit)
    pairs = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
    entry, inverse = np.unique(pairs // 8, return_inverse=True)
    codes = np.bincount(inverse, weights=pairs % 8, minlength=entry.size)  # distinct bits: OR
    return torch.from_numpy(entry), torch.from_numpy(codes.astype(np.uint8))


def ranks_from_cirtorch(ranks: TensorLike) -> Tensor:
    r"""Convert a cirtorch / revisitop ranking ``(N, Q)`` to graphrerank's ``(Q, N)`` layout.

    The revisitop and cirtorch evaluations take ``ranks`` with one *column* per query
    (``ranks = np.argsort(-sim, axis=0)`` for ``sim`` of shape ``(N, Q)``); graphrerank uses one
    row per query.

    .. math::
        \text{indices}[q, i] = \text{ranks}[i, q]

    Args:
        ranks: :math:`(N, Q)` (or :math:`(K, Q)` truncated) integer database indices.

    Returns:
        :math:`(Q, N)` contiguous int64.

    Raises:
        TypeError: non-integer input.
        ValueError: not 2-D, or empty.

    Example:
        >>> ranks_from_cirtorch(np.array([[2, 0], [0, 1], [1, 2]]))
        tensor([[2, 0, 1],
                [0, 1, 2]])
    """
    t = as_array(ranks, "ranks")
    if t.dim() != 2:
        raise ValueError(
            f"ranks must be a 2-D (num_database, num_queries) array, got shape {tuple(t.shape)}"
        )
    if not _is_integer(t):
        raise TypeError(f"ranks must hold integer database indices, got dtype {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"ranks is empty: shape {tuple(t.shape)}")
    if int(t.min()) < -1:
        raise ValueError(
            f"ranks contains {int(t.min())}; database indices are >= 0 (or -1 for padding)"
        )
    return t.T.contiguous().long()


def revisited_map(
    indices: TensorLike,
    gnd: Sequence[Mapping[str, Any]],
    *,
    kappas: Sequence[int] = (1, 5, 10),
    num_database: int | None = None,
) -> RevisitedResult:
    r"""Easy / Medium / Hard mAP and mP@k of the revisited Oxford and Paris benchmarks.

    For each protocol, junk images are removed from each ranking. AP is the trapezoid form of
    :func:`~graphrerank.metrics.average_precision` over the :math:`P` positives of the query.
    With :math:`p_1 < p_2 < \dots` the 1-based ranks of the retrieved positives (junk removed),
    precision at :math:`\kappa` is

    .. math::
        k_q = \min(\max_i p_i, \kappa), \qquad
        \mathrm{P}@\kappa = \frac{|\{i : p_i \le k_q\}|}{k_q},

    i.e. the cut-off is capped at the last retrieved positive, exactly as the benchmark's own
    evaluation does (a query with 3 positives, all ranked first, has P@10 = 1). A query that
    retrieved no positive (truncated ranking) has precision 0. Means are taken over the queries
    with at least one positive in the protocol.

    Args:
        indices: :math:`(Q, K)` ranked database indices, one row per query, best first;
            :math:`K < N` (truncated) is allowed, positives not retrieved count as misses;
            ``-1`` is padding. A row should not repeat an index. For the cirtorch/revisitop
            ``(N, Q)`` layout use :func:`ranks_from_cirtorch`.
        gnd: The per-query dicts of a revisitop ``gnd_*.pkl`` file (``easy``, ``hard``,
            ``junk``), one per row of ``indices``; the whole pickled dict is accepted too.
        kappas: Cut-offs of mP@k.
        num_database: Database size :math:`N`, used to check the indices. Default: the length
            of ``imlist`` when the whole pickled dict is given, else the smallest size that
            holds every index of ``indices`` and ``gnd``.

    Returns:
        :class:`RevisitedResult` with ``easy``, ``medium``, ``hard`` (:class:`ProtocolResult`:
        ``map``, ``mp_at_k``, per-query ``ap`` and ``precision``), all fractions in [0, 1].

    Raises:
        TypeError: non-integer indices, malformed ``gnd``.
        ValueError: wrong shapes, empty input, ``len(gnd)`` not :math:`Q`, indices out of
            range, bad ``kappas``; no query has any positive (easy or hard) image, e.g. a
            ground truth of junk only.

    Example:
        >>> gnd = [{"easy": [0], "hard": [2], "junk": [3]}, {"easy": [], "hard": [1], "junk": []}]
        >>> indices = torch.tensor([[3, 2, 0, 1], [0, 1, 2, 3]])
        >>> result = revisited_map(indices, gnd, kappas=(1, 2))
        >>> result.medium.map  # (1 + 0.25) / 2: query 1 finds its positive second
        0.625
        >>> result.easy.num_queries  # query 1 has no easy positive
        1
        >>> print(result)
                   E       M       H
        mAP   100.00   62.50   62.50
        mP@1  100.00   50.00   50.00
        mP@2  100.00   75.00   75.00
    """
    idx = check_ranking(indices, "indices")
    gnd, n_imlist = _gnd_list(gnd)
    if len(gnd) != idx.shape[0]:
        raise ValueError(
            f"gnd has {len(gnd)} queries but indices has {idx.shape[0]} rows; indices must have "
            "one row per query (convert the cirtorch (num_database, num_queries) layout with "
            "ranks_from_cirtorch)"
        )
    kappas = check_ks(kappas, "kappas")
    if num_database is None:
        num_database = n_imlist
    if num_database is None:
        num_database = max(int(idx.max()), _gnd_max(gnd)) + 1
    num_database = check_int(num_database, "num_database", low=1)
    idx = check_ranking(
        idx, "indices", num_items=num_database, what="the database (num_database)", unique=True
    )
    # One pass over the ground truth (its entries only, no (Q, N) matrix) and one lookup of
    # the ranked items serve the three protocols.
    keys, codes = _gnd_sparse_codes(gnd, num_database)
    keys, codes = keys.to(idx.device), codes.to(idx.device)
    nq = idx.shape[0]
    rows = keys // num_database
    ranked_keys = torch.arange(nq, device=idx.device)[:, None] * num_database + idx.clamp(min=0)
    at = torch.searchsorted(keys, ranked_keys).clamp(max=max(keys.numel() - 1, 0))
    if keys.numel():
        found = keys[at] == ranked_keys
        ranked = torch.where(found, codes[at], torch.zeros_like(codes[at]))
    else:
        ranked = torch.zeros_like(idx, dtype=torch.uint8)
    results = {}
    for protocol in PROTOCOLS:
        positive = _relevance_of_codes(codes, protocol) == 1
        num_pos = torch.bincount(rows[positive], minlength=nq)
        hits = _relevance_of_codes(ranked, protocol).masked_fill_(idx < 0, -1)
        results[protocol] = _protocol_scores(hits, num_pos, kappas)
    if results["medium"].num_queries == 0:  # medium positives are easy + hard: none at all
        raise ValueError(
            f"gnd has no positive (easy or hard) image for any of its {nq} queries, so there "
            "is nothing to score; check that gnd belongs to this database (a subset_gnd of a "
            "database without the queries' positives leaves only junk)"
        )
    return RevisitedResult(**results, kappas=kappas)


def _protocol_scores(hits: Tensor, num_pos: Tensor, kappas: tuple[int, ...]) -> ProtocolResult:
    pos = _positives(hits)
    ap = _average_precision(hits, num_pos, "trapezoid", pos)
    prec = []
    for kappa in kappas:
        kq = pos.last.clamp(max=kappa)  # 0 when no positive was retrieved
        within = (pos.rank <= kq[pos.query]).double()
        count = torch.zeros_like(ap).index_add_(0, pos.query, within)
        prec.append(torch.where(kq > 0, count / kq.clamp(min=1), torch.zeros_like(count)))
    precision = torch.stack(prec, 1)
    valid = num_pos > 0
    precision[~valid] = float("nan")
    nv = int(valid.sum())
    if nv:
        m = float(ap[valid].mean())
        mp = precision[valid].mean(0).tolist()
    else:
        m, mp = float("nan"), [float("nan")] * len(kappas)
    return ProtocolResult(
        map=m,
        mp_at_k=dict(zip(kappas, mp)),
        ap=ap,
        precision=precision,
        num_queries=nv,
    )
