"""Time kNN search and kNN graph building at growing sizes, per backend.

Exact search (faiss and torch) at the sizes given by ``--sizes``; approximate faiss indexes
(IVF, IVF-PQ, HNSW) at ``--approx-size`` with recall@k against exact search on a sample of
queries. Every measurement runs in a fresh process, so the peak memory reported is its own.

    python benchmarks/bench_knn.py                      # 10k and 100k exact, 1M approximate
    python benchmarks/bench_knn.py --sizes 10000 --approx-size 0 --repeats 3   # quick

Prints a Markdown table: median seconds over ``--repeats`` runs (after one warm-up), peak
resident memory of the measuring process and its growth over the data alone, and the time
ratio faiss / torch for exact search measured in the same run.

``--self N:D:K ...`` instead times the all-vs-all search of N synthetic D-dimensional unit
vectors in themselves (k = K, self included): ``self_knn`` (half the products: the pieces on
and above the diagonal serve rows and columns) against faiss' flat inner-product search of
the database in itself (``IndexFlatIP.search`` in chunks of 2**14 rows, as the offline
diffusion fit runs it), in fresh processes alternating ours / faiss ``--rounds`` times
(``--repeats`` timed calls each, or more until 2 s; ours after loading its compiled kernel),
with the same thread count; the agreement (rows equal to faiss', and whether every difference is a float
tie) is checked once per size in its own process:

    python benchmarks/bench_knn.py --self 1797:64:100 10000:2048:100 10000:2048:1000 \
        19732:2048:100 19732:2048:1000 --rounds 2 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table, timed


def _data(n, dim, seed, device, num_queries=0):
    import torch

    from graphrerank.datasets import make_retrieval_dataset

    ds = make_retrieval_dataset(
        num_items=n, dim=dim, num_classes=max(10, n // 100), num_queries=num_queries, seed=seed
    )
    x = ds.database.to(device)
    q = ds.queries.to(device) if ds.queries is not None else None
    torch.set_num_threads(torch.get_num_threads())
    return x, q


def _faiss_self(x, k):
    import faiss
    import numpy as np

    xn = np.ascontiguousarray(x.numpy())
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)
    d = np.empty((xn.shape[0], k), dtype=np.float32)
    i = np.empty((xn.shape[0], k), dtype=np.int64)
    for s in range(0, xn.shape[0], 2**14):
        d[s : s + 2**14], i[s : s + 2**14] = index.search(xn[s : s + 2**14], k)
    return d, i


def self_search(which, n, dim, k, repeats, threads):
    """One fresh process: ``repeats`` all-vs-all searches by ``which`` ("ours" / "faiss")."""
    import os
    import time

    import faiss
    import torch

    from graphrerank.graph.knn import self_knn

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x, _ = _data(n, dim, 0, "cpu")
    x = x.float().contiguous()
    fn = (lambda: self_knn(x, k)) if which == "ours" else (lambda: _faiss_self(x, k))
    small = x[: min(n, 3000)]
    if which == "ours":  # load the compiled kernel (numba's cache) outside the timing
        self_knn(small, min(k, small.shape[0]))
    base = rss_mb()
    load = [os.getloadavg()[0]]
    ts = []
    while len(ts) < repeats or sum(ts) < 2.0:  # fast searches: repeated for 2 s at least
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    load.append(os.getloadavg()[0])
    return {"times": ts, "peak_mb": rss_mb(), "base_mb": base, "load": load}


def self_agreement(n, dim, k, threads):
    """Rows of ``self_knn`` equal to faiss', and the largest score gap where they differ
    (float ties and rounding: both sides compute the same products in other orders)."""
    import faiss
    import numpy as np
    import torch

    from graphrerank.graph.knn import self_knn

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x, _ = _data(n, dim, 0, "cpu")
    x = x.float().contiguous()
    ours = self_knn(x, k)
    d, i = _faiss_self(x, k)
    oi, os_ = ours.indices.numpy(), ours.scores.numpy()
    rows = (oi == i).all(1)
    # the same sets of scores, position by position, up to rounding
    gap = float(np.abs(os_ - d).max())
    # an id in one list only must score as the k-th best (a tie at the boundary)
    only, edge = 0, 0.0
    for r in np.flatnonzero(~rows):
        for ids, sc, kth in ((oi[r], os_[r], d[r, -1]), (i[r], d[r], os_[r, -1])):
            extra = ~np.isin(ids, oi[r] if ids is i[r] else i[r])
            only += int(extra.sum())
            if extra.any():
                edge = max(edge, float(np.abs(sc[extra] - kth).max()))
    return {
        "rows_equal": float(rows.mean()),
        "max_score_gap": gap,
        "set_diff": only,
        "edge_gap": edge,
    }


def exact_search(n, dim, nq, k, backend, repeats, device):
    from graphrerank.graph import knn_search

    x, q = _data(n, dim, 0, device, num_queries=nq)
    base = rss_mb()
    ts = timed(
        lambda: knn_search(q, x, k, backend=backend), repeats, cuda=device.startswith("cuda")
    )
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def graph_build(n, dim, k, backend, repeats, device):
    from graphrerank.graph import knn_graph

    x, _ = _data(n, dim, 0, device)
    base = rss_mb()
    ts = timed(
        lambda: knn_graph(x, k, symmetrize="mutual", gamma=3.0, normalize="sym", backend=backend),
        repeats,
        cuda=device.startswith("cuda"),
    )
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def approximate(n, dim, nq, k, kind, params, repeats, graph_k):
    import time

    import torch

    from graphrerank.graph import KNNIndex, knn_graph, knn_search

    x, q = _data(n, dim, 0, "cpu", num_queries=nq)
    exact = knn_search(q, x, k, backend="faiss").indices
    base = rss_mb()
    t = time.perf_counter()
    index = KNNIndex(kind=kind, **params).add(x)
    build = time.perf_counter() - t
    ts = timed(lambda: index.search(q, k), repeats)
    found = index.search(q, k).indices
    recall = (found[:, :, None] == exact[:, None, :]).any(1).float().mean().item()
    # the kNN graph of all n items from the approximate index (one run: it is the slow part)
    t = time.perf_counter()
    cand = index.search(x, graph_k + 1)
    g = knn_graph(x, graph_k, candidates=cand, symmetrize="mutual", gamma=3.0, normalize="sym")
    graph = time.perf_counter() - t
    del g, cand
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {
        "build_s": build,
        "median_s": median(ts),
        "recall": recall,
        "graph_s": graph,
        "peak_mb": rss_mb(),
        "base_mb": base,
    }


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--approx-size", type=int, default=1_000_000, help="0 to skip")
    p.add_argument("--approx-kinds", nargs="*", default=["ivf", "ivfpq", "hnsw"])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10, help="neighbours per query search")
    p.add_argument("--graph-k", type=int, default=50, help="neighbours per node in kNN graphs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", nargs="*", default=["faiss", "torch"])
    p.add_argument("--out", type=Path, help="also write the table to this file")
    p.add_argument("--self", nargs="*", default=None, metavar="N:D:K", dest="self_sizes")
    p.add_argument("--rounds", type=int, default=2, help="--self: ours / faiss alternations")
    p.add_argument("--threads", type=int, default=2, help="--self: torch and faiss threads")
    args = p.parse_args(argv)
    if args.self_sizes:
        return _main_self(args, argv)

    rows = []
    for n in args.sizes:
        res = {}
        for backend in args.backends:
            r = isolated(
                exact_search,
                n=n,
                dim=args.dim,
                nq=args.queries,
                k=args.k,
                backend=backend,
                repeats=args.repeats,
                device=args.device,
            )
            res[backend] = r
            rows.append(
                {
                    "task": f"search {args.queries} queries, k={args.k}",
                    "n": n,
                    "backend": backend,
                    **r,
                }
            )
        if "faiss" in res and "torch" in res:
            rows[-1]["ratio"] = rows[-2]["ratio"] = (
                res["faiss"]["median_s"] / res["torch"]["median_s"]
            )
        res = {}
        for backend in args.backends:
            r = isolated(
                graph_build,
                n=n,
                dim=args.dim,
                k=args.graph_k,
                backend=backend,
                repeats=args.repeats,
                device=args.device,
            )
            res[backend] = r
            rows.append(
                {
                    "task": f"kNN graph, k={args.graph_k} (mutual, sym)",
                    "n": n,
                    "backend": backend,
                    **r,
                }
            )
        if "faiss" in res and "torch" in res:
            rows[-1]["ratio"] = rows[-2]["ratio"] = (
                res["faiss"]["median_s"] / res["torch"]["median_s"]
            )
        print(f"done n={n}", file=sys.stderr, flush=True)

    if args.approx_size:
        n = args.approx_size
        nlist = int(4 * n**0.5)
        settings = {
            "ivf": {"nlist": nlist, "nprobe": 32, "train_size": 50 * nlist},
            "ivfpq": {
                "nlist": nlist,
                "nprobe": 32,
                "pq_m": args.dim // 4,
                "refine": True,
                "refine_factor": 4,
                "train_size": 50 * nlist,
            },
            "hnsw": {"hnsw_m": 32, "ef_search": 128},
        }
        for kind in args.approx_kinds:
            r = isolated(
                approximate,
                n=n,
                dim=args.dim,
                nq=args.queries,
                k=args.k,
                kind=kind,
                params=settings[kind],
                repeats=args.repeats,
                graph_k=args.graph_k,
            )
            rows.append(
                {"task": f"approx {kind} {settings[kind]}", "n": n, "backend": "faiss", **r}
            )
            print(f"done {kind}", file=sys.stderr, flush=True)

    for r in rows:
        r["mem_mb"] = r["peak_mb"] - r["base_mb"]
    cols = [
        ("task", "task"),
        ("n", "N"),
        ("backend", "backend"),
        ("median_s", "median s"),
        ("ratio", "faiss/torch"),
        ("build_s", "index build s"),
        ("recall", f"recall@{args.k}"),
        ("graph_s", f"graph k={args.graph_k} s"),
        ("peak_mb", "peak MiB"),
        ("mem_mb", "MiB over data"),
    ]
    text = (
        f"Machine: {machine()}\n"
        f"Command: python benchmarks/bench_knn.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
        f"d = {args.dim}, device = {args.device}, median of {args.repeats} runs after one warm-up\n\n"
        + table(rows, cols)
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def _main_self(args, argv):
    rows = []
    for spec in args.self_sizes:
        n, dim, k = (int(v) for v in spec.split(":"))
        res = {"ours": [], "faiss": []}
        for _ in range(args.rounds):
            for which in ("ours", "faiss"):
                kw = {"n": n, "dim": dim, "k": k, "repeats": args.repeats}
                res[which].append(isolated(self_search, which=which, threads=args.threads, **kw))
        agree = isolated(self_agreement, n=n, dim=dim, k=k, threads=args.threads)
        t = {w: median([x for r in res[w] for x in r["times"]]) for w in res}
        loads = [x for w in res for r in res[w] for x in r["load"]]
        rows.append(
            {
                "n": n,
                "dim": dim,
                "k": k,
                "ours_s": t["ours"],
                "faiss_s": t["faiss"],
                "ratio": t["faiss"] / t["ours"],
                "ours_mb": max(r["peak_mb"] - r["base_mb"] for r in res["ours"]),
                "faiss_mb": max(r["peak_mb"] - r["base_mb"] for r in res["faiss"]),
                **agree,
                "load": f"{min(loads):.1f}-{max(loads):.1f}",
            }
        )
        print(f"done {spec}", file=sys.stderr, flush=True)
    cols = [
        ("n", "N"),
        ("dim", "d"),
        ("k", "k"),
        ("ours_s", "self_knn s"),
        ("faiss_s", "faiss s"),
        ("ratio", "faiss / ours"),
        ("ours_mb", "MiB over data (ours)"),
        ("faiss_mb", "MiB over data (faiss)"),
        ("rows_equal", "rows equal"),
        ("set_diff", "ids in one list only"),
        ("max_score_gap", "max score gap"),
        ("edge_gap", "max gap of those to the k-th"),
        ("load", "load"),
    ]
    text = (
        f"Machine: {machine()}\n"
        f"Command: python benchmarks/bench_knn.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
        f"{args.threads} threads, fresh processes alternating ours / faiss {args.rounds} times, "
        f"{args.repeats} timed call(s) each; median over all\n\n" + table(rows, cols)
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
