"""kNN graphs as PyG ``Data``: edge selection, symmetrisation, weights and normalisation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.data import Data

from .._checks import (
    Array,
    Edges,
    Int,
    OneOf,
    Real,
    Ref,
    check_features,
    check_in,
    check_index,
    check_int,
    check_real,
    check_same_device,
    check_tensor,
    checked,
)
from ..typing import (
    METRICS,
    NORMALIZATIONS,
    SYMMETRIZATIONS,
    Backend,
    KNNResult,
    Metric,
    Normalization,
    Symmetrization,
    TensorLike,
)
from .knn import check_magnitude, knn_search, resolve_backend
from .scores import ScoreMatrix

__all__ = [
    "EdgeRescorer",
    "edge_weights",
    "knn_graph",
    "mutual_knn_graph",
    "normalize_adjacency",
    "symmetrize",
]

#: ``rescore(rows, candidates, scores) -> new_scores``: re-scores the candidate neighbours of a
#: batch of nodes. ``rows`` is ``(B,)`` node ids, ``candidates`` and ``scores`` are ``(B, m)``
#: (candidate ids, -1 for padding, and their first-stage scores, best first). It returns
#: ``(B, m)`` new scores, higher is better; ``-inf`` drops a candidate.
EdgeRescorer = Callable[[Tensor, Tensor, Tensor], Tensor]

Symmetrize = Symmetrization  # the names of earlier releases
Normalize = Normalization


@checked(scores=Array(ndim=(1, 2), kind="float", nan=False), gamma=Real(low=0, optional=True))
def edge_weights(scores: Tensor, gamma: float | None) -> Tensor:
    r"""Turn similarities into edge weights :math:`w = \max(s, 0)^\gamma`.

    ``scores`` are the similarities of edges :math:`(E,)` or of kNN lists :math:`(N, k)`.

    ``gamma=None`` keeps the raw scores (no clamping), e.g. for negative L2 distances.
    """
    if gamma is None:
        return scores
    return scores.clamp(min=0).pow(gamma)


def _keys(edge_index: Tensor, num_nodes: int) -> Tensor:
    # key of A[dst, src] in row-major order
    return edge_index[1] * num_nodes + edge_index[0]


def _span(edge_index: Tensor) -> int:
    """One more than the largest node id in ``edge_index`` (1 without edges): the nodes that
    matter, whatever ``num_nodes`` says (a huge ``num_nodes`` then costs nothing, and the
    keys ``dst * span + src`` cannot overflow int64 for ids that fit memory)."""
    return int(edge_index.max()) + 1 if edge_index.numel() else 1


def _sort_edges(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    order = _keys(edge_index, num_nodes).argsort()
    return edge_index[:, order], edge_weight[order]


def _edge_checks(**extra):
    """The declared checks of a weighted edge list over ``num_nodes`` nodes."""
    return checked(
        num_nodes=Int(low=0),
        edge_index=Edges(num_nodes=Ref("num_nodes"), of="num_nodes={high}"),
        edge_weight=Array(shape=Ref("edge_index", fn=lambda e: (e.shape[1],)), finite=True),
        **extra,
    )


def _no_duplicates(edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> None:
    check_same_device(edge_index=edge_index, edge_weight=edge_weight)
    keys = _keys(edge_index, num_nodes)
    if keys.numel() > 1 and torch.unique(keys).numel() != keys.numel():
        raise ValueError("edge_index must not repeat an edge")


@_edge_checks(how=OneOf(SYMMETRIZATIONS))
def symmetrize(
    edge_index: Tensor,
    edge_weight: Tensor,
    num_nodes: int,
    how: Symmetrize,
) -> tuple[Tensor, Tensor]:
    r"""Make a directed weighted graph undirected.

    With :math:`\mathbf{A}_{ij}` the weight of edge :math:`j \to i` (0 where absent):

    * ``"mutual"``: keep :math:`j \to i` only if :math:`i \to j` exists too, with its own weight
      (the reference diffusion graphs; symmetric whenever the similarity is),
    * ``"min"``: :math:`\min(\mathbf{A}, \mathbf{A}^\top)` over mutual pairs (always symmetric),
    * ``"union"``: :math:`\mathbf{A} + \mathbf{A}^\top` (a pair found from both sides sums both),
    * ``"max"``: :math:`\max(\mathbf{A}, \mathbf{A}^\top)`.

    Args:
        edge_index: :math:`(2, E)` edges ``[source, target]`` without duplicates.
        edge_weight: :math:`(E,)` weights.
        num_nodes: Number of nodes.
        how: One of ``"mutual"``, ``"min"``, ``"union"``, ``"max"``.

    Returns:
        ``(edge_index, edge_weight)`` sorted by target, then source.

    Example:
        >>> ei = torch.tensor([[1, 0, 2], [0, 1, 0]])  # 1->0, 0->1, 2->0
        >>> w = torch.tensor([0.5, 0.3, 0.2])
        >>> symmetrize(ei, w, 3, "min")
        (tensor([[1, 0],
                [0, 1]]), tensor([0.3000, 0.3000]))
        >>> symmetrize(ei, w, 3, "union")[1]
        tensor([0.8000, 0.2000, 0.8000, 0.2000])

    Raises:
        ValueError: edges outside ``[0, num_nodes)`` or repeated, weights of the wrong length
            or not finite, an unknown ``how``.
    """
    n = _span(edge_index)
    if n > 2**31:  # keys dst * n + src could overflow int64: work on the ids that occur
        ids, inv = torch.unique(edge_index, return_inverse=True)
        ei, w = symmetrize.__wrapped__(inv, edge_weight, ids.numel(), how)
        return ids[ei], w
    _no_duplicates(edge_index, edge_weight, n)
    if how in ("union", "max"):
        both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
        w = torch.cat([edge_weight, edge_weight])
        keys = _keys(both, n)
        uniq, inv = torch.unique(keys, return_inverse=True)
        out = torch.zeros(uniq.numel(), dtype=w.dtype, device=w.device)
        if how == "union":
            out.index_add_(0, inv, w)
        else:
            out = out.fill_(float("-inf")).scatter_reduce_(0, inv, w, reduce="amax")
        ei = torch.stack([uniq % n, torch.div(uniq, n, rounding_mode="floor")])
        return ei, out
    keys = _keys(edge_index, n)
    skeys, perm = keys.sort()
    rev = edge_index[0] * n + edge_index[1]
    pos = torch.searchsorted(skeys, rev).clamp_(max=max(skeys.numel() - 1, 0))
    found = skeys[pos] == rev if skeys.numel() else torch.zeros_like(rev, dtype=torch.bool)
    ei, w = edge_index[:, found], edge_weight[found]
    if how == "min":
        w = torch.minimum(w, edge_weight[perm[pos[found]]])
    return _sort_edges(ei, w, n)


_symmetrize = symmetrize  # knn_graph's argument of the same name shadows the function


@_edge_checks(how=OneOf(NORMALIZATIONS))
def normalize_adjacency(
    edge_index: Tensor,
    edge_weight: Tensor,
    num_nodes: int,
    how: Normalize,
) -> Tensor:
    r"""Normalise edge weights by node degree, with a zero-degree guard.

    With :math:`d_i = \sum_j \mathbf{A}_{ij}` (the summed weight of edges into node :math:`i`):

    * ``"sym"``: :math:`\mathbf{S} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}`,
    * ``"row"``: :math:`\mathbf{P} = \mathbf{D}^{-1}\mathbf{A}` (rows sum to one),

    where :math:`d_i^{-1/2}` and :math:`d_i^{-1}` are taken as 0 for isolated nodes
    (:math:`d_i = 0`), so they neither send nor receive anything.

    Returns:
        The normalised :math:`(E,)` weights.

    Example:
        >>> ei = torch.tensor([[1, 0], [0, 1]])
        >>> normalize_adjacency(ei, torch.tensor([2.0, 2.0]), 3, "sym")
        tensor([1., 1.])

    Raises:
        ValueError: edges outside ``[0, num_nodes)``, weights of the wrong length or not
            finite, an unknown ``how``.
    """
    check_same_device(edge_index=edge_index, edge_weight=edge_weight)
    src, dst = edge_index
    n = _span(edge_index)  # nodes beyond every edge have degree 0 and no weight to scale
    if n > 4 * edge_index.shape[1] + 2**20:  # a few edges among very many node ids
        ids, inv_ids = torch.unique(edge_index, return_inverse=True)
        src, dst, n = inv_ids[0], inv_ids[1], ids.numel()
    deg = torch.zeros(n, dtype=edge_weight.dtype, device=edge_weight.device)
    deg.index_add_(0, dst, edge_weight)
    if how == "row":
        inv = deg.reciprocal().masked_fill_(deg == 0, 0)
        return edge_weight * inv[dst]
    inv = deg.rsqrt().masked_fill_(deg <= 0, 0)
    return inv[dst] * edge_weight * inv[src]


def knn_graph(
    x: TensorLike | ScoreMatrix,
    k: int,
    *,
    metric: Metric = "ip",
    k_includes_self: bool = True,
    loop: bool = False,
    symmetrize: Symmetrize | None = None,
    gamma: float | None = 1.0,
    normalize: Normalize | None = None,
    rescore: EdgeRescorer | None = None,
    num_candidates: int | None = None,
    rescore_batch_size: int = 1024,
    candidates: KNNResult | tuple[Tensor, Tensor] | None = None,
    backend: Backend = "auto",
) -> Data:
    r"""Build the k-nearest-neighbour graph of ``x`` as a PyG :class:`~torch_geometric.data.Data`.

    Every node :math:`i` receives an edge :math:`j \to i` from each of its nearest neighbours
    :math:`j` (``edge_index[0]`` is the neighbour, ``edge_index[1]`` the centre, PyG's
    ``source_to_target`` flow), weighted

    .. math::
        w_{ij} = \max(s_{ij}, 0)^{\gamma},

    then optionally symmetrised (:func:`symmetrize`) and normalised
    (:func:`normalize_adjacency`). The adjacency :math:`\mathbf{A}_{ij} = w_{ij}` is thus the
    operator that aggregates neighbours into the centre: :math:`(\mathbf{A}\mathbf{X})_i =
    \sum_j w_{ij}\mathbf{x}_j`.

    The steps, in order:

    1. candidates: ``num_candidates`` nearest items of each node (default ``k``, or ``k + 1`` when
       ``k_includes_self=False``), or the given ``candidates``;
    2. re-scoring: ``rescore(rows, candidates, scores)`` in batches of ``rescore_batch_size``
       rows, then candidates are re-sorted by the new score (the hook of R-DiP and learned
       re-rankers);
    3. selection: the node itself is dropped wherever it appears, and the best ``k - 1``
       (``k_includes_self=True``: the reference diffusion codes count the item itself among its
       ``k``) or ``k`` other candidates are kept;
    4. weights ``max(s, 0) ** gamma`` (``gamma=None``: raw scores);
    5. symmetrisation ``"mutual"``, ``"min"``, ``"union"``, ``"max"`` or none;
    6. self-loops (``loop=True``) with the weight of the pair :math:`(i, i)`;
    7. normalisation ``"sym"`` or ``"row"`` or none.

    Args:
        x: Node descriptors :math:`(N, D)`, or a precomputed :math:`(N, N)`
            :class:`~graphrerank.graph.ScoreMatrix` of the nodes against each other (dense or
            sparse top-k): the one place where a score matrix becomes edges. Its candidates
            are each row's best entries; weights come from its "higher is better" scores
            (minus the distance for distances, so use ``gamma=None`` or convert them with
            :meth:`~graphrerank.graph.ScoreMatrix.as_similarity`).
        k: Neighbours per node (see ``k_includes_self``).
        metric: ``"ip"`` or ``"l2"`` as in :func:`~graphrerank.graph.knn_search`.
        k_includes_self: Whether the node itself counts as one of its ``k`` neighbours.
        loop: Add a self-loop to every node.
        symmetrize: ``None`` (directed), ``"mutual"``, ``"min"``, ``"union"`` or ``"max"``.
        gamma: Similarity exponent; ``None`` for raw scores.
        normalize: ``None``, ``"sym"`` or ``"row"``.
        rescore: Optional :data:`EdgeRescorer`.
        num_candidates: Candidates per node before re-scoring (``>= k``).
        rescore_batch_size: Rows per ``rescore`` call.
        candidates: A precomputed ``(scores, indices)`` :math:`(N, m)` kNN of ``x`` in itself
            (e.g. from an approximate :class:`~graphrerank.graph.KNNIndex`), used instead of an
            exact search.
        backend: kNN backend for the candidate search.

    Returns:
        ``Data(edge_index (2, E), edge_weight (E,), num_nodes=N)`` with edges sorted by target,
        then source, on the device of ``x``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> g = knn_graph(x, k=2, symmetrize="mutual", backend="torch")
        >>> g.edge_index  # 2's nearest is 1, but 1's is 0: not mutual
        tensor([[1, 0],
                [0, 1]])
        >>> g.edge_weight
        tensor([0.8000, 0.8000])
    """
    smat = x.check_database("x") if isinstance(x, ScoreMatrix) else None
    if smat is None:
        x = check_features(x, "x", detach=True)
    n = x.shape[0]
    k = check_int(k, "k", low=1)
    if symmetrize is not None:
        check_in(symmetrize, "symmetrize", SYMMETRIZATIONS)
    if normalize is not None:
        check_in(normalize, "normalize", NORMALIZATIONS)
    if gamma is not None:
        gamma = check_real(gamma, "gamma", low=0, finite=True)
    check_in(metric, "metric", METRICS)
    if rescore is not None and not callable(rescore):
        raise TypeError(f"rescore must be callable, got {type(rescore).__name__}")
    k_others = k - 1 if k_includes_self else k
    if k_others > n - 1:
        limit = n if k_includes_self else n - 1
        raise ValueError(
            f"k={k} is too large for x with {n} row(s) (node(s)): at most {limit} with "
            f"k_includes_self={k_includes_self}"
        )
    if candidates is None:
        m = k if k_includes_self else k + 1
        if num_candidates is not None:
            m = check_int(num_candidates, "num_candidates", low=m, high=n)
        if smat is not None:
            cand_s, idx = smat.topk(min(m, n))
        else:
            which = resolve_backend(backend, x.device)
            check_magnitude(x, "x", torch.float32 if which == "faiss" else x.dtype)
            cand_s, idx = knn_search(x, x, min(m, n), metric=metric, backend=backend)
    else:
        cand_s, idx = _candidates(candidates)
        cand_s = check_tensor(cand_s, "candidates scores", ndim=2, detach=True)
        idx = check_index(idx, "candidates indices", high=n, ndim=2, padding=True)
        if bool(torch.isnan(cand_s).any()):
            raise ValueError("candidates scores contain NaN")
        if cand_s.shape != idx.shape or cand_s.shape[0] != n:
            raise ValueError(
                f"candidates must be (scores, indices) of shape ({n}, m), got "
                f"{tuple(cand_s.shape)} and {tuple(idx.shape)}"
            )
        if idx.device != x.device or cand_s.device != x.device:
            raise ValueError(f"candidates are on {idx.device} but x is on {x.device}")
        if cand_s.shape[1] < k_others:
            raise ValueError(f"candidates hold {cand_s.shape[1]} per node, fewer than k={k}")
        cand_s, idx = cand_s.to(x.dtype), idx.long()
    rows = torch.arange(n, device=x.device)
    if rescore is not None:
        cand_s, idx = _rescore(
            rescore, rows, idx, cand_s, check_int(rescore_batch_size, "rescore_batch_size", low=1)
        )
    valid = (idx >= 0) & (idx != rows[:, None]) & (cand_s > float("-inf"))
    rank = valid.cumsum(1) - 1
    keep = valid & (rank < k_others)
    src = idx[keep]
    dst = rows[:, None].expand_as(idx)[keep]
    edge_index = torch.stack([src, dst])
    weight = _finite(edge_weights(cand_s[keep], gamma), "edge")
    if symmetrize is not None:
        edge_index, weight = _symmetrize(edge_index, weight, n, symmetrize)
    if loop:
        if smat is not None:
            self_score = smat.diagonal()
        elif metric == "ip":
            self_score = (x * x).sum(1)
        else:
            self_score = torch.zeros(n, dtype=x.dtype, device=x.device)
        edge_index = torch.cat([edge_index, torch.stack([rows, rows])], dim=1)
        weight = torch.cat([weight, _finite(edge_weights(self_score, gamma), "self-loop")])
    edge_index, weight = _sort_edges(edge_index, weight, n)
    if normalize is not None:
        weight = normalize_adjacency(edge_index, weight, n, normalize)
    return Data(edge_index=edge_index, edge_weight=weight, num_nodes=n)


def _finite(weight: Tensor, what: str) -> Tensor:
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(
            f"x gives non-finite {what} weights (similarities that overflow {weight.dtype}, or a "
            "self score a sparse score matrix does not store); scale or normalise x, use "
            "float64, or pass gamma / loop=False"
        )
    return weight


def _candidates(candidates) -> tuple:
    if not isinstance(candidates, (tuple, list)) or len(candidates) != 2:
        raise TypeError(
            "candidates must be a (scores, indices) pair (e.g. a KNNResult), got "
            f"{type(candidates).__name__}"
        )
    return candidates[0], candidates[1]


def _rescore(rescore, rows, idx, scores, batch):
    new = torch.empty_like(scores)
    for s in range(0, rows.numel(), batch):
        out = rescore(rows[s : s + batch], idx[s : s + batch], scores[s : s + batch])
        if not isinstance(out, Tensor) or out.shape != scores[s : s + batch].shape:
            raise ValueError(
                f"rescore must return a tensor of shape {tuple(scores[s : s + batch].shape)}, "
                f"got {getattr(out, 'shape', type(out).__name__)}"
            )
        if bool(torch.isnan(out).any()):
            raise ValueError(f"rescore returned NaN scores for rows {s}..{s + out.shape[0] - 1}")
        new[s : s + batch] = out.to(device=scores.device, dtype=scores.dtype)
    new = new.masked_fill(idx < 0, float("-inf"))
    order = new.argsort(dim=1, descending=True, stable=True)
    return new.gather(1, order), idx.gather(1, order)


def mutual_knn_graph(
    x: TensorLike,
    k: int,
    *,
    gamma: float = 3.0,
    candidates: KNNResult | tuple[Tensor, Tensor] | None = None,
    backend: Backend = "auto",
) -> Data:
    r"""The affinity graph of the diffusion papers (Iscen et al. 2017, Yang et al. 2019): each
    node's ``k`` nearest nodes *counting itself*, the node itself then dropped, weights
    :math:`a_{ij} = \max(\mathbf{x}_i^\top\mathbf{x}_j, 0)^\gamma`, mutual pairs only.

    The preset ``knn_graph(x, k, k_includes_self=True, symmetrize="mutual", gamma=gamma)``;
    ``candidates`` (a kNN of ``x`` in itself with at least ``k`` columns, e.g. from an
    approximate index) replaces the exact search, its first ``k`` columns used.

    Example:
        >>> x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=1)
        >>> mutual_knn_graph(x, 2, gamma=1.0, backend="torch").edge_index
        tensor([[1, 0],
                [0, 1]])
    """
    if candidates is not None:
        k = check_int(k, "k", low=1)
        scores, idx = _candidates(candidates)
        scores = check_tensor(scores, "candidates scores", ndim=2)
        idx = check_tensor(idx, "candidates indices", ndim=2, kind="int")
        candidates = KNNResult(scores[:, :k], idx[:, :k])
    return knn_graph(
        x,
        k,
        k_includes_self=True,
        symmetrize="mutual",
        gamma=gamma,
        candidates=candidates,
        backend=backend,
    )
