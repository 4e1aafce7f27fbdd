r"""Offline diffusion with late truncation (Yang et al., AAAI 2019).

The offline step solves, for every database node :math:`i`, the diffusion system restricted to
its ``truncation`` nearest nodes :math:`T_i` and keeps the solution as row :math:`i` of a sparse
matrix :math:`\mathbf{C}`; a query is then answered by a sparse combination of the rows of its
nearest database items. The systems are solved block by block; on a CPU, blocks run side
by side on a thread pool of ``torch.get_num_threads()`` workers. With numba installed (the
``speed`` extra), a CPU solves each node's system in compiled code: its sub-block gathered
breadth-first from the node (only the nodes connected to it inside :math:`T_i`, the only
ones its solution reaches) and conjugate gradients in float64. Otherwise (and on other
devices) the sub-blocks of a block of nodes are stacked into one block-diagonal sparse
operator solved by one batched conjugate-gradient iteration (one system per row).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from .._checks import (
    check_csr,
    check_features,
    check_in,
    check_index,
    check_int,
    check_normalized,
    check_real,
    check_tensor,
)
from .._numba import compile_kernels, warn_kernel_failed
from .._progress import Progress, ProgressCallback, progress_options
from ..graph.build import mutual_knn_graph
from ..graph.index import KNNIndex, database_index
from ..graph.lists import self_first, truncation_lists
from ..graph.scores import ScoreIndex, ScoreMatrix
from ..graph.sparse import csr
from ..typing import SEARCHES, Backend, KNNResult, Search, TensorLike
from .cg import _cg_rows, _not_spd
from .operators import laplacian_alpha

__all__ = [
    "late_truncation",
    "offline_diffusion",
    "offline_diffusion_scores",
    "self_first",
]

#: ``graph(x, candidates) -> Data``: builds the affinity graph of the nodes ``x`` from each
#: node's nearest nodes ``candidates`` (a :class:`~graphrerank.typing.KNNResult`, best first).
GraphBuilder = Callable[[Tensor, KNNResult], Data]

#: Gathered matrix entries per CG block, and lookup-table entries, when ``block_size`` is auto.
_BLOCK_ENTRIES = 2**21
_TABLE_ENTRIES = 2**26
#: Rows checked at once (bounds temporaries of size rows x T).
_CHECK_ROWS = 2**14


def _flatnonzero(x: Tensor) -> Tensor:
    """Flat indices of the non-zero entries (numpy's is several times faster on a CPU)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(x.numpy()))
    return x.reshape(-1).nonzero().squeeze(1)


class _Rows:
    """Off-diagonal entries of a CSR matrix in a padded (ELL) layout for fast row gathers."""

    def __init__(self, laplacian: Tensor) -> None:
        n = laplacian.shape[0]
        crow = laplacian.crow_indices().long()
        col = laplacian.col_indices().long()
        val = laplacian.values()
        device = val.device
        deg = crow[1:] - crow[:-1]
        row_of = torch.repeat_interleave(torch.arange(n, device=device), deg)
        slot = torch.arange(col.numel(), device=device) - crow[:-1].index_select(0, row_of)
        self.n = n
        self.width = max(1, int(deg.max())) if n else 1
        # one extra all-padding row (index n) for padded list entries; padding column = n
        self.cols = torch.full((n + 1, self.width), n, dtype=torch.int32, device=device)
        self.vals = torch.zeros(n + 1, self.width, dtype=val.dtype, device=device)
        flat = row_of * self.width + slot
        self.cols.view(-1).index_copy_(0, flat, col.to(torch.int32))
        self.vals.view(-1).index_copy_(0, flat, val)


def _solve_block_torch(
    rows: _Rows,
    table: Tensor,
    nodes: Tensor,
    lists: Tensor,
    tol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor]:
    """:func:`_solve_block` in torch (any device): return (sorted ids, c).

    The sub-blocks are gathered from the padded rows of ``L`` for the members of each
    :math:`T_i`, their global columns mapped to local positions through ``table`` (a
    ``(B, N + 1)`` lookup, 0 outside the lists), and stacked into one block-diagonal CSR
    operator whose rows and columns follow the sorted global ids of each list.
    """
    b, t = lists.shape
    n, width = rows.n, rows.width
    device = lists.device
    ids = lists.sort(dim=1).values  # -1 padding first, then ascending global ids
    valid = ids >= 0
    member = torch.where(valid, ids, n).reshape(-1)
    base = torch.arange(b, device=device)[:, None] * (n + 1)
    slots = (base + torch.where(valid, ids, n)).reshape(-1)
    # table[(block b, global id)] = 1 + position in the stacked system (b * t + rank), else 0
    pos = torch.arange(1, b * t + 1, dtype=torch.int32, device=device)
    table.index_copy_(0, slots, pos.masked_fill(~valid.reshape(-1), 0))
    key = rows.cols.index_select(0, member)  # (b * t, width) global columns, n = padding
    key += base.repeat_interleave(t, dim=0).to(torch.int32)
    loc = table.index_select(0, key.view(-1))
    table.index_fill_(0, slots, 0)
    inside = loc > 0
    nz = _flatnonzero(inside)  # entries inside the lists, row by row, columns ascending
    c = loc.index_select(0, nz) - 1
    v = rows.vals.index_select(0, member).view(-1).index_select(0, nz)
    bcrow = torch.zeros(b * t + 1, dtype=torch.int32, device=device)
    bcrow[1:] = inside.view(b * t, width).sum(1, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    M = csr(bcrow, c, v, (b * t, b * t))
    self_pos = (ids == nodes[:, None]).to(torch.int8).argmax(dim=1)
    rhs = torch.zeros(b, t, dtype=v.dtype, device=device)
    rhs[torch.arange(b, device=device), self_pos] = 1

    if device.type == "cpu":  # SciPy's compiled CSR product: faster, and it frees the GIL
        import scipy.sparse as sp

        Ms = sp.csr_matrix((v.numpy(), c.numpy(), bcrow.numpy()), shape=(b * t, b * t))

        def op(X: Tensor) -> Tensor:  # X: (b, t), row j is node j's system
            return torch.from_numpy(Ms @ X.numpy().reshape(-1)).view(b, t)

    else:

        def op(X: Tensor) -> Tensor:
            return torch.mv(M, X.reshape(-1)).view(b, t)

    # one row per node: contiguous row-wise reductions, few large operations per iteration
    return ids, _cg_rows(op, rhs, tol, max_iter, name="laplacian")


def _solve_block_cpu(
    cols: np.ndarray,
    vals: np.ndarray,
    table: np.ndarray,
    nodes: np.ndarray,
    lists: np.ndarray,
    tol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor]:
    """:func:`_solve_block` in NumPy / SciPy on a CPU (its gathers are a little faster
    than torch's ``index_select`` on small int32 tables): ``cols`` / ``vals`` the padded rows
    of :class:`_Rows` as arrays, ``table`` a flat int32 lookup of ``B * (N + 1)`` zeros."""
    import scipy.sparse as sp

    b, t = lists.shape
    n1, width = cols.shape
    n = n1 - 1
    ids = np.sort(lists, axis=1)  # -1 padding first, then ascending global ids
    valid = ids >= 0
    member = np.where(valid, ids, n).reshape(-1)
    base = np.arange(b, dtype=np.int32) * np.int32(n1)
    slots = (member.reshape(b, t) + base[:, None]).reshape(-1)
    pos = np.arange(1, b * t + 1, dtype=np.int32)
    pos[~valid.reshape(-1)] = 0
    table[slots] = pos
    key = cols[member]  # (b * t, width) global columns, n = padding
    key += np.repeat(base, t)[:, None]
    loc = table[key]
    table[slots] = 0
    inside = loc > 0
    nz = np.flatnonzero(inside)  # entries inside the lists, row by row, columns ascending
    c = loc.reshape(-1)[nz]
    c -= 1
    v = vals[member].reshape(-1)[nz]
    bcrow = np.zeros(b * t + 1, dtype=np.int32)
    np.cumsum(np.count_nonzero(inside, axis=1), out=bcrow[1:])
    Ms = sp.csr_matrix((v, c, bcrow), shape=(b * t, b * t))
    rhs = np.zeros((b, t), dtype=vals.dtype)
    rhs[np.arange(b), (ids == nodes[:, None]).argmax(axis=1)] = 1

    def op(X: Tensor) -> Tensor:  # X: (b, t), row j is node j's system
        return torch.from_numpy(Ms @ X.numpy().reshape(-1)).view(b, t)

    return torch.from_numpy(ids), _cg_rows(op, torch.from_numpy(rhs), tol, max_iter, "laplacian")


_KERNEL: list = []
#: Systems of fewer nodes take the NumPy / SciPy solver until the compiled kernel has run
#: once in this process: loading it from numba's cache costs about 0.47 s, which the
#: kernel's speed repays from about 1,800 nodes (``benchmarks/results/startup.md``).
_KERNEL_MIN_NODES = 2048
_KERNEL_RAN: list = []  # [True] once the kernel has solved a block in this process


def _numba_kernel() -> Callable | None:
    """The compiled per-node gather + CG of :func:`_solve_nodes_numba`, or ``None`` when
    numba is not importable (the NumPy / SciPy path then runs)."""
    if not _KERNEL:
        compiled = compile_kernels(_solve_nodes_numba)
        _KERNEL.append(compiled and compiled[0])
    return _KERNEL[0]


def _solve_nodes_numba(cols, vals, ids, nodes, mark, tol_eff, max_iter, out):  # pragma: no cover
    """For each node ``j`` of a block: the rows of ``L[T_j, T_j]`` gathered from the padded
    rows ``cols`` / ``vals`` (``(N + 1, W)``, padding column ``N``) through ``mark`` (``N + 1``
    int32 zeros, ``1 +`` local position while a node is solved, restored on return), then conjugate gradients from 0 on ``e_self``
    with the stopping test of :func:`~graphrerank.diffusion.cg._cg_rows`, in float64;
    ``ids`` ``(B, T)`` the sorted lists (``-1`` first). Writes ``out[j]`` and returns -1, or
    the first node whose system is not positive definite.

    The solution lives on the nodes connected to the node itself inside ``T_j`` (CG from 0 on
    ``e_self`` never reaches the others: their entries stay exactly 0), so only their rows
    are gathered (breadth-first from the node) and iterated, in ascending order (the same
    sums as over all rows)."""
    n1, width = cols.shape
    b, t = ids.shape
    rstart = np.empty(t, np.int64)
    rend = np.empty(t, np.int64)
    ind = np.empty(t * width, np.int32)
    val = np.empty(t * width, np.float64)
    x = np.zeros(t, np.float64)
    r = np.zeros(t, np.float64)
    p = np.zeros(t, np.float64)
    ap = np.zeros(t, np.float64)
    seen = np.zeros(t, np.bool_)
    queue = np.empty(t, np.int64)
    act = np.empty(t, np.int64)
    for j in range(b):
        row = ids[j]
        self_k = -1
        for k in range(t):
            if row[k] >= 0:
                mark[row[k]] = k + 1
                if row[k] == nodes[j]:
                    self_k = k
        seen[self_k] = True
        queue[0] = self_k
        head, tail, nnz = 0, 1, 0
        while head < tail:
            k = queue[head]
            head += 1
            u = row[k]
            rstart[k] = nnz
            for s in range(width):
                m = mark[cols[u, s]] - 1
                if m >= 0:
                    ind[nnz] = m
                    val[nnz] = vals[u, s]
                    nnz += 1
                    if not seen[m]:
                        seen[m] = True
                        queue[tail] = m
                        tail += 1
            rend[k] = nnz
        for k in range(t):
            if row[k] >= 0:
                mark[row[k]] = 0
        nact = 0
        for k in range(t):
            if seen[k]:
                act[nact] = k
                nact += 1
                seen[k] = False
        r[self_k] = 1.0
        p[self_k] = 1.0
        rr = 1.0
        thresh = tol_eff * tol_eff * rr
        done = rr <= thresh
        it = 0
        while not done and it < max_iter:
            pap = 0.0
            for a in range(nact):
                k = act[a]
                acc = 0.0
                for e in range(rstart[k], rend[k]):
                    acc += val[e] * p[ind[e]]
                ap[k] = acc
                pap += p[k] * acc
            if pap <= 0:
                return j
            step = rr / pap
            rr_new = 0.0
            for a in range(nact):
                k = act[a]
                x[k] += step * p[k]
                r[k] -= step * ap[k]
                rr_new += r[k] * r[k]
            beta = rr_new / rr
            for a in range(nact):
                k = act[a]
                p[k] = r[k] + beta * p[k]
            rr = rr_new
            done = rr_new <= thresh
            it += 1
        for k in range(t):
            out[j, k] = 0.0
        for a in range(nact):  # write the row, and zero the work vectors for the next node
            k = act[a]
            out[j, k] = x[k]
            x[k] = 0.0
            r[k] = 0.0
            p[k] = 0.0
    return -1


def _solve_block(
    rows: _Rows,
    table: Tensor,
    nodes: Tensor,
    lists: Tensor,
    tol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor]:
    """Solve ``L[T_i, T_i] c = e_i`` for the nodes of one block; return (sorted ids, c):
    on a CPU by the compiled per-node kernel (numba) when it is importable and the system
    has ``_KERNEL_MIN_NODES`` nodes (or the kernel has run before), else by NumPy / SciPy
    (:func:`_solve_block_cpu`); elsewhere by torch (:func:`_solve_block_torch`).
    ``table`` holds at least ``N + 1`` int32 zeros (restored on return)."""
    if lists.device.type != "cpu":
        return _solve_block_torch(rows, table, nodes, lists, tol, max_iter)
    cols, vals = rows.cols.numpy(), rows.vals.numpy()
    lst = lists.numpy().astype(np.int64, copy=False)
    kernel = _numba_kernel() if rows.n >= _KERNEL_MIN_NODES or _KERNEL_RAN else None
    if kernel is None:
        return _solve_block_cpu(cols, vals, table.numpy(), nodes.numpy(), lst, tol, max_iter)
    ids = np.sort(lst, axis=1)
    out = np.empty(ids.shape, dtype=vals.dtype)
    tol_eff = max(float(tol), float(np.finfo(vals.dtype).eps))  # as in _cg_rows
    mark = table.numpy()[: rows.n + 1]
    try:
        status = kernel(cols, vals, ids, nodes.numpy(), mark, tol_eff, max_iter, out)
    except Exception as err:
        # numba could not compile or load the kernel here (no writable cache location, an
        # unsupported CPU): warn, then the NumPy / SciPy path from now on (the same systems)
        _KERNEL[:] = [None]
        warn_kernel_failed("offline-diffusion", err, "the NumPy / SciPy solver")
        return _solve_block_cpu(cols, vals, table.numpy(), nodes.numpy(), lst, tol, max_iter)
    _KERNEL_RAN[:] = [True]
    if status >= 0:
        raise _not_spd("laplacian")
    return torch.from_numpy(ids), torch.from_numpy(out)


def _workers(device: torch.device, blocks: int) -> int:
    """Threads solving blocks side by side: on a CPU, torch's thread count (each block's
    operations are small, so one stream per core beats intra-op parallelism, which on a
    loaded machine waits a scheduler slice per operation); one elsewhere."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), blocks))


def late_truncation(
    laplacian: Tensor,
    lists: Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 20,
    block_size: int | None = None,
    progress: bool | ProgressCallback | None = None,
) -> Tensor:
    r"""Solve the late-truncated offline diffusion systems of all nodes.

    For every node :math:`i` with truncation list :math:`T_i` (node :math:`i` first), solve

    .. math::
        \mathbf{L}_\alpha[T_i, T_i]\, \mathbf{c}_i = \mathbf{e}_i

    on the sub-block of the *globally* normalised :math:`\mathbf{L}_\alpha` (not re-normalised),
    by conjugate gradients from :math:`\mathbf{c} = 0`, and store :math:`\mathbf{c}_i` as row
    :math:`i` of :math:`\mathbf{C}` (columns :math:`T_i`). Exact zeros are not stored.

    Nodes are solved in blocks (side by side on a thread pool of ``torch.get_num_threads()``
    workers on a CPU). With numba importable, a CPU solves each node in compiled code: the
    rows of :math:`T_i` connected to :math:`i` inside :math:`T_i` (breadth-first from
    :math:`i`; the others' entries of :math:`\mathbf{c}_i` stay exactly 0) and CG in float64
    (stored in the dtype of ``laplacian``). Otherwise one batched conjugate-gradient
    iteration solves a block: the sub-blocks are gathered from the CSR rows of :math:`T_i`
    (global column ids mapped to local positions, entries outside :math:`T_i` dropped) into
    one block-diagonal sparse operator, one right-hand side per node, so each node keeps its
    own CG step sizes.

    Args:
        laplacian: :math:`\mathbf{L}_\alpha` as an :math:`(N, N)` ``torch.sparse_csr`` tensor,
            symmetric positive definite on every sub-block.
        lists: :math:`(N, T)` int64 truncation lists, ``lists[i]`` holding :math:`i` and
            ``-1`` for padding (see :func:`self_first`).
        tol: CG relative residual tolerance (reference 1e-6).
        max_iter: CG iteration cap (reference 20).
        block_size: Nodes per CG block; by default chosen so that a block gathers about two
            million matrix entries.
        progress: ``None`` (a bar on a terminal only), ``True`` / ``False``, or a callback
            ``callback(done, total)`` called after each block.

    Returns:
        :math:`\mathbf{C}` as an :math:`(N, N)` ``torch.sparse_csr`` tensor with at most
        :math:`T` entries per row, columns sorted, on the device of ``laplacian``; int32
        indices when they fit.

    Raises:
        ValueError: shapes disagree or a node is missing from its own list.

    Example:
        >>> A = torch.tensor([[1.0, -0.5, 0.0], [-0.5, 1.0, -0.5], [0.0, -0.5, 1.0]])
        >>> lists = torch.tensor([[0, 1], [1, 0], [2, 1]])
        >>> C = late_truncation(A.to_sparse_csr(), lists, tol=1e-12)
        >>> C.to_dense()  # row 0 solves [[1, -.5], [-.5, 1]] c = e_0
        tensor([[1.3333, 0.6667, 0.0000],
                [0.6667, 1.3333, 0.0000],
                [0.0000, 0.6667, 1.3333]])
    """
    if not isinstance(laplacian, Tensor) or laplacian.layout != torch.sparse_csr:
        raise TypeError(
            "laplacian must be a torch.sparse_csr tensor, got "
            f"{getattr(laplacian, 'layout', type(laplacian).__name__)}"
        )
    laplacian = check_csr(laplacian, "laplacian", square=True)
    if not isinstance(lists, Tensor):
        raise TypeError(f"lists must be an int32 or int64 tensor, got {type(lists).__name__}")
    n = laplacian.shape[0]
    if laplacian.dim() != 2 or laplacian.shape[1] != n:
        raise ValueError(f"laplacian must be square, got shape {tuple(laplacian.shape)}")
    if lists.dim() != 2 or lists.shape[0] != n:
        raise ValueError(f"lists must be ({n}, T), got shape {tuple(lists.shape)}")
    if lists.device != laplacian.device:
        raise ValueError(f"lists are on {lists.device} but laplacian is on {laplacian.device}")
    if lists.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lists must be int32 or int64, got {lists.dtype}")
    if n and (int(lists.min()) < -1 or int(lists.max()) >= n):
        raise ValueError(f"lists must hold node ids in [0, {n - 1}] or -1")
    nodes = torch.arange(n, device=lists.device)
    for s in range(0, n, _CHECK_ROWS):  # in chunks: no (N, T) temporaries
        has_self = (lists[s : s + _CHECK_ROWS] == nodes[s : s + _CHECK_ROWS, None]).any(dim=1)
        if not bool(has_self.all()):
            bad = s + int((~has_self).nonzero()[0])
            raise ValueError(f"every node must be in its own truncation list; node {bad} is not")
    tol = check_real(tol, "tol", low=0)
    max_iter = check_int(max_iter, "max_iter", low=0)
    t = lists.shape[1]
    rows = _Rows(laplacian)
    val = rows.vals
    if block_size is None:
        block_size = max(1, min(n, _BLOCK_ENTRIES // (t * rows.width), _TABLE_ENTRIES // (n + 1)))
    else:
        block_size = check_int(block_size, "block_size", low=1)
    # int32 lookup keys: a block's table must stay below 2**31 entries
    block_size = max(1, min(block_size, (2**31 - 1) // (n + 1)))
    table = torch.zeros(min(block_size, n) * (n + 1), dtype=torch.int32, device=lists.device)
    index_dtype = torch.int32 if n * t < 2**31 - 1 else torch.int64
    out_col = torch.empty(n * t, dtype=index_dtype, device=lists.device)
    out_val = torch.empty(n * t, dtype=val.dtype, device=lists.device)
    counts = torch.empty(n, dtype=torch.long, device=lists.device)
    fill = 0
    starts = list(range(0, n, block_size))
    workers = _workers(lists.device, len(starts))
    tables = [table] + [torch.zeros_like(table) for _ in range(workers - 1)]
    free = list(range(workers))
    lock = threading.Lock()

    def solve(s: int) -> tuple[Tensor, Tensor, Tensor]:
        with lock:
            slot = free.pop()
        try:
            e = min(n, s + block_size)
            ids, c = _solve_block(rows, tables[slot], nodes[s:e], lists[s:e].long(), tol, max_iter)
        finally:
            with lock:
                free.append(slot)
        keep = (ids >= 0) & (c != 0)
        return keep.sum(1), ids[keep].to(index_dtype), c[keep]

    show, callback = progress_options(progress)
    with Progress(n, "offline diffusion", show=show, callback=callback) as bar:
        if workers == 1:
            results = map(solve, starts)
            pool = None
        else:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="graphrerank-offline")
            results = pool.map(solve, starts)
        try:
            for s, (cnt, cols, vals) in zip(starts, results, strict=True):
                e = min(n, s + block_size)
                m = cols.numel()
                out_col[fill : fill + m] = cols
                out_val[fill : fill + m] = vals
                counts[s:e] = cnt
                fill += m
                bar.update(e - s)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    crow_c = torch.zeros(n + 1, dtype=index_dtype, device=lists.device)
    crow_c[1:] = counts.cumsum(0)
    if fill < 0.5 * n * t:  # give back the unused tail (a copy at most half the buffer)
        out_col, out_val = out_col[:fill].clone(), out_val[:fill].clone()
    else:
        out_col, out_val = out_col[:fill], out_val[:fill]
    return csr(crow_c, out_col, out_val, (n, n))


def offline_diffusion(
    x: TensorLike | ScoreMatrix,
    *,
    kd: int = 50,
    truncation: int = 1000,
    alpha: float = 0.99,
    gamma: float = 3.0,
    tol: float = 1e-6,
    max_iter: int = 20,
    graph: Data | GraphBuilder | None = None,
    lists: Tensor | None = None,
    search: Search = "auto",
    backend: Backend = "auto",
    block_size: int | None = None,
    progress: bool | ProgressCallback | None = None,
    index: KNNIndex | None = None,
    num_candidates: int | None = None,
) -> Tensor:
    r"""The offline diffusion matrix :math:`\mathbf{C}` of Yang et al. (AAAI 2019), with late
    truncation.

    The database graph is the mutual kNN graph of the L2-normalised descriptors (the ``kd``
    nearest items of each node, counting the node itself, then the node itself removed wherever
    it appears), with weights :math:`a_{ij} = \max(\mathbf{x}_i^\top\mathbf{x}_j, 0)^\gamma`,

    .. math::
        \mathbf{S} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}, \qquad
        \mathbf{L}_\alpha = \mathbf{I} - \alpha\mathbf{S}, \qquad
        \mathbf{L}_\alpha[T_i, T_i]\,\mathbf{c}_i = \mathbf{e}_i, \qquad
        \mathbf{C}_{i, T_i} = \mathbf{c}_i^\top,

    with :math:`T_i` the ``truncation`` nearest nodes of :math:`i` (itself first) and the
    systems solved by conjugate gradients (:func:`late_truncation`). Isolated nodes get
    :math:`d_i^{-1/2} = 0`.

    Args:
        x: L2-normalised database descriptors :math:`(N, D)`, or the database's
            :math:`(N, N)` similarity :class:`~graphrerank.graph.ScoreMatrix` (dense or
            sparse top-k: truncation lists and graph then come from its rows).
        kd: :math:`k_d`, neighbours per node in the graph, the node itself included
            (reference 50).
        truncation: :math:`|T_i|`, nodes per truncated system (reference 1000), capped at
            :math:`N`.
        alpha: :math:`\alpha \in (0, 1)` (reference 0.99).
        gamma: :math:`\gamma`, similarity exponent of the graph weights (reference 3).
        tol: CG relative residual tolerance (reference 1e-6).
        max_iter: CG iteration cap (reference 20).
        graph: The symmetric affinity graph :math:`\mathbf{A}` (unnormalised weights) to use
            instead of the mutual kNN graph: a prebuilt ``Data``, or a function
            ``graph(x, candidates) -> Data`` of each node's ``num_candidates`` nearest nodes
            (R-DiP builds its re-scored graph so).
        lists: Prebuilt :math:`(N, T)` truncation lists (see :func:`self_first`).
        search: ``"exact"`` kNN, ``"ivf"`` (approximate faiss IVF), or ``"auto"``: IVF from
            :math:`N \ge 100\,000` on a CPU with faiss, as the reference code does for its
            truncation lists.
        backend: kNN backend of the exact search.
        block_size: Nodes per CG block (see :func:`late_truncation`).
        progress: Progress reporting of the solves (see :func:`late_truncation`).
        index: A :class:`~graphrerank.graph.KNNIndex` of ``x`` to search for the graph and
            the truncation lists (default: :func:`~graphrerank.graph.database_index` with
            ``search`` and ``backend``).
        num_candidates: Nearest nodes searched per node for the graph (default ``kd``; a
            ``graph`` function may want more).

    Returns:
        :math:`\mathbf{C}`, an :math:`(N, N)` ``torch.sparse_csr`` tensor on the device of ``x``.

    Example:
        >>> x = torch.nn.functional.normalize(torch.tensor(
        ...     [[1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [0.1, 1.0], [0.2, 1.0]]), dim=1)
        >>> C = offline_diffusion(x, kd=3, truncation=3, backend="torch")
        >>> C.to_dense().gt(0).int()  # each row reaches its own truncation list only
        tensor([[1, 1, 1, 0, 0],
                [1, 1, 1, 0, 0],
                [1, 1, 1, 0, 0],
                [0, 0, 0, 1, 1],
                [0, 0, 0, 1, 1]], dtype=torch.int32)
    """
    if isinstance(x, ScoreMatrix):
        if x.kind != "similarity":
            raise ValueError("offline diffusion weights similarities: pass kind='similarity'")
        x.check_database("x")
        index = ScoreIndex(x.shape[0]) if index is None else index
    else:
        x = check_features(x, "x", detach=True)
        check_normalized(x, "x")
    n = x.shape[0]
    kd = check_int(kd, "kd", low=1, high=n, high_of="the number of rows of x")
    truncation = check_int(truncation, "truncation", low=1)
    alpha = check_real(alpha, "alpha", low=0, high=1, low_open=True, high_open=True)
    gamma = check_real(gamma, "gamma", low=0)
    check_in(search, "search", SEARCHES)
    if num_candidates is not None:
        num_candidates = check_int(num_candidates, "num_candidates", low=kd)
    if not isinstance(graph, Data) or lists is None:
        if graph is not None and not isinstance(graph, Data) and not callable(graph):
            raise TypeError(
                "graph must be None, a torch_geometric Data or a function (x, candidates) -> "
                f"Data, got {type(graph).__name__}"
            )
        index = database_index(x, search, backend) if index is None else index
        # with an exact index on a CPU: one all-vs-all self_knn (half the products)
        lst, cand = truncation_lists(x, index, truncation, num_candidates or kd)
        if graph is None:
            graph = mutual_knn_graph(x, kd, gamma=gamma, candidates=cand)
        elif not isinstance(graph, Data):
            graph = graph(x, cand)
        lists = lst if lists is None else lists
    return late_truncation(
        laplacian_alpha(graph, alpha),
        lists,
        tol=tol,
        max_iter=max_iter,
        block_size=block_size,
        progress=progress,
    )


def offline_diffusion_scores(
    C: Tensor, knn: KNNResult | tuple[Tensor, Tensor], gamma: float
) -> Tensor:
    r"""The online step of offline diffusion: a sparse combination of rows of :math:`\mathbf{C}`.

    .. math::
        \mathbf{f}_q = \sum_{j \in \mathrm{kNN}(q)} \max(s_{qj}, 0)^\gamma\, \mathbf{C}_{j,:}

    over the query's ``kq`` nearest database items :math:`j` with similarities
    :math:`s_{qj}`; one sparse-sparse product for all queries.

    Args:
        C: :math:`(N, N)` ``torch.sparse_csr`` offline matrix (:func:`offline_diffusion`).
        knn: ``(scores, indices)`` :math:`(Q, k_q)` of the queries in the database
            (``-1`` padding ignored).
        gamma: :math:`\gamma`.

    Returns:
        :math:`\mathbf{F}`, a :math:`(Q, N)` ``torch.sparse_csr`` tensor.

    Example:
        >>> C = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]).to_sparse_csr()
        >>> knn = (torch.tensor([[1.0, 0.5]]), torch.tensor([[1, 2]]))
        >>> offline_diffusion_scores(C, knn, gamma=1.0).to_dense()
        tensor([[0.5000, 1.0000, 0.5000]])
    """
    C = check_csr(C, "C", square=True)
    if not isinstance(knn, (tuple, list)) or len(knn) != 2:
        raise TypeError(f"knn must be a (scores, indices) pair, got {type(knn).__name__}")
    gamma = check_real(gamma, "gamma", low=0, finite=True)
    scores = check_tensor(knn[0], "knn scores", ndim=2, nan=False, detach=True)
    idx = check_index(
        knn[1], "knn indices", shape=tuple(scores.shape), high=C.shape[0], padding=True
    )
    if bool((scores[idx >= 0] == float("inf")).any()):
        raise ValueError("knn scores contain +inf")
    if scores.device != C.device:
        raise ValueError(f"knn is on {scores.device} but C is on {C.device}")
    return _query_rows(C, scores, idx, gamma)


def _query_rows(
    C: Tensor, scores: Tensor, idx: Tensor, gamma: float, dense: bool = False
) -> Tensor:
    """:func:`offline_diffusion_scores` on checked inputs (the online step of a fitted
    re-ranker, whose ``C`` is known valid: no pass over all of ``C`` per call).

    With ``dense=True`` the same scores come back as a dense ``(Q, N)`` tensor (the same
    sparse product, its entries written into zeros: the same values bit for bit)."""
    q, kq = idx.shape
    n = C.shape[0]
    w = scores.clamp(min=0).pow(gamma).to(C.values().dtype)
    w = w.masked_fill(idx < 0, 0)
    order = idx.argsort(dim=1)
    idx, w = idx.gather(1, order), w.gather(1, order)
    keep = (idx >= 0) & (w != 0)
    itype = C.crow_indices().dtype
    crow = torch.zeros(q + 1, dtype=itype, device=idx.device)
    crow[1:] = keep.sum(1).cumsum(0)
    cols, vals = idx[keep].to(itype), w[keep]
    if C.device.type == "cpu":  # SciPy's compiled sparse product (torch's is several x slower)
        import scipy.sparse as sp

        Cs = sp.csr_matrix(
            (C.values().numpy(), C.col_indices().numpy(), C.crow_indices().numpy()),
            shape=C.shape,
        )
        Ys = sp.csr_matrix((vals.numpy(), cols.numpy(), crow.numpy()), shape=(q, n))
        F = Ys @ Cs
        if dense:
            return torch.from_numpy(F.toarray())
        F.sort_indices()
        return csr(
            torch.from_numpy(F.indptr),
            torch.from_numpy(F.indices),
            torch.from_numpy(F.data),
            (q, n),
            check=False,
            sorted=True,
        )
    F = csr(crow, cols, vals, (q, n)) @ C
    return F.to_dense() if dense else F


def __getattr__(name: str):
    """Names of earlier releases, registered by the package root (``rdip_rerank``,
    ``offline_diffusion_rerank``: they moved up to :mod:`graphrerank.rerankers`)."""
    from .._imports import forwarded

    return forwarded(__name__, name)
