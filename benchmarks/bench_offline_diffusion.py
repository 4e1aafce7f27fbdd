"""Offline diffusion: batched CG blocks against per-column SciPy CG, and the online step.

For each database size N (synthetic descriptors from ``make_retrieval_dataset``, one smooth
curve per class, 100 items per class, L2-normalised), in a fresh process each:

* kNN search: the database searched in itself for the truncation lists and graph candidates
  (exact below 100,000 items, faiss IVF from there, as ``search="auto"`` does), timed apart;
* graph: mutual kNN graph and the sparse ``I - alpha S``;
* offline: the late-truncated systems of all N nodes, solved as batched CG blocks
  (``late_truncation``), time and peak resident memory of the process;
* SciPy: the same sub-blocks solved one node at a time, ``L[T_i][:, T_i]`` then
  ``scipy.sparse.linalg.cg(rtol=1e-6, maxiter=20)`` (what the reference code does per node),
  in the same process, on ``--scipy-sample`` evenly spaced nodes and extrapolated to N when
  the sample is smaller than N (the table says so);
* online: per query, the kNN search (``kq`` neighbours) and the diffusion step (sparse
  combination of ``kq`` rows of C, top-``k`` ranking) timed apart, for a batch of 1 query
  (median over single queries) and a batch of 1000 (time / 1000).

Full size (the table in the docs; about an hour on a 2-core machine, the 1M row within 24 GiB):

    python benchmarks/bench_offline_diffusion.py --sizes 10000 100000 1000000 --dim 512

Quick check:

    python benchmarks/bench_offline_diffusion.py --sizes 5000 --scipy-sample 300 --online 50

For scale: on a 2-core machine the fyang93 reference code takes 22 s offline and 0.47 ms per
online query at N = 23,100 (d = 2048). Targets: offline at least 10x faster than per-column
SciPy CG, online query under 1 ms at N = 100k, 1M within 24 GiB.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table


def run_size(n, dim, kd, kq, truncation, k, scipy_sample, online, device, threads):
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla
    import torch

    from graphrerank.datasets import make_retrieval_dataset
    from graphrerank.diffusion import laplacian_alpha, late_truncation, offline_diffusion_scores
    from graphrerank.graph import database_index, mutual_knn_graph, rank_csr, truncation_lists

    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    ds = make_retrieval_dataset(
        num_items=n, dim=dim, num_classes=max(10, n // 100), num_queries=1000, seed=0
    )
    x = ds.database.to(device)
    q = ds.queries.to(device)
    base = rss_mb()
    out = {"N": n, "d": dim, "T": min(truncation, n)}

    t = time.perf_counter()
    index = database_index(x, "auto", "auto")
    lists, cand = truncation_lists(x, index, truncation, kd)
    sync()
    out["knn_s"] = time.perf_counter() - t
    out["index"] = index.kind

    t = time.perf_counter()
    L = laplacian_alpha(mutual_knn_graph(x, kd, gamma=3.0, candidates=cand), 0.99)
    sync()
    out["graph_s"] = time.perf_counter() - t
    del cand

    t = time.perf_counter()
    C = late_truncation(L, lists, progress=False)
    sync()
    out["offline_s"] = time.perf_counter() - t
    out["ours_ms_node"] = 1000 * out["offline_s"] / n
    out["peak_mb"] = rss_mb()
    out["base_mb"] = base
    if cuda:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20

    # per-column SciPy CG on the same sub-blocks
    Ls = sp.csr_matrix(
        (
            L.values().cpu().numpy(),
            L.col_indices().cpu().numpy(),
            L.crow_indices().cpu().numpy(),
        ),
        shape=(n, n),
    )
    sample = np.unique(np.linspace(0, n - 1, min(scipy_sample, n)).astype(np.int64))
    lst = lists.cpu().numpy()
    t = time.perf_counter()
    for i in sample:
        ids = lst[i][lst[i] >= 0]
        e0 = np.zeros(len(ids), dtype=np.float32)
        e0[0] = 1.0
        spla.cg(Ls[ids][:, ids], e0, rtol=1e-6, atol=0.0, maxiter=20)
    per = (time.perf_counter() - t) / len(sample)
    out["scipy_ms_node"] = 1000 * per
    out["scipy_s"] = per * n
    out["scipy_how"] = "all nodes" if len(sample) == n else f"{len(sample)} sampled, extrapolated"
    out["speedup"] = out["scipy_s"] / out["offline_s"]
    del Ls

    # online step
    def diffuse(qb, knn):
        F = offline_diffusion_scores(C, knn, 3.0)
        return rank_csr(F, k, qb, x, index, "similarity")

    single_knn, single_diff = [], []
    for i in range(min(online, q.shape[0])):
        qi = q[i : i + 1]
        sync()
        t0 = time.perf_counter()
        knn = index.search(qi, kq)
        sync()
        t1 = time.perf_counter()
        diffuse(qi, knn)
        sync()
        t2 = time.perf_counter()
        if i:  # the first call warms up
            single_knn.append(t1 - t0)
            single_diff.append(t2 - t1)
    out["knn_ms_q1"] = 1000 * median(single_knn)
    out["diff_ms_q1"] = 1000 * median(single_diff)
    sync()
    t0 = time.perf_counter()
    knn = index.search(q, kq)
    sync()
    t1 = time.perf_counter()
    diffuse(q, knn)
    sync()
    t2 = time.perf_counter()
    out["knn_ms_q1000"] = t1 - t0
    out["diff_ms_q1000"] = t2 - t1
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--kd", type=int, default=50)
    p.add_argument("--kq", type=int, default=10)
    p.add_argument("--truncation", type=int, default=1000)
    p.add_argument("--k", type=int, default=100, help="length of the online ranking")
    p.add_argument("--scipy-sample", type=int, default=2000, help="nodes solved by SciPy")
    p.add_argument("--online", type=int, default=200, help="single queries timed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)

    rows = []
    for n in args.sizes:
        r = isolated(
            run_size,
            n=n,
            dim=args.dim,
            kd=args.kd,
            kq=args.kq,
            truncation=args.truncation,
            k=args.k,
            scipy_sample=args.scipy_sample,
            online=args.online,
            device=args.device,
            threads=args.threads,
        )
        rows.append(r)
        print(f"N={n}: done ({r['offline_s']:.1f} s offline)", file=sys.stderr)
    print(f"Machine: {machine()}\n")
    print(
        "Command: python benchmarks/bench_offline_diffusion.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    print()
    print(
        table(
            rows,
            [
                ("N", "N"),
                ("T", "T"),
                ("index", "kNN index"),
                ("knn_s", "kNN search s"),
                ("graph_s", "graph s"),
                ("offline_s", "offline s (ours)"),
                ("ours_ms_node", "ours ms/node"),
                ("scipy_ms_node", "SciPy ms/node"),
                ("scipy_s", "SciPy s"),
                ("scipy_how", "SciPy measured on"),
                ("speedup", "speed-up"),
                ("peak_mb", "peak RSS MiB"),
                ("base_mb", "data MiB"),
            ],
        )
    )
    print()
    print(
        table(
            rows,
            [
                ("N", "N"),
                ("knn_ms_q1", "kNN ms/query (1)"),
                ("diff_ms_q1", "diffusion ms/query (1)"),
                ("knn_ms_q1000", "kNN ms/query (1000)"),
                ("diff_ms_q1000", "diffusion ms/query (1000)"),
            ],
        )
    )


if __name__ == "__main__":
    main()
