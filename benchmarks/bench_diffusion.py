"""Time online diffusion, early truncation and fast spectral ranking per query.

Synthetic L2-normalised descriptors (``make_retrieval_dataset``, d = 512) at each size in
``--sizes``; the reference settings (k = 50, kq = 10, alpha = 0.99, gamma = 3, CG tol 1e-6,
20 iterations). Rows:

* offline: the kNN graph (mutual, s^3) and the system operator, i.e. ``Diffusion().fit``, timed
  apart from the queries; FSR's eigen-decomposition (``FastSpectralRanking().fit``);
* online, ours: ``rerank(queries, k=100)`` for a batch of 1 query (median over single queries)
  and a batch of ``--batch`` queries (one multi-right-hand-side CG call per batch), per query;
  everything a query costs: its kNN search, y, the solve and the top-k;
* online, SciPy: the same pipeline per query with ``scipy.sparse.linalg.cg`` (rtol 1e-6,
  maxiter 20) on the same CSR system, one query at a time, in the same process; the ratio
  column is SciPy's time over ours;
* early truncation (``--truncation``) and FSR (``--fsr-rank``) online, batch 1 and batch.

Optionally (``--manifold-diffusion path/to/diffussion.py``) the popular port's per-query
``cg_diffusion`` (MINRES, 10 steps) runs on the same normalised graph as an external baseline
(for scale: it takes 4.1 ms per query at N = 10,000 on this kind of 2-core machine).
Every measurement runs in a fresh process, so its peak memory is its own.

Full-size table (run on a quiet machine)::

    python benchmarks/bench_diffusion.py --sizes 10000 100000 --batch 1000 --repeats 5

Quick check (``--threads 1`` gives steadier numbers on a CPU that others are using)::

    python benchmarks/bench_diffusion.py --sizes 2000 --batch 100 --repeats 3 --fsr-rank 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table, timed

K_LIST = 100


def _threads(n):
    """Use ``n`` CPU threads in torch and faiss (0: leave the defaults)."""
    if not n:
        return
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def _data(n, dim, nq, device):
    from graphrerank.datasets import make_retrieval_dataset

    ds = make_retrieval_dataset(
        num_items=n, dim=dim, num_classes=max(10, n // 100), num_queries=nq, seed=0
    )
    return ds.database.to(device), ds.queries.to(device)


def _reranker(kind, truncation, rank):
    from graphrerank.rerankers import Diffusion, FastSpectralRanking

    if kind == "fsr":
        return FastSpectralRanking(rank=rank)
    return Diffusion(truncation=truncation if kind == "truncation" else None)


def offline(n, dim, kind, truncation, rank, repeats, device, threads=0):
    _threads(threads)
    x, _ = _data(n, dim, 1, device)
    base = rss_mb()
    cuda = device.startswith("cuda")
    ts = timed(lambda: _reranker(kind, truncation, rank).fit(x), repeats, warmup=0, cuda=cuda)
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def online(n, dim, nq, batch, kind, truncation, rank, repeats, device, threads=0):
    _threads(threads)
    x, q = _data(n, dim, max(nq, batch), device)
    r = _reranker(kind, truncation, rank).fit(x)
    base = rss_mb()
    cuda = device.startswith("cuda")
    if batch == 1:
        singles = [q[i : i + 1] for i in range(repeats)]
        r.rerank(singles[0], K_LIST)  # warm-up
        ts = [timed(lambda s=s: r.rerank(s, K_LIST), 1, warmup=0, cuda=cuda)[0] for s in singles]
    else:
        ts = timed(lambda: r.rerank(q[:batch], K_LIST), repeats, warmup=1, cuda=cuda)
    return {
        "median_s": median(ts),
        "per_query_ms": 1e3 * median(ts) / batch,
        "peak_mb": rss_mb(),
        "base_mb": base,
    }


def _system(n, dim, nq):
    from graphrerank.graph import knn_search

    x, q = _data(n, dim, nq, "cpu")
    r = _reranker("online", None, 0).fit(x)
    s, idx = knn_search(q, x, 10)
    from graphrerank.diffusion import query_vector

    return r.operator_, query_vector(s, idx, n, kq=10, gamma=3.0)


def solve_scipy(n, dim, repeats, threads=0):
    """SciPy's cg on the same float32 CSR system, one right-hand side at a time."""
    _threads(threads)
    import scipy.sparse as sp
    from scipy.sparse.linalg import cg

    L, Y = _system(n, dim, repeats)
    lap = sp.csr_matrix(
        (L.values().numpy(), L.col_indices().numpy(), L.crow_indices().numpy()), shape=L.shape
    )
    ys = [Y[:, i].numpy() for i in range(repeats)]
    base = rss_mb()
    cg(lap, ys[0], rtol=1e-6, atol=0.0, maxiter=20)
    ts = [
        timed(lambda y=y: cg(lap, y, rtol=1e-6, atol=0.0, maxiter=20), 1, warmup=0)[0] for y in ys
    ]
    return {
        "median_s": median(ts),
        "per_query_ms": 1e3 * median(ts),
        "peak_mb": rss_mb(),
        "base_mb": base,
    }


