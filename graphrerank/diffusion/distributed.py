r"""The offline diffusion precompute in chunks of rows: in one process or on a Dask cluster.

The precompute of offline diffusion (:func:`~graphrerank.diffusion.offline_diffusion`) is,
after the database graph, :math:`N` independent small problems, one truncated system
:math:`\mathbf{L}_\alpha[T_i, T_i]\,\mathbf{c}_i = \mathbf{e}_i` per item. Here it runs in
three steps over chunks of consecutive rows, every chunk writing its result as a shard of an
:class:`~graphrerank.diffusion.store.OfflineStore`:

1. **kNN lists** (one task per chunk): the chunk's rows searched in the database index (exact,
   or a faiss IVF index trained once by the caller), giving each row's truncation list and its
   graph candidates, written as ``lists`` and ``cand`` shards;
2. **graph** (on the client, once): the mutual kNN graph (or a caller's graph builder) of the
   candidates, and :math:`\mathbf{L}_\alpha`;
3. **solves** (one task per chunk): the chunk's truncated systems by batched conjugate
   gradients (the same code as :func:`~graphrerank.diffusion.late_truncation`), written as
   ``c`` shards.

With ``client=None`` the chunks run one after the other in this process (no Dask import); with a
``dask.distributed.Client`` they are tasks of its cluster: the descriptors and index, then
:math:`\mathbf{L}_\alpha`, are sent to every worker once (``client.scatter(...,
broadcast=True)``) and each task gets only its chunk number. The store must be on a file system
that the workers and the client share (any local folder on one machine). A run that was killed
resumes from the shards already written; a worker lost mid-run only costs its task's retry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_features, check_in, check_int, check_normalized, check_real
from .._progress import Progress, ProgressCallback, progress_options
from ..graph.build import mutual_knn_graph
from ..graph.index import KNNIndex, database_index
from ..graph.lists import _SEARCH_ROWS, _self_first_rows
from ..graph.sparse import csr
from ..typing import SEARCHES, Backend, KNNResult, Search, TensorLike
from .offline import _BLOCK_ENTRIES, _TABLE_ENTRIES, GraphBuilder, _Rows, _solve_block
from .operators import laplacian_alpha
from .store import OfflineStore, array_fingerprint

__all__ = ["DEFAULT_CHUNK_ROWS", "ClusterError", "sharded_offline_diffusion"]

#: Rows per shard and per task by default (a multiple of the kNN search block).
DEFAULT_CHUNK_ROWS = _SEARCH_ROWS
_CAND = np.dtype([("score", "<f4"), ("id", "<i8")])

#: Objects rebuilt on a worker from the scattered data, by the scattered data's key.
_CACHE: dict[str, Any] = {}


class ClusterError(RuntimeError):
    """The Dask client or its cluster is not usable (closed, or gone during a run)."""


# ---------------------------------------------------------------------------- worker side
def _cached(token: str, build: Callable[[], Any]) -> Any:
    obj = _CACHE.get(token)
    if obj is None:
        while len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        obj = _CACHE[token] = build()
    return obj


def _geometry(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest without its shard table (what a task needs to know of the store)."""
    return dict(manifest, shards={"c": {}, "lists": {}, "cand": {}})


def _knn_chunk(
    shared: Mapping[str, Any], token: str, path: str, geometry: dict, i: int, kc: int
) -> tuple[int, str, str]:
    """Step 1 for chunk ``i``: truncation lists and graph candidates of its rows."""
    store = OfflineStore(path, geometry)

    def build() -> tuple[Tensor, KNNIndex]:
        x = shared["x"]
        x = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        index = shared["index"]
        if not isinstance(index, KNNIndex):
            arrays, meta = index
            index = KNNIndex._from_state(arrays, meta, torch.device("cpu"), "scattered index")
        return x, index

    x, index = _cached(token, build)
    n, t = store.n, store.truncation
    kc = min(kc, n)
    m = max(t, kc)
    s, e = store.bounds(i)
    lists = np.empty((e - s, t), store.index_dtype)
    cand = np.empty((e - s, kc), _CAND)
    for a in range(s, e, _SEARCH_ROWS):
        b = min(e, a + _SEARCH_ROWS)
        knn = index.search(x[a:b], m)
        rows = torch.arange(a, b, device=knn.indices.device)[:, None]
        lists[a - s : b - s] = _self_first_rows(knn.indices, rows, t).cpu().numpy()
        cand["score"][a - s : b - s] = knn.scores[:, :kc].cpu().float().numpy()
        cand["id"][a - s : b - s] = knn.indices[:, :kc].cpu().numpy()
    return i, store.write_shard("lists", i, lists), store.write_shard("cand", i, cand)


