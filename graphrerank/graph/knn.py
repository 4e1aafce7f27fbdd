"""Exact k-nearest-neighbour search with a faiss or a pure-torch backend."""

from __future__ import annotations

import logging
from functools import cache

import numpy as np
import torch
from torch import Tensor

from .._checks import check_features, check_in, check_int, check_same_device
from .._imports import faiss_num_gpus, has_faiss, require_faiss
from ..typing import BACKENDS, METRICS, Backend, KNNResult, Metric, TensorLike

__all__ = ["FAISS_GPU_MAX_K", "check_magnitude", "check_overflow", "knn_search", "resolve_backend"]

log = logging.getLogger(__name__)

#: Largest ``k`` faiss' GPU k-selection supports.
FAISS_GPU_MAX_K = 2048

_DEFAULT_BLOCK_BYTES = 256 * 2**20


def resolve_backend(backend: str, device: torch.device) -> str:
    """Pick the kNN backend: ``"faiss"`` or ``"torch"``.

    ``"auto"`` is faiss when faiss is installed and can run where the data is (any CPU tensor;
    a CUDA tensor only with a GPU build of faiss), otherwise the exact torch backend.
    """
    check_in(backend, "backend", BACKENDS)
    if backend == "torch":
        return "torch"
    on_cuda = device.type == "cuda"
    if backend == "faiss":
        require_faiss("backend='faiss'")
        if device.type not in ("cpu", "cuda") or (on_cuda and faiss_num_gpus() == 0):
            raise ValueError(
                f"backend='faiss' cannot search tensors on {device}: this faiss has no GPU "
                "support; use backend='torch' (exact search on any device) or move the data to the CPU"
            )
        return "faiss"
    if has_faiss() and (device.type == "cpu" or (on_cuda and faiss_num_gpus() > 0)):
        return "faiss"
    return "torch"


