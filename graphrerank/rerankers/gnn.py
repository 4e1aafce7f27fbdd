r"""GNN re-ranking (Zhang et al. 2020) as sparse message passing."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_normalized, check_same_device
from .._numba import compile_kernels, warn_kernel_failed
from .._params import MAX_ROUNDS, PROGRESS, Int, Real, setting
from .._progress import ProgressCallback
from ..graph import lists as _lists
from ..graph.lists import FeatureNodes, graph_lists, scan
from ..graph.ranking import lexsort_desc, select_topk
from ..graph.scores import ScoreMatrix
from ..graph.sparse import (
    csr_row_ids,
    csr_rows,
    csr_transpose,
    overlap_cost,
    pair_products,
    row_chunks,
)
from ..nn import gnn_propagate
from ..nn.gnn_rerank import _gnn_propagate_dense, _gnn_propagate_scipy
from ..typing import RerankResult, TensorLike
from .base import Reranker
from .kreciprocal import _score_nodes

__all__ = ["GNNRerank", "gnn_rerank"]

#: Neighbours kept per database item at fit: enough for all-vs-all rankings of length
#: ``LIST_LENGTH - SHORTLIST_MARGIN`` (100) without a second search.
LIST_LENGTH = 500

#: The dense form (one :math:`M \times M` similarity product, dense propagation, one product
#: for the scores) runs where the graph's :math:`M^2` (queries and database together) is at
#: most this many elements; the sparse form above. It keeps about four :math:`M \times M`
#: matrices (1 GiB in float32 at the limit). The crossover is measured in
#: ``benchmarks/bench_gnn.py``.
DENSE_ELEMENTS = 2**26

#: The original similarities of a block's candidate pairs come from one product of the whole
#: block once they are at least one in this many of its entries (per-pair gathers of the
#: descriptors below).
_PAIRS_PER_BLOCK = 32

#: Row blocks of the symmetric products (each computes its block's part right of the
#: diagonal; the rest is mirrored).
_GRAM_BLOCKS = 4

#: Multiply-adds of one product below which the symmetric products take it whole.
_GRAM_MIN_WORK = 2**30


#: The dense form's score product accumulates the rows of :math:`\mathbf{A} \mathbf{A}^\top`
#: from the non-zeros (compiled kernel) where this many times its multiply-adds is below
#: the dense GEMM's; else the GEMM (one scattered multiply-add costs about as much as this
#: many of a GEMM's: the break-even measured at about 50 on digits subsets of 150 to 1,797
#: items, ``benchmarks/results/gnn_speed.md``).
_SPARSE_GRAM_COST = 48

#: The compiled score-product kernels (numba, optional): ``[]`` before the first call,
#: ``[None]`` without numba or once they failed, else ``[(gram, mirror, rows)]``.
_KERNEL: list = []


def _use_dense(nodes, max_nonzeros) -> bool:
    return isinstance(nodes, FeatureNodes) and max_nonzeros is None and nodes.m**2 <= DENSE_ELEMENTS


def _gram_mix(a: Tensor, c: Tensor, lam: float) -> Tensor:
    r""":math:`(1 - \lambda)\, \mathbf{A} \mathbf{A}^\top + \lambda \mathbf{C}`, written into the
    symmetric ``C`` (its upper triangle is read; not at all for :math:`\lambda = 0`): for
    large ``A``, row blocks each take their part right of the diagonal (about
    :math:`(b + 1) / 2b` of the work of one product, ``b`` blocks) and mirror it, and the
    mixing is the GEMM's own ``beta`` (no pass of its own)."""
    m = a.shape[0]
    alpha = 1.0 - lam
    if m * m * a.shape[1] < _GRAM_MIN_WORK:  # one product is faster than a few small ones
        return c.addmm_(a, a.T, beta=lam, alpha=alpha)
    bs = -(-m // _GRAM_BLOCKS)
    for r0 in range(0, m, bs):
        r1 = min(m, r0 + bs)
        c[r0:r1, r0:].addmm_(a[r0:r1], a[r0:].T, beta=lam, alpha=alpha)
        c[r1:, r0:r1] = c[r0:r1, r1:].T
    return c


def _gram_upper_py(ptr, idx, val, cptr, cidx, cval, r0, r1, alpha, lam, out):  # pragma: no cover
    """Rows ``r0:r1`` of the upper triangle (``j >= i``) of ``lam * out + alpha * A A^T``,
    written over ``out`` (square, dense), from ``A`` as CSR (``ptr, idx, val``) and as CSC
    (``cptr, cidx, cval``, rows sorted within each column): row ``i`` is the sum over its
    non-zeros ``A[i, k]`` of ``A[i, k]`` times column ``k``'s entries of rows ``j >= i``,
    accumulated into the dense row (Gustavson's product, half of it). Row ``i`` sits at
    position ``pos[k]`` of each of its columns, as the rows are visited in order."""
    ncol = cptr.shape[0] - 1
    pos = np.empty(ncol, np.int64)
    for k in range(ncol):  # the first entry of each column in a row >= r0
        lo, hi = cptr[k], cptr[k + 1]
        while lo < hi:
            mid = (lo + hi) // 2
            if cidx[mid] < r0:
                lo = mid + 1
            else:
                hi = mid
        pos[k] = lo
    m = out.shape[1]
    for i in range(r0, r1):
        row = out[i]
        if lam == 0.0:
            for j in range(i, m):
                row[j] = 0.0
        else:
            for j in range(i, m):
                row[j] *= lam
        for p in range(ptr[i], ptr[i + 1]):
            k = idx[p]
            v = alpha * val[p]
            s = pos[k]
            for q in range(s, cptr[k + 1]):
                row[cidx[q]] += v * cval[q]
            pos[k] = s + 1


def _mirror_py(out, r0, r1):  # pragma: no cover - compiled by numba
    """``out[j, i] = out[i, j]`` for the rows ``i`` in ``r0:r1`` and ``j > i``, in tiles."""
    m = out.shape[0]
    t = 64
    for i0 in range(r0, r1, t):
        i1 = min(r1, i0 + t)
        for j0 in range(i0, m, t):
            for j in range(j0, min(m, j0 + t)):
                for i in range(i0, min(i1, j)):
                    out[j, i] = out[i, j]


def _rows_py(ptr, idx, val, bptr, bidx, bval, r0, r1, alpha, out):  # pragma: no cover
    """``out[i - r0] += alpha * A[i] B`` for the rows ``r0:r1`` of ``A`` (CSR ``ptr, idx,
    val``) and ``B`` (CSR ``bptr, bidx, bval``), each row accumulated into its dense row."""
    for i in range(r0, r1):
        row = out[i - r0]
        for p in range(ptr[i], ptr[i + 1]):
            k = idx[p]
            v = alpha * val[p]
            for q in range(bptr[k], bptr[k + 1]):
                row[bidx[q]] += v * bval[q]


def _numba_kernels():
    """The compiled kernels of the score product (:func:`_gram_upper_py`,
    :func:`_mirror_py`, :func:`_rows_py`; numba, ``cache=True``: later processes load them
    from disk), or ``None`` when numba is not importable (the torch products then run)."""
    if not _KERNEL:
        _KERNEL.append(compile_kernels(_gram_upper_py, _mirror_py, _rows_py, boundscheck=False))
    return _KERNEL[0]


def _kernel_failed(err: Exception) -> None:
    # numba could not compile or load a kernel here (no writable cache location, an
    # unsupported CPU): warn, then torch's products from now on. A compilation error comes
    # before the kernel writes anything, so the caller's buffers are intact.
    _KERNEL[:] = [None]
    warn_kernel_failed("GNN score-product", err, "torch's products", stacklevel=4)


def _kernel_for(t: Tensor):
    """The kernels when they apply to ``t`` (CPU, float32 / float64), else ``None``."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    return _numba_kernels()


def _ranges(work: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` consecutive row ranges of about equal total ``work``."""
    n = work.shape[0]
    cs = np.cumsum(work, dtype=np.float64)
    cuts = np.searchsorted(cs, cs[-1] * np.arange(1, parts) / parts) if n and cs[-1] > 0 else []
    bounds = np.unique(np.concatenate([[0], np.asarray(cuts, dtype=np.int64), [n]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def _on_threads(fn, ranges: list[tuple[int, int]]) -> None:
    """``fn(r0, r1)`` for each range, on ``torch.get_num_threads()`` threads (the kernels
    release the GIL): one stream of rows per core."""
    workers = max(1, min(torch.get_num_threads(), len(ranges)))
    if workers == 1:
        for r0, r1 in ranges:
            fn(r0, r1)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="graphrerank-gnn") as pool:
        for _ in pool.map(lambda r: fn(*r), ranges):
            pass


def _blocks_per_thread() -> int:
    return 4 * max(1, torch.get_num_threads())


def _sparse_gram_mix(a, c: Tensor, lam: float, kernels) -> Tensor | None:
    r""":func:`_gram_mix` from ``A`` as a SciPy CSR matrix (no repeated entries) by the compiled
    row-wise accumulation (:func:`_gram_upper_py`: the upper triangle, row blocks of equal
    work on a thread pool, then mirrored); ``None`` where the dense GEMM is cheaper (see
    :data:`_SPARSE_GRAM_COST`) or the kernel failed (``c`` is then unchanged)."""
    m = a.shape[0]
    at = a.tocsc()
    at.sort_indices()
    cnt = np.diff(at.indptr)
    # the multiply-adds of row i: over its columns k, the entries of rows >= i in column k
    after = np.repeat(at.indptr[1:], cnt) - np.arange(at.nnz)
    work = np.bincount(at.indices, weights=after, minlength=m)
    dense = m * m * a.shape[1]  # the GEMM's multiply-adds in _gram_mix
    if dense >= _GRAM_MIN_WORK:
        dense *= (_GRAM_BLOCKS + 1) / (2 * _GRAM_BLOCKS)
    if _SPARSE_GRAM_COST * work.sum() >= dense:
        return None
    gram, mirror, _ = kernels
    out = c.numpy()
    alpha = 1.0 - lam
    try:
        mirror(out, m, m)  # nothing to do: compiles it (a failure comes before any write)
        _on_threads(
            lambda r0, r1: gram(a.indptr, a.indices, a.data, at.indptr, at.indices, at.data,
                                r0, r1, alpha, lam, out),
            _ranges(work + 1, _blocks_per_thread()),
        )  # fmt: skip
        _on_threads(
            lambda r0, r1: mirror(out, r0, r1), _ranges(m - np.arange(m), _blocks_per_thread())
        )
    except Exception as err:
        _kernel_failed(err)
        return None
    return c


def _sparse_rows_product(ptr, idx, val, b, out: np.ndarray, r0: int, r1: int, alpha: float, rows):
    """``out += alpha * A[r0:r1] B`` (``out`` dense, ``(r1 - r0, B.shape[1])``) by the
    compiled row-wise accumulation, row ranges of equal work on a thread pool; ``A`` as CSR
    arrays, ``b`` = ``(bptr, bidx, bval)``; ``rows`` the kernel."""
    bptr, bidx, bval = b
    cs = np.concatenate([[0.0], np.cumsum(np.diff(bptr)[idx[ptr[r0] : ptr[r1]]], dtype=np.float64)])
    ends = ptr[r0 : r1 + 1] - ptr[r0]
    per_row = np.diff(cs[ends])  # the multiply-adds of each row
    _on_threads(
        lambda s0, s1: rows(ptr, idx, val, bptr, bidx, bval, r0 + s0, r0 + s1, alpha, out[s0:]),
        _ranges(per_row + 1.0, _blocks_per_thread()),
    )


def _sparse_cross_mix(a, s: Tensor, nq: int, lam: float, kernels) -> Tensor | None:
    r""":math:`(1 - \lambda)\, \mathbf{A}_q \mathbf{A}_d^\top + \lambda\, \mathbf{S}_{qd}`
    (queries ``:nq`` against the database) from ``A`` as a SciPy CSR matrix (no repeated entries) by
    the compiled row-wise accumulation; ``None`` where the dense GEMM is cheaper or the
    kernel failed."""
    m = a.shape[0]
    bt = a[nq:].tocsc()  # A_d^T as CSR: row k holds the database items of column k
    colq = np.bincount(a.indices[: a.indptr[nq]], minlength=m)
    if _SPARSE_GRAM_COST * float(colq @ np.diff(bt.indptr)) >= nq * (m - nq) * m:
        return None
    out = s[:nq, nq:].mul(lam) if lam else s.new_zeros(nq, m - nq)
    try:
        _sparse_rows_product(a.indptr, a.indices, a.data, (bt.indptr, bt.indices, bt.data),
                             out.numpy(), 0, nq, 1.0 - lam, kernels[2])  # fmt: skip
    except Exception as err:
        _kernel_failed(err)
        return None
    return out


def _dense_topk(score: Tensor, base_rows, k: int) -> RerankResult:
    """Top-``k`` per row of a dense score matrix, equal scores ordered by the base similarity
    (higher first; ``base_rows(rows)`` gives those rows of it): one ``topk`` of ``k + 1`` (an
    equal pair among them is a tie inside the top-``k`` or at its edge), then a lexicographic
    sort of the few rows with such a tie."""
    v, i = score.topk(min(k + 1, score.shape[1]), dim=1)
    rows = (v[:, 1:] == v[:, :-1]).any(1).nonzero().flatten()
    v, i = v[:, :k], i[:, :k]
    if rows.numel():
        o = lexsort_desc.__wrapped__(score[rows], base_rows(rows))[:, :k]
        i[rows] = o
        v[rows] = score[rows].gather(1, o)
    return RerankResult(v.contiguous(), i.contiguous())


def _dense_run(nodes, k: int, k1: int, k2: int, layers: int, lam: float) -> RerankResult:
    r"""The whole re-ranking in dense form (see :data:`DENSE_ELEMENTS`): exactly the formula
    of :class:`GNNRerank`, as the sparse form computes it, but in a few large operations: one
    similarity product and its ``topk``, the propagation (sparse on the CPU), one score
    product with the mixing fused in (all-vs-all: written over the similarities), one
    ``topk``. On the CPU with numba importable, the score product accumulates the rows of
    :math:`\mathbf{A} \mathbf{A}^\top` from the non-zeros of the sparse :math:`\mathbf{A}`
    (compiled, :func:`_sparse_gram_mix`) where that is cheaper than the dense GEMM
    (:data:`_SPARSE_GRAM_COST`); else :math:`\mathbf{A}` is made dense and the GEMM runs.
    The base similarities of the few rows with tied scores are recomputed."""
    nq = nodes.nq
    x = nodes.db if nq == 0 else torch.cat([nodes.q, nodes.db])
    s = _gram_mix(x, torch.empty(nodes.m, nodes.m, dtype=x.dtype, device=x.device), 0.0)
    vals, idx = s.topk(min(k1, nodes.m), dim=1)
    kernels = _kernel_for(s)
    if kernels is not None:
        # A stays sparse (SciPy CSR); the score product accumulates its rows from the
        # non-zeros, where that is cheaper than the dense GEMM
        a = _gnn_propagate_scipy(idx, vals, k1, k2, layers)
        del idx, vals
        if nq == 0:
            p = _sparse_gram_mix(a, s, lam, kernels)
            xq, xd = x, x
        else:
            p = _sparse_cross_mix(a, s, nq, lam, kernels)
            xq, xd = nodes.q, nodes.db
        if p is not None:
            del a, s
            return _dense_topk(p, lambda rows: xq[rows] @ xd.T, k)
        a = torch.from_numpy(a.toarray())
    else:
        a = _gnn_propagate_dense(idx, vals, k1, k2, layers)
        del idx, vals
    if nq == 0:
        p = _gram_mix(a, s, lam)
        xq, xd = x, x
    else:
        p = torch.addmm(s[:nq, nq:], a[:nq], a[nq:].T, beta=lam, alpha=1.0 - lam)
        xq, xd = nodes.q, nodes.db
    del a, s
    return _dense_topk(p, lambda rows: xq[rows] @ xd.T, k)


def _to_dense(c: Tensor) -> Tensor:
    """A CSR matrix (without repeated entries, as a product gives) as a dense one: one
    scatter of the stored values, twice as fast as torch's ``to_dense`` on the CPU (0.04 s
    against 0.09 s for a Market-size row block of 212 x 19,732)."""
    r, n = c.shape
    out = torch.zeros(r * n, dtype=c.dtype, device=c.device)
    flat = csr_row_ids(c).mul_(n).add_(c.col_indices())
    out.index_put_((flat,), c.values(), accumulate=False)
    return out.view(r, n)


def _csr_arrays(c: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CPU CSR tensor's arrays for the kernels, indices as int32 where they fit (a fifth
    faster than int64 at Market size)."""
    idx = np.int32 if max(c.shape[1], c.values().numel()) < 2**31 - 1 else np.int64
    return (c.crow_indices().numpy().astype(idx), c.col_indices().numpy().astype(idx),
            c.values().numpy())  # fmt: skip


def _block_product(aq: Tensor, ad_t: Tensor, r0: int, r1: int, kernel_args) -> Tensor:
    """Rows ``r0:r1`` of ``aq @ ad_t`` (both CSR), dense: by the compiled row-wise
    accumulation (``kernel_args``: the CSR arrays of both and the kernel; 3x torch's CSR x
    CSR product and its scatter at Market size), else torch's product made dense."""
    if kernel_args is not None and _KERNEL and _KERNEL[0] is not None:
        (ptr, idx, val), b, rows = kernel_args
        out = np.zeros((r1 - r0, ad_t.shape[1]), dtype=val.dtype)
        try:
            _sparse_rows_product(ptr, idx, val, b, out, r0, r1, 1.0, rows)
        except Exception as err:
            _kernel_failed(err)
        else:
            return torch.from_numpy(out)
    return _to_dense(csr_rows(aq, r0, r1) @ ad_t)


def _rank(a: Tensor, nq: int, short_idx, short_s, k: int, lam: float, nodes, budget: int, bar=None):
    """Top-``k`` database items of each query row by the GNN score (see :class:`GNNRerank`)."""
    m = a.shape[0]
    nd = m - nq
    aq = a if nq == 0 else csr_rows(a, 0, nq)
    ad_t = csr_transpose(a if nq == 0 else csr_rows(a, nq, m))

    def score(p: Tensor, cos: Tensor) -> Tensor:
        return (1 - lam) * p + lam * cos if lam else p

    def min_overlap(kth: Tensor, cos: Tensor) -> Tensor:
        if lam == 1:
            return torch.full_like(kth, float("inf"))
        p = (kth - lam * cos) / (1 - lam)
        return p - 1e-6 * p.abs() - 1e-12  # err low: candidates are re-scored

    # rows of about equal work: each row's share of the sparse product
    cost = overlap_cost(aq, ad_t)
    kernels = _kernel_for(a)
    kernel_args = None
    if kernels is not None:
        kernel_args = (_csr_arrays(aq), _csr_arrays(ad_t), kernels[2])
    nrows = aq.shape[0]
    scores = torch.empty(nrows, k, dtype=a.dtype, device=a.device)
    indices = torch.empty(nrows, k, dtype=torch.long, device=a.device)
    for r0, r1 in row_chunks(cost, 4 * budget, max(1, budget // nd)):
        # A_q A_g^T for these rows: one sparse x sparse product, then a dense block
        buf = _block_product(aq, ad_t, r0, r1, kernel_args)

        def base_of(r: Tensor, c: Tensor, r0=r0, r1=r1) -> Tensor:
            if isinstance(nodes, FeatureNodes) and r.numel() * _PAIRS_PER_BLOCK >= (r1 - r0) * nd:
                # many pairs: one product for the whole block beats per-pair gathers
                block = nodes.block_fn("q" if nq else "d", "d")(r0, r1, 0, nd)
                return block[r, c]
            return nodes.pairs(r + r0, c + nq)

        # unchecked: the block and the shortlists are built here (the checks of the public
        # function read each block's every element)
        s, i = select_topk.__wrapped__(
            buf, short_idx[r0:r1], short_s[r0:r1], k, score, base_of, min_overlap,
            higher_base_is_better=True, score_uses_base=bool(lam),
        )  # fmt: skip
        scores[r0:r1], indices[r0:r1] = s, i
        if bar is not None:
            bar.update(r1 - r0)
    return RerankResult(scores, indices)


def _run(
    nodes, k, k1, k2, layers, lambda_value, max_nonzeros, database=None, budget=None, bar=None
):
    budget = _lists.BLOCK_ELEMENTS if budget is None else budget
    m = nodes.m
    lists = graph_lists(
        nodes,
        graph_k=min(m, k1),
        length=min(m, max(k1, LIST_LENGTH)),
        k=k,
        largest=True,
        extreme=False,
        database=database,
        budget=budget,
    )
    a = gnn_propagate(lists["indices"], lists["values"], k1, k2, layers, max_nonzeros)
    return _rank(
        a, nodes.nq, lists["short_indices"], lists["short_values"], k, float(lambda_value),
        nodes, budget, bar,
    )  # fmt: skip


class GNNRerank(Reranker):
    r"""GNN re-ranking from the `"Understanding Image Retrieval Re-Ranking: A Graph Neural
    Network Perspective" <https://arxiv.org/abs/2012.07620>`_ paper (Zhang et al. 2020), with
    the semantics of the official code, as sparse message passing.

    Over the :math:`M` items of one graph (queries and database together; L2-normalised, so
    :math:`s_{ij} = \mathbf{x}_i^\top \mathbf{x}_j` is the cosine), with :math:`R_i^{k}` the
    :math:`k` most similar items of :math:`i` (itself included):

    .. math::
        \mathbf{A}^{(0)}_{ij} = [\,j \in R_i^{k_1}\,], \qquad
        \mathbf{A}^{(t+1)}_i = \operatorname{normalize}\Big(\sum_{j \in R_i^{k_2}} s_{ij}^2\,
            \big(\mathbf{A}^{(t)} + \mathbf{A}^{(t)\top}\big)_j\Big)

    for ``layers`` steps (:class:`~graphrerank.nn.GNNRerankConv`; none when :math:`k_2 = 1`,
    as in the reference, so that the score is then an overlap count), and

    .. math::
        \text{score}(q, g) = (1 - \lambda)\, \mathbf{A}_q^\top \mathbf{A}_g + \lambda\, s_{qg}.

    :math:`\lambda = 0` is the published (2021) form; the current reference code mixes in the
    original cosine with :math:`\lambda = 0.3`. Equal scores are ordered by the original
    cosine (with :math:`\lambda = 0`, all database items whose propagated rows share nothing
    with the query's score 0; they follow the others in the order of the plain ranking).

    Transductive: ``rerank(None)`` builds one graph over the :math:`N` database items. Strict
    leave-one-out (``rerank(None, k, leave_one_out="strict")``) needs no other graph: query
    :math:`i` with the other :math:`N - 1` items as database is that same graph, so it is the
    all-vs-all ranking with item :math:`i` removed from its own list, exactly. As for
    :class:`~graphrerank.rerankers.KReciprocal`, query-query similarities enter every query's
    neighbourhood, so queries from another modality or encoder do not fit (on the PKU-Sketch
    re-ID file, re-ranking the 50 sketches together lowers the mAP from 21.7 to 17.5 with
    :math:`\lambda = 0.3`); ``asymmetric=True`` is refused. Two forms, picked by the
    graph's size :math:`M` (queries and database together), give the same top-``k`` (up to
    float rounding): where :math:`M^2` is at most :data:`DENSE_ELEMENTS` (about 8,000 nodes;
    descriptors, ``max_nonzeros=None``), a few large dense operations (one similarity
    product, the layers, one product for the scores, one ``topk``), as the reference
    computes it (on the CPU with numba, the score product from the non-zeros of the
    propagated rows, compiled, where that is cheaper than the dense product); above, the adjacency stays sparse (its rows grow with each
    layer: about :math:`k_1`, then :math:`2 k_2 k_1`, ... non-zeros), the final scores are
    summed over pairs that share a non-zero column only, and the top-``k`` is taken over
    those pairs and each query's nearest items, which is exactly the top-``k`` of the dense
    formula. ``max_nonzeros`` bounds the rows for very large graphs (an approximation; off
    by default; sparse form only). For the sparse form, :meth:`fit` keeps each database
    item's 500 most similar items, so that ``rerank(None, k)`` with ``k <= 100`` needs no
    second search (for a small database it keeps the descriptors only, and scans the lists
    when something asks for them).

    Args:
        k1: Length :math:`k_1` of the initial neighbour lists (reference 26).
        k2: Number :math:`k_2` of neighbours messages come from (reference 7).
        layers: Propagation steps (2 in the reference).
        lambda_value: Weight :math:`\lambda \in [0, 1]` of the original cosine (0: the 2021
            form; the current reference uses 0.3).
        max_nonzeros: Keep only this many largest entries per row of :math:`\mathbf{A}` after
            each layer (``None``: exact).
        progress: Progress of long re-rankings: ``None`` (a bar on a terminal, once a step
            runs longer than a second), ``True`` / ``False``, or a callback
            ``callback(done, total)``.

    Shapes:
        - **fit:** database :math:`(N, D)`, rows L2-normalised
        - **rerank:** queries :math:`(Q, D)` or ``None`` :math:`\to` scores, indices
          :math:`(Q, k)`, best first

    Raises:
        ValueError: invalid settings (at :meth:`fit`), descriptors not L2-normalised, bad
            inputs, or ``asymmetric=True``.

    Example:
        >>> angles = torch.tensor([0.0, 0.1, 0.25, 0.45, 1.5, 1.6, 1.8, 2.1], dtype=torch.float64)
        >>> x = torch.stack([angles.cos(), angles.sin()], 1)  # two arcs on the unit circle
        >>> q = torch.tensor([[0.07], [1.72]], dtype=torch.float64)  # no equal cosines
        >>> q = torch.cat([q.cos(), q.sin()], 1)
        >>> out = GNNRerank(k1=3, k2=2).fit(x).rerank(q, k=5)
        >>> out.indices
        tensor([[1, 0, 2, 3, 4],
                [6, 7, 5, 4, 3]])
        >>> out.scores
        tensor([[1.0000, 0.9890, 0.9709, 0.7812, 0.0000],
                [1.0000, 0.9672, 0.7384, 0.7377, 0.0000]], dtype=torch.float64)

    See Also:
        :func:`gnn_rerank` (the function form).
    """

    transductive = True
    accepts_scores = True
    needs_query_similarity = True
    #: Strict leave-one-out: the graph of query ``i`` and the other ``N - 1`` items is the
    #: all-vs-all graph, so it is that ranking without the own entry (exact).
    strict_leave_one_out = "own_entry"

    k1: int = setting(26, Int(1))
    k2: int = setting(7, Int(1, high="k1"))
    layers: int = setting(2, Int(0, MAX_ROUNDS))
    lambda_value: float = setting(0.0, Real(0.0, 1.0))
    max_nonzeros: int | None = setting(None, Int(1) | None)
    progress: bool | ProgressCallback | None = setting(None, PROGRESS)

    @classmethod
    def _test_params(cls):
        return {"k1": 8, "k2": 3}

    def _nodes(self, queries, database=None):
        db = self.database_ if database is None else database
        if isinstance(db, ScoreMatrix):
            return _score_nodes(db, queries, "GNN re-ranking", "similarity")
        return FeatureNodes(queries, db, "ip")

    def _fit(self, database: Tensor) -> None:
        if not isinstance(database, ScoreMatrix):
            check_normalized(database, "database")
        if isinstance(database, ScoreMatrix) or database.shape[0] ** 2 > DENSE_ELEMENTS:
            self._scan_database(database)
        # else the dense form computes everything from the descriptors at rerank; the lists
        # are scanned when something asks for them (the sparse form, ``propagated``)

    def _scan_database(self, database) -> None:
        n = database.shape[0]
        nodes = self._nodes(None, database)
        length = min(n, max(self.k1, LIST_LENGTH))
        g = scan(nodes.block_fn("d", "d"), n, n, length, largest=True,
                    device=database.device, dtype=database.dtype)  # fmt: skip
        self.neighbors_ = g["row_indices"]
        self.neighbor_similarities_ = g["row_values"]

    def _database_lists(self) -> dict[str, Tensor]:
        if not hasattr(self, "neighbors_"):
            self._scan_database(self.database_)
        return {"indices": self.neighbors_, "values": self.neighbor_similarities_}

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        if queries is not None and not isinstance(queries, ScoreMatrix):
            check_normalized(queries, "queries")
        nodes = self._nodes(queries)
        with self._progress_bar(nodes.nq or nodes.nd, "GNNRerank") as bar:
            if _use_dense(nodes, self.max_nonzeros):
                out = _dense_run(nodes, k, self.k1, self.k2, self.layers, float(self.lambda_value))
                if bar is not None:
                    bar.update(nodes.nq or nodes.nd)
                return out
            return _run(nodes, k, self.k1, self.k2, self.layers, self.lambda_value,
                        self.max_nonzeros, self._database_lists(), bar=bar)  # fmt: skip

    def propagated(self) -> Tensor:
        r"""The propagated adjacency :math:`\mathbf{A}` of the database graph (all-vs-all),
        a ``torch.sparse_csr`` :math:`(N, N)` tensor."""
        self._check_fitted()
        if not hasattr(self, "propagated_"):
            lists = self._database_lists()
            self.propagated_ = gnn_propagate(
                lists["indices"], lists["values"], self.k1, self.k2, self.layers,
                self.max_nonzeros,
            )  # fmt: skip
        return self.propagated_

    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        r"""The GNN re-ranking score :math:`(1 - \lambda) \mathbf{A}_i^\top \mathbf{A}_j +
        \lambda s_{ij}` of each database pair (row :math:`i`, candidate :math:`j`) in the
        all-vs-all graph of the database; ``-inf`` at padding."""
        a = self.propagated()
        check_same_device(database=self.database_, rows=rows, candidates=candidates)
        b, m = candidates.shape
        valid = candidates >= 0
        r = rows[:, None].expand(b, m)[valid]
        c = candidates[valid]
        lam = float(self.lambda_value)
        sim = pair_products(a, r, c, "mul", _lists.BLOCK_ELEMENTS)
        if lam:
            cos = self._nodes(None).pairs(r, c)
            sim = (1 - lam) * sim + lam * cos
        out = torch.full((b, m), float("-inf"), dtype=a.dtype, device=a.device)
        out[valid] = sim
        return out


def gnn_rerank(
    queries: TensorLike | None,
    database: TensorLike,
    k: int = 100,
    **settings: Any,
) -> RerankResult:
    r"""GNN re-ranking of ``database`` for ``queries`` (``None``: all-vs-all), the function
    form of :class:`GNNRerank`: ``GNNRerank(**settings).fit(database).rerank(queries, k)``
    (settings ``k1``, ``k2``, ``layers``, ``lambda_value``, ``max_nonzeros``).

    Example:
        >>> angles = torch.tensor([0.0, 0.1, 0.25, 0.45, 1.5, 1.6, 1.8, 2.1])
        >>> x = torch.stack([angles.cos(), angles.sin()], 1)
        >>> gnn_rerank(None, x, k=3, k1=3, k2=2, lambda_value=0.3).indices
        tensor([[0, 1, 2],
                [1, 0, 2],
                [2, 1, 0],
                [3, 2, 1],
                [4, 5, 6],
                [5, 4, 6],
                [6, 5, 4],
                [7, 6, 5]])
    """
    return GNNRerank(**settings).fit(database).rerank(queries, k)
