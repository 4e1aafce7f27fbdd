"""Exact k-nearest-neighbour search with a faiss or a pure-torch backend."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
from torch import Tensor

from .._checks import check_features, check_in, check_int, check_same_device
from .._imports import faiss_num_gpus, has_faiss, require_faiss
from .._numba import compile_kernels, warn_kernel_failed
from ..typing import BACKENDS, METRICS, Backend, KNNResult, Metric, TensorLike

__all__ = [
    "FAISS_GPU_MAX_K",
    "check_magnitude",
    "check_overflow",
    "knn_search",
    "resolve_backend",
    "self_knn",
]

log = logging.getLogger(__name__)

#: Largest ``k`` faiss' GPU k-selection supports.
FAISS_GPU_MAX_K = 2048

_DEFAULT_BLOCK_BYTES = 256 * 2**20

#: Score elements of one piece of :func:`_symmetric_select` by default (64 MiB of float32),
#: and the bytes of one piece of :func:`self_knn`.
_SELF_BLOCK_ELEMENTS = 2**24
_SELF_BLOCK_BYTES = 4 * _SELF_BLOCK_ELEMENTS

#: Slots per row of the compiled running selection, in units of k.
_CAPACITY = 2

#: Score dtypes the compiled selection kernels take.
_KERNEL_DTYPES = (torch.float32, torch.float64)


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


# ----------------------------------------------------------------------------- self search
def _matmul_t(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`a b^\top`. On a CPU, through NumPy's BLAS: on the 2-core benchmark machine it
    multiplies these blocks in 0.65x the time of torch's (measured with d = 2048, about the
    speed of faiss' own search)."""
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and not a.requires_grad:
        return torch.from_numpy(a.numpy() @ b.numpy().T)
    return a @ b.T


