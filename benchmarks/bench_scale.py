"""The sharded offline precompute at scale: one process, and a Dask LocalCluster.

For each database size N (a seeded Gaussian mixture, d = 128, L2-normalised), in a fresh
process each:

* index: a faiss IVF index (``nlist``, ``nprobe`` as given; by default ``4 sqrt(N)`` cells and
  32 probes), trained once; the recall of its truncation lists (top ``T``) and graph lists (top
  ``kd``) against exact search on a sample of ``--recall-sample`` rows;
* precompute: :func:`graphrerank.diffusion.distributed.sharded_offline_diffusion` into an
  on-disk store (kNN lists, graph, truncated solves), wall time of each step, peak resident
  memory of the client process and of each worker, and the solve cost per node;
* engine (``--cluster``): the same precompute on a ``LocalCluster`` of ``--workers`` worker
  processes of one thread, against the single process run on the same data (speed-up and
  overhead), and the two stores compared (the same C);
* online: the store opened memory-mapped in the measuring process; per query the kNN search
  (``kq`` neighbours) and the store's sparse combination plus top-``k`` ranking, for a batch of
  1 (median over single queries) and a batch of 1000.

Example (the numbers in ``benchmarks/results/scale.md``):

    nice -n 10 python benchmarks/bench_scale.py --sizes 50000 --cluster
    nice -n 10 python benchmarks/bench_scale.py --sizes 200000

Quick check:

    python benchmarks/bench_scale.py --sizes 5000 --truncation 100 --cluster --online 20
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table


def mixture(n: int, d: int, seed: int, clusters: int = 1000):
    """``n`` L2-normalised float32 points of a Gaussian mixture (made in blocks)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(clusters, d, generator=g), dim=1)
    out = torch.empty(n, d)
    for s in range(0, n, 2**16):
        e = min(n, s + 2**16)
        lab = torch.randint(0, clusters, (e - s,), generator=g)
        out[s:e] = centres[lab] + 0.05 * torch.randn(e - s, d, generator=g)
    return torch.nn.functional.normalize(out, dim=1)