def check_magnitude(x: Tensor, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """Refuse descriptors so large that a score overflows: a row whose squared norm exceeds a
    quarter of the largest finite value of ``dtype`` (default ``x.dtype``; faiss searches in
    float32) could give infinite inner products or squared distances (and makes faiss'
    k-means abort the process). Returns ``x``."""
    if x.numel() == 0:
        return x
    dtype = dtype or x.dtype
    limit = torch.finfo(dtype).max / 4
    rows = max(1, (64 * 2**20) // (8 * max(1, x.shape[1])))
    worst = max(
        float(x[s : s + rows].double().pow(2).sum(1).max()) for s in range(0, x.shape[0], rows)
    )
    if not worst <= limit:
        raise ValueError(
            f"{name} has a row of squared norm {worst:.3g}, too large for {dtype} scores "
            f"(at most {limit:.3g}: inner products or distances would overflow to inf); "
            f"scale {name} down, e.g. normalise it"
        )
    return x


def check_overflow(scores: Tensor, a: str, b: str) -> Tensor:
    """Refuse a search whose scores overflowed to ``inf`` (descriptors ``a`` and ``b`` too
    large for the precision of the search: their ranking would be arbitrary)."""
    if scores.numel() and not bool(torch.isfinite(scores).all()):
        raise ValueError(
            f"the scores of {a} against {b} overflow the precision of the search "
            f"(descriptors of huge magnitude), so their ranking would be arbitrary; scale {a} "
            f"and {b} down, e.g. normalise them"
        )
    return scores


def knn_search(
    queries: TensorLike,
    database: TensorLike,
    k: int,
    *,
    metric: Metric = "ip",
    backend: Backend = "auto",
    block_bytes: int = _DEFAULT_BLOCK_BYTES,
    check_input: bool = True,
) -> KNNResult:
    r"""Exact k-nearest-neighbour search of every query in the database.

    Scores are similarities, higher is better:

    .. math::
        s_{ij} = \mathbf{q}_i^\top \mathbf{x}_j \quad (\text{"ip"}), \qquad
        s_{ij} = -\lVert \mathbf{q}_i - \mathbf{x}_j \rVert_2^2 \quad (\text{"l2"}).

    For L2-normalised descriptors ``"ip"`` is the cosine similarity.

    Args:
        queries: Query descriptors :math:`(Q, D)`, numpy or torch, float.
        database: Database descriptors :math:`(N, D)` on the same device as ``queries``.
        k: Number of neighbours, ``1 <= k <= N``.
        metric: ``"ip"`` (inner product) or ``"l2"`` (negative squared Euclidean distance).
        backend: ``"faiss"`` (CPU, or CUDA with a GPU build of faiss), ``"torch"`` (exact blocked
            matrix products and ``topk`` on any device), or ``"auto"`` (faiss where it can run
            on the data's device, else torch). Both return the same neighbours where the scores
            have no ties.
        block_bytes: Upper bound of the score block the torch backend holds at once.
        check_input: Validate the inputs (shapes, dtypes, finiteness, devices, ``k``).
            ``False`` skips that for callers that validated them once, e.g. a fitted
            database searched query by query, where the checks of the whole database cost
            more than a small search; the inputs must then be valid tensors (anything else
            gives an undefined result).

    Returns:
        :class:`~graphrerank.typing.KNNResult` ``(scores, indices)``, each :math:`(Q, k)`,
        sorted best first, on the device of the inputs; ``indices`` are int64.

    Raises:
        ValueError: shapes or dimensions differ, inputs are empty or not finite, ``k`` is not
            in ``[1, N]``, the inputs are on different devices, or faiss cannot run there.
        TypeError: inputs are not floating point arrays.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> out = knn_search(x[:1], x, k=2, backend="torch")
        >>> out.indices
        tensor([[0, 2]])
        >>> out.scores
        tensor([[1.0000, 0.6000]])
    """
    if check_input:
        queries = check_features(queries, "queries")
        database = check_features(
            database, "database", dim=queries.shape[1], dim_of="the dimension of queries"
        )
        device = check_same_device(queries=queries, database=database)
        check_in(metric, "metric", METRICS)
        n = database.shape[0]
        k = check_int(k, "k", low=1)
        if k > n:
            raise ValueError(f"k={k} is larger than the database, which holds {n} item(s)")
    else:
        device = database.device
        k = int(k)  # a numpy integer setting (faiss' SWIG wrappers take Python ints only)
    if queries.dtype != database.dtype:
        dtype = torch.promote_types(queries.dtype, database.dtype)
        queries, database = queries.to(dtype), database.to(dtype)
    which = resolve_backend(backend, device)
    if which == "faiss":
        out = _faiss_knn(queries, database, k, metric)
    else:
        out = _torch_knn(queries, database, k, metric, block_bytes)
    if check_input:
        check_overflow(out.scores, "queries", "database")
    return out


def _torch_knn(q: Tensor, db: Tensor, k: int, metric: str, block_bytes: int) -> KNNResult:
    nq, n = q.shape[0], db.shape[0]
    elem = q.element_size()
    # Query block x database block of scores stays under block_bytes.
    bn = max(k, min(n, block_bytes // (elem * max(1, min(nq, 1024)))))
    bq = max(1, min(nq, block_bytes // (elem * bn)))
    db_sq = db.pow(2).sum(1) if metric == "l2" else None
    out_s = torch.empty(nq, k, dtype=q.dtype, device=q.device)
    out_i = torch.empty(nq, k, dtype=torch.long, device=q.device)
    for qs in range(0, nq, bq):
        qb = q[qs : qs + bq]
        q_sq = qb.pow(2).sum(1, keepdim=True) if metric == "l2" else None
        best_s = best_i = None
        for ds in range(0, n, bn):
            s = qb @ db[ds : ds + bn].T
            if metric == "l2":
                s = (2 * s - q_sq - db_sq[ds : ds + bn]).clamp_(max=0)
            ts, ti = s.topk(min(k, s.shape[1]), dim=1)
            ti += ds
            if best_s is None:
                best_s, best_i = ts, ti
            else:
                cs, ci = torch.cat([best_s, ts], 1), torch.cat([best_i, ti], 1)
                best_s, pos = cs.topk(k, dim=1)
                best_i = ci.gather(1, pos)
        out_s[qs : qs + bq] = best_s
        out_i[qs : qs + bq] = best_i
    return KNNResult(out_s, out_i)


def _faiss_knn(q: Tensor, db: Tensor, k: int, metric: str) -> KNNResult:
    faiss = require_faiss("knn_search(backend='faiss')")
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    out_dtype = q.dtype
    if q.dtype != torch.float32:
        log.debug("faiss searches in float32; converting from %s", q.dtype)
    if q.device.type == "cuda":
        if k > FAISS_GPU_MAX_K:
            raise ValueError(
                f"k={k} exceeds faiss' GPU limit of {FAISS_GPU_MAX_K}; use backend='torch' "
                "or a smaller k"
            )
        import faiss.contrib.torch_utils

        res = _gpu_resources(faiss)
        d, i = faiss.knn_gpu(
            res,
            q.float().contiguous(),
            db.float().contiguous(),
            k,
            metric=fmetric,
            device=q.device.index or 0,
        )
        d, i = d.to(out_dtype), i.long()
    else:
        xq = np.ascontiguousarray(q.detach().numpy(), dtype=np.float32)
        xb = np.ascontiguousarray(db.detach().numpy(), dtype=np.float32)
        d, i = faiss.knn(xq, xb, k, metric=fmetric)
        d = torch.from_numpy(d).to(out_dtype)
        i = torch.from_numpy(i).long()
    if metric == "l2":
        d = -d.clamp_(min=0)
    return KNNResult(d, i)


@cache
def _gpu_resources(faiss):
    return faiss.StandardGpuResources()