def _solve_chunk(
    shared: Any,
    token: str,
    path: str,
    geometry: dict,
    i: int,
    tol: float,
    max_iter: int,
    block_size: int | None,
) -> tuple[int, str]:
    """Step 3 for chunk ``i``: its truncated systems, written as a ``c`` shard."""
    store = OfflineStore(path, geometry)

    def build() -> _Rows:
        if isinstance(shared, Tensor):
            return _Rows(shared)
        crow, col, val, n = shared
        t = torch.from_numpy
        return _Rows(csr(t(crow), t(col), t(val), (n, n)))

    rows = _cached(token, build)
    n = store.n
    s, e = store.bounds(i)
    lists = torch.from_numpy(np.array(store.read_shard("lists", i)))
    t = lists.shape[1]
    bs = block_size or max(1, min(n, _BLOCK_ENTRIES // (t * rows.width), _TABLE_ENTRIES // (n + 1)))
    bs = max(1, min(bs, (2**31 - 1) // (n + 1), e - s))
    table = torch.zeros(bs * (n + 1), dtype=torch.int32)
    out = np.empty((e - s, t), store.record_dtype)
    nodes = torch.arange(s, e)
    for a in range(0, e - s, bs):
        b = min(e - s, a + bs)
        ids, c = _solve_block(rows, table, nodes[a:b], lists[a:b].long(), tol, max_iter)
        keep = (ids >= 0) & (c != 0)
        out["col"][a:b] = torch.where(keep, ids, -1).numpy()
        out["val"][a:b] = torch.where(keep, c, 0).to(rows.vals.dtype).numpy()
    return i, store.write_shard("c", i, out)


# ---------------------------------------------------------------------------- client side
def _check_client(client: Any) -> None:
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - a client cannot exist without distributed
        raise TypeError(
            f"client must be a dask.distributed.Client, got {type(client).__name__}"
        ) from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
    if client.status != "running":
        raise ClusterError(
            f"the Dask client is {client.status!r}, not running (its cluster has gone away or "
            "it was closed): connect a new Client"
        )


def _lost(err: BaseException, store: OfflineStore) -> ClusterError:
    return ClusterError(
        f"the Dask cluster went away during the run ({type(err).__name__}: {err}); the "
        f"finished shards are kept in {str(store.path)!r}: run again with a live client and "
        "the same store to resume"
    )


def _run(
    client: Any,
    store: OfflineStore,
    fn: Callable[..., tuple],
    shared: Any,
    todo: list[int],
    args: tuple,
    record: Callable[[tuple], None],
    bar: Progress,
) -> None:
    """Run ``fn(shared, token, path, geometry, i, *args)`` for every chunk ``i`` in ``todo``,
    recording each result on the client as it comes."""
    path, geometry = str(store.path), _geometry(store.manifest)
    if client is None:
        token = f"local-{id(shared)}-{fn.__name__}"
        try:
            for i in todo:
                record(fn(shared, token, path, geometry, i, *args))
                s, e = store.bounds(i)
                bar.update(e - s)
        finally:
            _CACHE.pop(token, None)
        return
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    cluster_errors = (OSError, TimeoutError, FutureCancelledError)
    try:
        # one object, sent once to every worker (a dict or tuple would be split)
        [future] = client.scatter([shared], broadcast=True, hash=False)
        futures = [
            client.submit(
                fn,
                future,
                future.key if isinstance(future.key, str) else str(future.key),
                path,
                geometry,
                i,
                *args,
                key=f"graphrerank-{fn.__name__.strip('_')}-{future.key}-{i}",
                pure=False,
            )
            for i in todo
        ]
    except cluster_errors as err:
        raise _lost(err, store) from None
    try:
        for f in as_completed(futures):
            try:
                i = record(f.result())
            except KilledWorker as err:
                raise ClusterError(
                    f"a task of this precompute killed several workers ({err}); check the "
                    "workers' memory limit against the chunk size (chunk_rows)"
                ) from None
            s, e = store.bounds(i)
            bar.update(e - s)
    except cluster_errors as err:
        raise _lost(err, store) from None
    finally:
        if client.status == "running":
            client.cancel([future, *futures])


def sharded_offline_diffusion(
    x: TensorLike,
    store: str | os.PathLike,
    *,
    client: Any = None,
    kd: int = 50,
    truncation: int = 1000,
    alpha: float = 0.99,
    gamma: float = 3.0,
    tol: float = 1e-6,
    max_iter: int = 20,
    graph: GraphBuilder | None = None,
    search: Search = "auto",
    backend: Backend = "auto",
    index: KNNIndex | None = None,
    num_candidates: int | None = None,
    chunk_rows: int | None = None,
    block_size: int | None = None,
    progress: bool | ProgressCallback | None = None,
    settings: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> OfflineStore:
    r"""The offline diffusion matrix :math:`\mathbf{C}` computed chunk by chunk into an
    on-disk store, in this process or on a Dask cluster (see the module text).

    The result equals :func:`~graphrerank.diffusion.offline_diffusion` with the same arguments
    (the same kNN lists, graph and truncated systems; each system's conjugate gradients run
    alone, so the chunking changes nothing but the order of the work).

    Args:
        x: L2-normalised database descriptors :math:`(N, D)` (moved to the CPU).
        store: Folder of the :class:`~graphrerank.diffusion.store.OfflineStore`; a store
            already there from the same data and settings is resumed (its finished shards
            kept), one of other data or settings is refused.
        client: A ``dask.distributed.Client``, or ``None`` to run the chunks in this process.
        kd: Graph neighbours per node, the node included, as in
            :func:`~graphrerank.diffusion.offline_diffusion`; so are ``truncation``,
            ``alpha``, ``gamma``, ``tol``, ``max_iter``, ``search``, ``backend``, ``index``
            and ``num_candidates``.
        graph: A function ``graph(x, candidates) -> Data`` building the affinity graph
            (default: the mutual kNN graph).
        chunk_rows: Rows per shard and per task (default 16384).
        block_size: Nodes per batched CG call within a task (default as
            :func:`~graphrerank.diffusion.late_truncation`).
        progress: Progress of the two long steps, reported on the client: ``None`` (a bar on
            a terminal only), ``True`` / ``False``, or ``callback(done_rows, total_rows)``.
        settings: What else identifies the result (e.g. a graph builder's settings), stored
            in the manifest and compared when a store is resumed.
        verify: Check the digest of every finished shard before resuming (a damaged one is
            computed again).

    Returns:
        The finished :class:`~graphrerank.diffusion.store.OfflineStore`.

    Raises:
        ValueError: a setting is out of range, ``x`` is not normalised, or ``store`` holds
            another precompute.
        TypeError: ``client`` is not a Dask client, or ``graph`` is not callable.
        ClusterError: the client is closed, or its cluster went away during the run (the
            finished shards are kept: run again to resume).

    Example:
        >>> import tempfile
        >>> from graphrerank.diffusion import offline_diffusion
        >>> x = torch.nn.functional.normalize(torch.randn(60, 4, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> st = sharded_offline_diffusion(x, tempfile.mkdtemp(), kd=5, truncation=10,
        ...                                backend="torch", chunk_rows=16)
        >>> st.n_chunks
        4
        >>> C = offline_diffusion(x, kd=5, truncation=10, backend="torch")
        >>> torch.allclose(st.to_csr().to_dense(), C.to_dense())
        True
    """
    if client is not None:
        _check_client(client)
    x = check_features(x, "x").detach().cpu()
    check_normalized(x, "x")
    n = x.shape[0]
    kd = check_int(kd, "kd", low=1, high=n)
    truncation = check_int(truncation, "truncation", low=1)
    alpha = check_real(alpha, "alpha", low=0, high=1, low_open=True, high_open=True)
    gamma = check_real(gamma, "gamma", low=0)
    tol = check_real(tol, "tol", low=0)
    max_iter = check_int(max_iter, "max_iter", low=0)
    check_in(search, "search", SEARCHES)
    kc = kd if num_candidates is None else check_int(num_candidates, "num_candidates", low=kd)
    chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else chunk_rows
    chunk_rows = check_int(chunk_rows, "chunk_rows", low=1)
    if block_size is not None:
        block_size = check_int(block_size, "block_size", low=1)
    if graph is not None and not callable(graph):
        raise TypeError(
            f"graph must be None or a function (x, candidates) -> Data, got {type(graph).__name__}"
        )
    if index is not None and not isinstance(index, KNNIndex):
        raise TypeError(f"index must be a KNNIndex, got {type(index).__name__}")
    show, callback = progress_options(progress)
    t = min(truncation, n)
    ident = {
        "data": array_fingerprint(x),
        "kd": kd,
        "alpha": alpha,
        "gamma": gamma,
        "tol": tol,
        "max_iter": max_iter,
        "num_candidates": kc,
        "search": search,
        "backend": backend,
        "index": None if index is None else repr(index),
        "graph": None if graph is None else getattr(graph, "__qualname__", repr(graph)),
        **dict(settings or {}),
    }
    st = OfflineStore.create(
        store,
        n=n,
        truncation=t,
        chunk_rows=chunk_rows,
        settings=ident,
        value_dtype=str(x.numpy().dtype),
    )
    need_c = st.missing("c", verify=verify)
    # the lists of a chunk are needed while its C shard is; the candidates of every chunk
    # while any C shard is (they make the graph)
    need_lists = sorted(
        set(st.missing("lists", verify=verify)) & set(need_c)
        | (set(st.missing("cand", verify=verify)) if need_c else set())
    )

    def record_knn(r: tuple) -> int:
        i, sha_lists, sha_cand = r
        st.record("lists", i, sha_lists)
        st.record("cand", i, sha_cand)
        return i

    def record_c(r: tuple) -> int:
        i, sha = r
        st.record("c", i, sha)
        return i

    if need_lists:
        if index is None:
            index = database_index(x, search, backend)
        if client is None:
            shared: Any = {"x": x, "index": index}
        else:
            arrays, meta = index._state()
            arrays = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in arrays.items()}
            shared = {"x": x.numpy(), "index": (arrays, meta)}
        total = sum(e - s for s, e in map(st.bounds, need_lists))
        with Progress(total, "kNN lists", show=show, callback=callback) as bar:
            _run(client, st, _knn_chunk, shared, need_lists, (kc,), record_knn, bar)
        del shared
    if need_c:
        cand = np.concatenate([np.asarray(st.read_shard("cand", i)) for i in range(st.n_chunks)])
        knn = KNNResult(
            torch.from_numpy(np.ascontiguousarray(cand["score"])).to(x.dtype),
            torch.from_numpy(np.ascontiguousarray(cand["id"])),
        )
        del cand
        g = mutual_knn_graph(x, kd, gamma=gamma, candidates=knn) if graph is None else graph(x, knn)
        del knn
        lap = laplacian_alpha(g, alpha)
        del g
        if client is None:
            shared = lap
        else:
            shared = (
                lap.crow_indices().numpy(),
                lap.col_indices().numpy(),
                lap.values().numpy(),
                n,
            )
        total = sum(e - s for s, e in map(st.bounds, need_c))
        with Progress(total, "offline diffusion", show=show, callback=callback) as bar:
            _run(
                client, st, _solve_chunk, shared, need_c, (tol, max_iter, block_size), record_c, bar
            )
    return OfflineStore.open(st.path)