def _worker_rss() -> float:
    """Peak resident memory of this process, MiB, from ``VmHWM`` (``ru_maxrss`` would carry
    the peak of the process a worker was forked from across its ``exec``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_size(
    n,
    d,
    kd,
    kq,
    truncation,
    k,
    nlist,
    nprobe,
    workers,
    cluster,
    online,
    seed,
    root,
    keep,
    online_only,
):
    import numpy as np
    import torch

    from graphrerank.diffusion.distributed import sharded_offline_diffusion
    from graphrerank.diffusion.store import OfflineStore
    from graphrerank.graph import KNNIndex
    from graphrerank.graph.ranking import rank_csr

    torch.set_num_threads(1)
    x = mixture(n, d, seed)
    base = rss_mb()
    row: dict = {"N": n, "d": d, "kd": kd, "T": truncation}
    t0 = time.perf_counter()
    index = KNNIndex(metric="ip", kind="ivf", nlist=nlist, nprobe=nprobe, seed=seed).add(x)
    row["index s"] = time.perf_counter() - t0
    row["nlist/nprobe"] = f"{index.nlist}/{index.nprobe or min(index.nlist, 32)}"
    # recall of the approximate lists against exact search on a sample
    g = torch.Generator().manual_seed(seed + 1)
    sample = torch.randperm(n, generator=g)[: min(n, 1000)]
    exact = torch.topk(x[sample] @ x.T, min(truncation, n), dim=1).indices
    approx = index.search(x[sample], min(truncation, n)).indices
    for kk, name in ((min(truncation, n), "recall@T"), (kd, "recall@kd")):
        hit = [len(set(a[:kk].tolist()) & set(b[:kk].tolist())) / kk for a, b in zip(approx, exact)]
        row[name] = float(np.mean(hit))
    del exact, approx

    def precompute(client, folder):
        marks = []

        def cpu() -> float:  # this process and, on a cluster, every worker
            extra = sum(client.run(_cpu_s).values()) if client is not None else 0.0
            return _cpu_s() + extra

        c0 = cpu()
        t = time.perf_counter()
        st = sharded_offline_diffusion(
            x,
            folder,
            client=client,
            kd=kd,
            truncation=truncation,
            index=index,
            progress=lambda done, total: marks.append((time.perf_counter(), _cpu_s(), done, total)),
            verify=False,
        )
        wall = time.perf_counter() - t
        cpu_total = cpu() - c0
        # the kNN step ends at the first mark with done == total
        knn_end, knn_cpu = next(((m[0], m[1]) for m in marks if m[2] == m[3]), (t, c0))
        return st, wall, knn_end - t, wall - (knn_end - t), cpu_total, knn_cpu - c0

    single = Path(root) / f"single-{n}"
    if online_only and not (single / "manifest.json").exists():
        raise SystemExit(f"--online-only needs the kept store {single} (run with --keep first)")
    st, wall, knn_s, rest_s, cpu_s, knn_cpu = precompute(None, single)
    if online_only:  # the store was kept: this run resumed it (nothing left to do)
        row = {k: v for k, v in row.items() if k in ("N", "d", "kd", "T")}
        cluster = False
    row["kNN lists s"] = knn_s
    row["graph + solves s"] = rest_s
    row["single wall s"] = wall
    row["ms/node"] = 1000 * rest_s / n
    row["CPU s"] = cpu_s
    row["kNN CPU ms/node"] = 1000 * knn_cpu / n
    row["graph + solves CPU ms/node"] = 1000 * (cpu_s - knn_cpu) / n
    row["peak RSS MiB"] = rss_mb()
    row["data MiB"] = x.numel() * 4 / 2**20
    row["store GiB"] = sum(p.stat().st_size for p in single.glob("c-*.npy")) / 2**30
    if cluster:
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as lc,
            Client(lc) as client,
        ):
            client.run(torch.set_num_threads, 1)
            # workers import the library before the clock starts (as a long-lived cluster has)
            client.run(__import__, "graphrerank.diffusion.distributed")
            folder = Path(root) / f"cluster-{n}"
            cst, cwall, cknn, crest, ccpu, _ = precompute(client, folder)
            row["cluster CPU s"] = ccpu
            row["cluster wall s"] = cwall
            row["cluster kNN s"] = cknn
            row["cluster graph + solves s"] = crest
            row["speed-up"] = wall / cwall
            row["worker peak RSS MiB"] = max(client.run(_worker_rss).values())
        if n <= 200_000:  # compare the two stores (loads both)
            A, B = st.to_csr(), cst.to_csr()
            same = torch.equal(A.col_indices(), B.col_indices()) and torch.allclose(
                A.values(), B.values(), rtol=1e-5, atol=1e-7
            )
            row["same C"] = "yes" if same else "NO"
            del A, B
        shutil.rmtree(folder)
    # online: a later reader opens the store memory-mapped
    store = OfflineStore.open(single)
    q = mixture(max(online, 1000), d, seed + 2)
    gamma = 3.0

    from graphrerank.diffusion import offline_diffusion_scores

    C = store.to_csr() if n <= 200_000 else None  # the in-memory reference, same process

    def search(qb, matrix=None):
        knn = index.search(qb, kq)
        t = time.perf_counter()
        if matrix is None:
            F = store.scores(knn, gamma)
        else:
            F = offline_diffusion_scores(matrix, knn, gamma)
        r = rank_csr(F, k, qb, x, index, "similarity")
        return r, time.perf_counter() - t

    try:
        search(q[:10])  # warm-up
    except Exception as err:  # report the precompute even if the online step fails
        row["online error"] = f"{type(err).__name__}: {err}"
        return row
    singles_knn, singles_diff = [], []
    for i in range(online):
        t = time.perf_counter()
        _, dt = search(q[i : i + 1])
        singles_knn.append(time.perf_counter() - t - dt)
        singles_diff.append(dt)
    row["online ms/query (1)"] = 1000 * (median(singles_knn) + median(singles_diff))
    row["of it diffusion (1)"] = 1000 * median(singles_diff)
    t = time.perf_counter()
    c = time.process_time()
    r_store, dt = search(q[:1000])
    row["online ms/query (1000)"] = 1000 * (time.perf_counter() - t) / 1000
    row["online CPU ms/query (1000)"] = 1000 * (time.process_time() - c) / 1000
    row["of it diffusion (1000)"] = 1000 * dt / 1000
    if C is not None:
        mem_single = [search(q[i : i + 1], C)[1] for i in range(online)]
        row["in-memory C diffusion (1)"] = 1000 * median(mem_single)
        c = time.process_time()
        r_mem, dt = search(q[:1000], C)
        row["in-memory C diffusion (1000)"] = 1000 * dt / 1000
        row["same rankings"] = "yes" if torch.equal(r_mem.indices, r_store.indices) else "NO"
    row["base MiB"] = base
    if not keep:
        shutil.rmtree(single)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--kd", type=int, default=50)
    ap.add_argument("--kq", type=int, default=10)
    ap.add_argument("--truncation", type=int, default=1000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--nlist", type=int, default=None)
    ap.add_argument("--nprobe", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cluster", action="store_true", help="also run on a LocalCluster")
    ap.add_argument("--online", type=int, default=100, help="single queries timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default=None, help="folder for the stores (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the single-process store")
    ap.add_argument(
        "--online-only", action="store_true", help="time the online step on a kept store"
    )
    args = ap.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="bench_scale_")
    rows = []
    for n in args.sizes:
        rows.append(
            isolated(
                run_size,
                n=n,
                d=args.dim,
                kd=args.kd,
                kq=args.kq,
                truncation=args.truncation,
                k=args.k,
                nlist=args.nlist,
                nprobe=args.nprobe,
                workers=args.workers,
                cluster=args.cluster,
                online=args.online,
                seed=args.seed,
                root=root,
                keep=args.keep,
                online_only=args.online_only,
            )
        )
        print(rows[-1], flush=True)
    print(f"\nMachine: {machine()}\n\nCommand: python {' '.join(sys.argv)}\n")
    cols = [
        ("N", "N"),
        ("T", "T"),
        ("kd", "kd"),
        ("nlist/nprobe", "nlist/nprobe"),
        ("recall@T", "recall@T"),
        ("recall@kd", "recall@kd"),
        ("index s", "index s"),
        ("kNN lists s", "kNN lists s"),
        ("graph + solves s", "graph + solves s"),
        ("single wall s", "wall s (1 process)"),
        ("ms/node", "graph + solves ms/node"),
        ("CPU s", "CPU s"),
        ("kNN CPU ms/node", "kNN CPU ms/node"),
        ("graph + solves CPU ms/node", "graph + solves CPU ms/node"),
        ("peak RSS MiB", "peak RSS MiB"),
        ("data MiB", "data MiB"),
        ("store GiB", "store GiB"),
    ]
    if not args.online_only:
        print(table(rows, cols))
    if args.cluster and not args.online_only:
        print()
        print(
            table(
                rows,
                [
                    ("N", "N"),
                    ("single wall s", "1 process s"),
                    ("cluster wall s", f"LocalCluster ({args.workers} workers) s"),
                    ("cluster kNN s", "of it kNN lists s"),
                    ("cluster graph + solves s", "of it graph + solves s"),
                    ("speed-up", "speed-up"),
                    ("CPU s", "1 process CPU s"),
                    ("cluster CPU s", "cluster CPU s (all processes)"),
                    ("worker peak RSS MiB", "worker peak RSS MiB"),
                    ("same C", "same C"),
                ],
            )
        )
    print()
    print(
        table(
            rows,
            [
                ("N", "N"),
                ("online ms/query (1)", "ms/query, batch 1"),
                ("of it diffusion (1)", "of it store + ranking"),
                ("online ms/query (1000)", "ms/query, batch 1000"),
                ("of it diffusion (1000)", "of it store + ranking"),
                ("online CPU ms/query (1000)", "CPU ms/query, batch 1000"),
                ("in-memory C diffusion (1)", "in-memory C + ranking, batch 1"),
                ("in-memory C diffusion (1000)", "in-memory C + ranking, batch 1000"),
                ("same rankings", "same rankings"),
            ],
        )
    )


if __name__ == "__main__":
    main()