def _sorted(s: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    v, i = s.sort(dim=1, descending=largest)
    return v[:, :k], i[:, :k]


class _Running:
    """Each row's ``k`` best entries so far, kept lazily: a buffer of ``2k`` slots per row
    that new entries are appended to, reduced to the ``k`` best (one selection) only when
    full. Rows come in blocks that always receive the same columns, so one fill count per
    block. Once a block holds ``k`` entries, an entry enters only if it beats its row's
    ``k``-th best at the last reduction (a lower bound of the final ``k``-th best)."""

    def __init__(self, n: int, k: int, nblocks: int, largest: bool, dtype, device) -> None:
        self.k, self.cap, self.largest = k, 2 * k, largest
        itype = torch.int32 if n < 2**31 - 1 else torch.int64
        self.v = torch.empty(n, self.cap, dtype=dtype, device=device)
        self.i = torch.empty(n, self.cap, dtype=itype, device=device)
        self.thr = torch.empty(n, dtype=dtype, device=device)
        self.fill = [0] * nblocks
        self.full = [False] * nblocks

    def add(self, b: int, r0: int, r1: int, s: Tensor, offset: int) -> None:
        """Offer ``s`` :math:`(r_1 - r_0, C)`, the scores of rows ``r0..r1-1`` (block ``b``)
        against items ``offset..offset+C-1``."""
        k, largest, c = self.k, self.largest, s.shape[1]
        kk = min(k, c)
        if self.full[b]:
            thr = self.thr[r0:r1, None]
            better = s > thr if largest else s < thr
            kk = min(kk, int(better.sum(1, dtype=torch.int32).max()))  # int32: 7x int64's
            if kk == 0:
                return
        if c <= k and 2 * kk >= c:  # most of the piece enters: all of it, no selection
            v, kk = s, c
            i = torch.arange(offset, offset + c, device=s.device).expand(s.shape[0], c)
        else:
            v, i = s.topk(kk, dim=1, largest=largest, sorted=False)
            i += offset
        f = self.fill[b]
        if f + kk > self.cap:
            self._reduce(b, r0, r1)
            f = k
        self.v[r0:r1, f : f + kk] = v
        self.i[r0:r1, f : f + kk] = i
        self.fill[b] = f + kk
        if not self.full[b] and f + kk >= k:
            self._reduce(b, r0, r1)

    def add_columns(self, b: int, j0: int, j1: int, s: Tensor, offset: int) -> None:
        """Offer ``s`` :math:`(R, j_1 - j_0)` transposed: column ``c`` holds the scores of
        row ``j0 + c`` (block ``b``) against items ``offset..offset+R-1``."""
        self.add(b, j0, j1, s.T.contiguous(), offset)

    def _reduce(self, b: int, r0: int, r1: int) -> None:
        k, f = self.k, self.fill[b]
        v = self.v[r0:r1, :f]
        if f > k:
            v, pos = v.topk(k, dim=1, largest=self.largest, sorted=False)
            self.i[r0:r1, :k] = self.i[r0:r1, :f].gather(1, pos)
            self.v[r0:r1, :k] = v
        self.thr[r0:r1] = v.amin(1) if self.largest else v.amax(1)
        self.fill[b], self.full[b] = k, True

    def result(self, b: int, r0: int, r1: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best of rows ``r0..r1-1``, best first (int64 indices)."""
        self._reduce(b, r0, r1)
        v, pos = self.v[r0:r1, : self.k].sort(dim=1, descending=self.largest)
        return v, self.i[r0:r1, : self.k].gather(1, pos).long()


def _reduce_row_py(vr, ir, k):  # pragma: no cover - compiled by numba
    """Move the ``k`` largest of ``vr`` (and their ids ``ir``) first (quickselect, Hoare
    partitions); return the smallest of them."""
    lo, hi = 0, vr.shape[0] - 1
    while lo < hi:
        x = vr[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while vr[i] > x:
                i += 1
            while vr[j] < x:
                j -= 1
            if i <= j:
                vr[i], vr[j] = vr[j], vr[i]
                ir[i], ir[j] = ir[j], ir[i]
                i += 1
                j -= 1
        if j < k - 1:
            lo = i
        if k - 1 < i:
            hi = j
    t = vr[0]
    for q in range(1, k):
        t = min(t, vr[q])
    return t


#: What :func:`_offer_py` calls to reduce a row: the compiled kernel once compiled.
_reduce_row = _reduce_row_py


def _offer_py(
    s, by_column, a0, a1, c0, c1, item0, row0, k, vbuf, ibuf, fill, thr
):  # pragma: no cover
    """Offer the entries ``s[a, c]`` (``a0 <= a < a1``, ``c0 <= c < c1``) to the running
    selections of the largest: to row ``row0 + a`` as item ``item0 + c``, or with
    ``by_column`` to row ``row0 + c`` as item ``item0 + a`` (a piece read transposed, in
    memory order). Row ``r`` holds ``fill[r]`` entries in ``vbuf[r]`` / ``ibuf[r]`` (``2k``
    slots); an entry enters if it beats ``thr[r]``, a lower bound of the row's final
    ``k``-th best (``-inf`` until the row holds ``k`` entries, then their smallest); a full
    row is reduced to its ``k`` best and ``thr[r]`` becomes the ``k``-th. The entries come
    64 columns at a time, skipped together when none beats its threshold (the usual case
    once the thresholds are up: ``x > t`` exactly when ``x - t > 0``)."""
    cap = vbuf.shape[1]
    for a in range(a0, a1):
        for t0 in range(c0, c1, 64):
            t1 = min(c1, t0 + 64)
            m = -np.inf
            if by_column:
                for c in range(t0, t1):
                    m = max(m, s[a, c] - thr[row0 + c])
            else:
                for c in range(t0, t1):
                    m = max(m, s[a, c])
                m -= thr[row0 + a]
            if not m > 0:
                continue
            for c in range(t0, t1):
                v = s[a, c]
                r = row0 + c if by_column else row0 + a
                if not v > thr[r]:
                    continue
                f = fill[r]
                if f == cap:
                    thr[r] = _reduce_row(vbuf[r], ibuf[r], k)
                    f = k
                    if not v > thr[r]:
                        fill[r] = f
                        continue
                vbuf[r, f] = v
                ibuf[r, f] = item0 + a if by_column else item0 + c
                fill[r] = f + 1
                if f + 1 == k and thr[r] == -np.inf:
                    t = vbuf[r, 0]
                    for q in range(1, k):
                        t = min(t, vbuf[r, q])
                    thr[r] = t


#: The compiled selection kernel (numba, optional): ``[]`` before the first call, ``[None]``
#: without numba or once it failed, else ``[offer]``.
_KERNEL: list = []


def _select_kernel():
    """:func:`_offer_py` compiled (numba, ``cache=True``), or ``None`` when numba is not
    importable (the torch selection then runs)."""
    global _reduce_row
    if not _KERNEL:
        compiled = compile_kernels(_reduce_row_py, _offer_py, boundscheck=False)
        if compiled is not None:
            _reduce_row = compiled[0]
        _KERNEL.append(compiled and compiled[1])
    return _KERNEL[0]


class _CompiledRunning:
    """:class:`_Running` by the compiled kernel :func:`_offer_py`: one pass over each piece,
    per-row fills and thresholds (a row's threshold rises as soon as it holds ``k``
    entries); the smallest are selected as the largest of the negated scores. One thread:
    splitting a piece between threads was slower on the 2-core benchmark machine (the
    threads contend with BLAS' spinning workers between products: 5.8 s against 3.4 s for
    N = 10,000, d = 2048, k = 1000)."""

    def __init__(self, offer, n: int, k: int, largest: bool, dtype) -> None:
        self.offer, self.k, self.largest = offer, k, largest
        npd = np.float32 if dtype == torch.float32 else np.float64
        cap = _CAPACITY * k
        self.v = np.empty((n, cap), dtype=npd)
        self.i = np.empty((n, cap), dtype=np.int32 if n < 2**31 - 1 else np.int64)
        self.fill = np.zeros(n, dtype=np.int64)
        self.thr = np.full(n, -np.inf, dtype=npd)

    def _run(self, *args) -> None:
        try:
            self.offer(*args, self.k, self.v, self.i, self.fill, self.thr)
        except Exception as err:
            raise _KernelFailed from err

    def _scores(self, s: Tensor) -> np.ndarray:
        return (s if self.largest else -s).numpy()

    def add(self, b: int, r0: int, r1: int, s: Tensor, offset: int) -> None:
        self._run(self._scores(s), False, 0, s.shape[0], 0, s.shape[1], offset, r0)

    def add_columns(self, b: int, j0: int, j1: int, s: Tensor, offset: int) -> None:
        self._run(self._scores(s), True, 0, s.shape[0], 0, s.shape[1], offset, j0)

    def result(self, b: int, r0: int, r1: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best of rows ``r0..r1-1``, best first: one NumPy argsort of the kept
        entries (SIMD sorts: several times torch's sort here)."""
        v = self.v[r0:r1]
        v[np.arange(v.shape[1]) >= self.fill[r0:r1, None]] = -np.inf  # the unused slots
        order = np.argsort(-v, axis=1)[:, : self.k]
        out_v = np.take_along_axis(v, order, 1)
        out_i = np.take_along_axis(self.i[r0:r1], order, 1).astype(np.int64)
        return torch.from_numpy(out_v if self.largest else -out_v), torch.from_numpy(out_i)


def _symmetric_select(
    block: Callable[[int, int, int, int], Tensor],
    n: int,
    k: int,
    *,
    largest: bool,
    extreme: bool = False,
    dtype: torch.dtype,
    device: torch.device,
    budget: int | None = None,
    rows: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Each row's ``k`` best entries of a *symmetric* :math:`(N, N)` matrix that
    ``block(r0, r1, c0, c1)`` returns piece by piece, reading only the pieces on and above
    the diagonal: a piece serves its rows and, transposed, its columns (half the products of
    a full scan).

    Rows come in blocks of ``rows``; block :math:`i` reads the columns from its own first
    row on, ``budget`` elements at a time. Returns ``(values, indices, extremes)``:
    :math:`(N, k)` best first (``largest`` says whether best is largest; int64 indices) and,
    with ``extreme``, each row's opposite extreme (else ``None``). Memory: :math:`3Nk` numbers
    plus one piece.
    """
    budget = _SELF_BLOCK_ELEMENTS if budget is None else budget
    k = min(k, n)
    if rows is None and n * n <= budget:
        rows = n  # the whole matrix in one piece: one product, one selection (faster)
    br = rows or max(1, min(n, 1024, math.isqrt(budget)))
    nb = -(-n // br)
    if nb == 1:  # one piece: the whole matrix, one selection
        s = block(0, n, 0, n)
        v, i = s.topk(k, dim=1, largest=largest) if 4 * k <= n else _sorted(s, k, largest)
        ext = (s.amin(1) if largest else s.amax(1)) if extreme else None
        return v, i, ext
    # pieces of whole row blocks of columns, budget elements at most
    per = max(1, budget // (br * br))
    kernel = _select_kernel() if device.type == "cpu" and dtype in _KERNEL_DTYPES else None
    if kernel is not None:
        try:
            run = _CompiledRunning(kernel, n, k, largest, dtype)
            return _symmetric_pass(block, run, n, k, br, per, largest, extreme, dtype, device)
        except _KernelFailed as err:
            # numba could not compile or load the kernel here (no writable cache location,
            # an unsupported CPU): warn, then the torch selection from now on
            _KERNEL[:] = [None]
            warn_kernel_failed("top-k selection", err.__cause__, "torch's selection")
    run = _Running(n, k, nb, largest, dtype, device)
    return _symmetric_pass(block, run, n, k, br, per, largest, extreme, dtype, device)


class _KernelFailed(Exception):
    """The compiled selection kernel raised (its cause attached)."""


def _symmetric_pass(block, run, n, k, br, per, largest, extreme, dtype, device):
    """The pass of :func:`_symmetric_select` over the pieces on and above the diagonal, the
    running selections kept by ``run``."""
    nb = -(-n // br)
    out_v = torch.empty(n, k, dtype=dtype, device=device)
    out_i = torch.empty(n, k, dtype=torch.long, device=device)
    ext = torch.empty(n, dtype=dtype, device=device) if extreme else None
    if extreme:
        ext.fill_(float("inf") if largest else float("-inf"))
    pick = torch.minimum if largest else torch.maximum
    for bi in range(nb):
        r0, r1 = bi * br, min(n, (bi + 1) * br)
        for bj0 in range(bi, nb, per):
            bj1 = min(nb, bj0 + per)
            c0, c1 = bj0 * br, min(n, bj1 * br)
            s = block(r0, r1, c0, c1)
            run.add(bi, r0, r1, s, c0)
            if extreme:
                ext[r0:r1] = pick(ext[r0:r1], s.amin(1) if largest else s.amax(1))
            for bj in range(max(bj0, bi + 1), bj1):
                j0, j1 = bj * br, min(n, (bj + 1) * br)
                st = s[:, j0 - c0 : j1 - c0]
                run.add_columns(bj, j0, j1, st, r0)
                if extreme:
                    ext[j0:j1] = pick(ext[j0:j1], st.amin(0) if largest else st.amax(0))
        out_v[r0:r1], out_i[r0:r1] = run.result(bi, r0, r1)
    return out_v, out_i, ext


def self_knn(
    x: TensorLike,
    k: int,
    *,
    metric: Metric = "ip",
    block_bytes: int = _SELF_BLOCK_BYTES,
    check_input: bool = True,
) -> KNNResult:
    r"""Exact kNN search of every row of ``x`` in ``x`` itself (all-vs-all).

    The same result as ``knn_search(x, x, k, metric=metric)`` (up to float ties, and the
    rounding of the products), in about half its multiply-adds on a CPU: the score matrix is
    symmetric, so only its pieces on and above the diagonal are computed, each serving its
    rows and, transposed, its columns; each row keeps a running selection whose entries
    enter only past its current ``k``-th best (a compiled kernel with numba, the ``speed``
    extra; torch operations otherwise). Elsewhere (CUDA) the blocked torch search runs.
    Memory: :math:`O(Nk)` plus one piece of ``block_bytes``.

    Args:
        x: Descriptors :math:`(N, D)`, numpy or torch, float.
        k: Neighbours per row, ``1 <= k <= N`` (each row itself included).
        metric: ``"ip"`` or ``"l2"`` as in :func:`knn_search` (``"l2"`` scores a row with
            itself exactly 0).
        block_bytes: Upper bound of the piece of scores held at once.
        check_input: Validate ``x`` (finite, and small enough that no score overflows:
            :func:`check_magnitude`) and ``k`` (see :func:`knn_search`).

    Returns:
        :class:`~graphrerank.typing.KNNResult` ``(scores, indices)``, each :math:`(N, k)`,
        best first, on the device of ``x``; ``indices`` are int64. A row is usually its own
        first neighbour, but not always (an exact duplicate, or for ``"ip"`` a longer vector,
        may come first).

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> self_knn(x, 2).indices
        tensor([[0, 2],
                [1, 2],
                [2, 1]])
    """
    if check_input:
        x = check_features(x, "x")
        check_in(metric, "metric", METRICS)
        n = x.shape[0]
        k = check_int(k, "k", low=1)
        if k > n:
            raise ValueError(f"k={k} is larger than x, which holds {n} item(s)")
        block_bytes = check_int(block_bytes, "block_bytes", low=1)
        check_magnitude(x, "x")
    k = int(k)
    n = x.shape[0]
    if x.device.type != "cpu":
        out = _torch_knn(x, x, k, metric, block_bytes)
    else:
        sq = x.pow(2).sum(1) if metric == "l2" else None

        def block(r0: int, r1: int, c0: int, c1: int) -> Tensor:
            s = _matmul_t(x[r0:r1], x[c0:c1])
            if metric == "ip":
                return s
            d = s.mul_(2).sub_(sq[r0:r1, None]).sub_(sq[None, c0:c1]).clamp_(max=0)
            lo, hi = max(r0, c0), min(r1, c1)
            if lo < hi:
                ar = torch.arange(lo, hi)
                d[ar - r0, ar - c0] = 0
            return d

        budget = max(1, block_bytes // x.element_size())
        v, i, _ = _symmetric_select(
            block, n, k, largest=True, dtype=x.dtype, device=x.device, budget=budget
        )
        out = KNNResult(v, i)
    return out