def solve_ours(n, dim, batch, repeats, chunk, device, threads=0):
    """Our batched CG on the same system: ``batch`` right-hand sides, in CG calls of ``chunk``
    columns (one call when ``chunk`` is None)."""
    _threads(threads)
    from graphrerank.diffusion import diffuse

    L, Y = _system(n, dim, max(batch, repeats))
    L, Y = L.to(device), Y.to(device)
    cuda = device.startswith("cuda")
    base = rss_mb()
    if batch == 1:
        cols = [Y[:, i : i + 1].contiguous() for i in range(repeats)]
        diffuse(L, cols[0])
        ts = [timed(lambda c=c: diffuse(L, c), 1, warmup=0, cuda=cuda)[0] for c in cols]
    else:
        Yb = Y[:, :batch].contiguous()
        step = chunk or batch

        def run():
            for j in range(0, batch, step):
                diffuse(L, Yb[:, j : j + step].contiguous())

        ts = timed(run, repeats, warmup=1)
    return {
        "median_s": median(ts),
        "per_query_ms": 1e3 * median(ts) / batch,
        "peak_mb": rss_mb(),
        "base_mb": base,
    }


def port(n, dim, repeats, path, threads=0):
    _threads(threads)
    import importlib.util

    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla

    from graphrerank.graph import knn_graph, to_scipy

    spec = importlib.util.spec_from_file_location("manifold_port", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class _RtolShim:  # the port passes tol=, which SciPy >= 1.14 renamed rtol=
        def __getattr__(self, name):
            return getattr(sla, name)

        @staticmethod
        def minres(a, b, tol=None, maxiter=None, **kw):
            return sla.minres(a, b, rtol=tol, maxiter=maxiter, **kw)

    mod.s_linalg = _RtolShim()
    x, q = _data(n, dim, repeats, "cpu")
    g = knn_graph(x, 50, symmetrize="mutual", gamma=3.0, normalize="sym")
    wn = sp.csr_matrix(to_scipy(g), dtype=np.float64)
    sims = (q.double() @ x.double().T).numpy()
    qs = mod.sim_kernel(sims)
    cut = np.argsort(-qs, axis=1)[:, 10:]
    np.put_along_axis(qs, cut, 0, axis=1)
    base = rss_mb()
    mod.cg_diffusion(qs[:1], wn)
    ts = [
        timed(lambda i=i: mod.cg_diffusion(qs[i : i + 1], wn), 1, warmup=0)[0]
        for i in range(repeats)
    ]
    return {
        "median_s": median(ts),
        "per_query_ms": 1e3 * median(ts),
        "peak_mb": rss_mb(),
        "base_mb": base,
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=1000, help="queries per batched call")
    p.add_argument("--repeats", type=int, default=5, help="runs (batch) or single queries")
    p.add_argument("--truncation", type=int, default=1000, help="N_t; 0 to skip")
    p.add_argument("--fsr-rank", type=int, default=2000, help="0 to skip FSR")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads per measurement (0: default)"
    )
    p.add_argument("--manifold-diffusion", type=Path, help="the port's diffussion.py, to run it")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    _threads(args.threads)
    from graphrerank.rerankers import Diffusion

    rows = []

    def add(task, n, result, batch=""):
        row = {"task": task, "n": n, "batch": batch, **result}
        rows.append(row)
        print(f"done: {task} N={n} {batch}", file=sys.stderr, flush=True)
        return row

    common = {"dim": args.dim, "device": args.device, "threads": args.threads}
    for n in args.sizes:
        t0 = time.perf_counter()
        add(
            "offline: kNN graph + operator (Diffusion.fit)",
            n,
            isolated(offline, n=n, kind="online", truncation=None, rank=0, repeats=1, **common),
        )
        kinds = [("online diffusion", "online")]
        if args.truncation:
            kinds.append((f"early truncation N_t={args.truncation}", "truncation"))
        if args.fsr_rank:
            add(
                f"offline: FSR eigenpairs r={args.fsr_rank} (fit)",
                n,
                isolated(
                    offline,
                    n=n,
                    kind="fsr",
                    truncation=None,
                    rank=args.fsr_rank,
                    repeats=1,
                    **common,
                ),
            )
            kinds.append((f"FSR r={args.fsr_rank}", "fsr"))
        reference = add(
            "solve only: SciPy cg, one query at a time",
            n,
            isolated(solve_scipy, n=n, dim=args.dim, repeats=args.repeats, threads=args.threads),
            1,
        )
        # the default batch of a CPU solve (see MultiVectorReranker._batch_size)
        chunk = min(Diffusion.AUTO_BATCH_ENTRIES // n, max(8, Diffusion.CPU_CACHE_ENTRIES // n))
        for label, batch, step in [
            ("solve only: ours, one CG call", 1, None),
            ("solve only: ours, one CG call", args.batch, None),
            (f"solve only: ours, CG calls of {chunk} (default on CPU)", args.batch, chunk),
        ]:
            r = add(
                label,
                n,
                isolated(
                    solve_ours,
                    n=n,
                    dim=args.dim,
                    batch=batch,
                    repeats=args.repeats,
                    chunk=step,
                    device=args.device,
                    threads=args.threads,
                ),
                batch,
            )
            r["ratio"] = reference["per_query_ms"] / r["per_query_ms"]
        for task, kind in kinds:
            for batch in (1, args.batch):
                add(
                    f"rerank: {task}",
                    n,
                    isolated(
                        online,
                        n=n,
                        nq=args.repeats,
                        batch=batch,
                        kind=kind,
                        truncation=args.truncation,
                        rank=args.fsr_rank,
                        repeats=args.repeats,
                        **common,
                    ),
                    batch,
                )
        if args.manifold_diffusion:
            add(
                "manifold-diffusion port cg_diffusion (MINRES 10)",
                n,
                isolated(
                    port,
                    n=n,
                    dim=args.dim,
                    repeats=args.repeats,
                    path=str(args.manifold_diffusion),
                    threads=args.threads,
                ),
                1,
            )
        print(f"N={n}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    for r in rows:
        r["mem_mb"] = r["peak_mb"] - r["base_mb"]
    cols = [
        ("task", "task"),
        ("n", "N"),
        ("batch", "queries per call"),
        ("median_s", "median s per call"),
        ("per_query_ms", "ms per query"),
        ("ratio", "SciPy / ours per query"),
        ("peak_mb", "peak MiB"),
        ("mem_mb", "MiB over setup"),
    ]
    text = (
        f"Machine: {machine()}\n"
        f"Command: python benchmarks/bench_diffusion.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}\n"
        f"d = {args.dim}, device = {args.device}, k = 50, kq = 10, alpha = 0.99, gamma = 3, "
        f"20 CG steps, lists of {K_LIST}; median over {args.repeats} runs (batch) or "
        "single queries\n\n" + table(rows, cols)
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
