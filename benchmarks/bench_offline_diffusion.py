"""Offline diffusion (Yang et al., AAAI 2019) against the reference code's algorithm.

For each size ``N:Q`` (a database of N synthetic descriptors from ``make_retrieval_dataset``,
d = 2048 by default, and Q new queries), fresh processes alternate between

* ours: ``OfflineDiffusion(kd=50, kq=10, truncation=1000).fit(database)`` (kNN lists,
  mutual kNN graph, the late-truncated systems solved block by block), then
  ``rerank(queries, k)``;
* the reference (``_reference_fyang93.py``: faiss flat search, mutual affinity node by node,
  ``L[T_i][:, T_i]`` and ``scipy.sparse.linalg.cg`` per node in a joblib thread pool, online
  ``y @ C`` made dense and argsorted),

``--repeats`` times each (ours, reference, ours, reference, ...), with the same thread count
(torch, faiss and joblib workers). With ``--baseline DIR`` a third process per repeat runs
ours from the graphrerank tree at ``DIR`` (a snapshot of an earlier version: ``git archive``
of a commit), interleaved with the other two, for before / after ratios from one run. Printed: the median fit, fit + rerank of the Q queries,
online ms per query in one batch of Q and for single queries (median of ``--single``), the
peak resident memory of the process, the ratio reference / ours (higher is better), the
load average during the runs, and the agreement of the rankings (top-10 and top-100 lists
equal, mean overlap of the top-k).

Full run (the table in ``benchmarks/results/offline_diffusion.md``):

    nice python benchmarks/bench_offline_diffusion.py --sizes 10000:1000 19732:3368

Quick check:

    python benchmarks/bench_offline_diffusion.py --sizes 2000:200 --repeats 1 --dim 256

The online batch step alone, the three alternating in one process (ours, ours through the
sparse ranking it replaced, the reference; median of 5 calls each):

    python benchmarks/bench_offline_diffusion.py --sizes 10000:1000 --repeats 5 --in-process

Before / after (the committed tree against the working tree):

    d=$(mktemp -d) && git archive HEAD | tar -x -C $d
    python benchmarks/bench_offline_diffusion.py --sizes 10000:1000 --repeats 2 --baseline $d
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table


def _data(n, q, dim):
    from graphrerank.datasets import make_retrieval_dataset

    ds = make_retrieval_dataset(
        num_items=n, dim=dim, num_classes=max(10, n // 100), num_queries=q, seed=0
    )
    return ds.database.float().contiguous(), ds.queries.float().contiguous()


def run_one(which, n, q, dim, k, threads, single, tree=None):
    """One fit + rerank of ``which`` ("ours" or "reference") in this fresh process (ours
    imported from the graphrerank tree at ``tree`` when given)."""
    if tree is not None:
        if "graphrerank" in sys.modules:
            raise RuntimeError("graphrerank was imported before the baseline tree was set")
        sys.path.insert(0, str(tree))
    import faiss
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x, queries = _data(n, q, dim)
    base = rss_mb()
    load = [os.getloadavg()[0]]
    out = {}
    if which == "ours":
        from graphrerank.rerankers import OfflineDiffusion

        model = OfflineDiffusion(kd=50, kq=10, truncation=1000, progress=False)
        t = time.perf_counter()
        model.fit(x)
        out["fit_s"] = time.perf_counter() - t
        t = time.perf_counter()
        res = model.rerank(queries, k)
        out["online_s"] = time.perf_counter() - t
        ranks = res.indices.numpy()

        def one(i):
            model.rerank(queries[i : i + 1], k)

    else:
        from _reference_fyang93 import Fyang93

        model = Fyang93(kd=50, kq=10, truncation=1000, n_jobs=threads)
        xn, qn = x.numpy(), queries.numpy()
        t = time.perf_counter()
        model.fit(xn)
        out["fit_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _, ranks = model.search(qn, k)
        out["online_s"] = time.perf_counter() - t

        def one(i):
            model.search(qn[i : i + 1], k)

    times = []
    for i in range(min(single, q) + 1):
        t = time.perf_counter()
        one(i)
        if i:  # the first call warms up
            times.append(time.perf_counter() - t)
    out["single_ms"] = 1000 * median(times)
    load.append(os.getloadavg()[0])
    out["load"] = sum(load) / len(load)
    out["peak_mb"] = rss_mb()
    out["base_mb"] = base
    out["ranks"] = np.asarray(ranks, dtype=np.int64)
    return out


def online_in_process(n, q, dim, k, threads, repeats):
    """The online batch step only, in one process: ours (dense lexicographic ranking), ours
    through the sparse ranking path it replaced (``_rank_rows``) and the reference, each
    fitted once, then called in turn ``repeats`` times (the same load for all three)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    from _reference_fyang93 import Fyang93

    import graphrerank.rerankers.offline as mod
    from graphrerank.rerankers import OfflineDiffusion

    x, queries = _data(n, q, dim)
    model = OfflineDiffusion(kd=50, kq=10, truncation=1000, progress=False).fit(x)
    ref = Fyang93(kd=50, kq=10, truncation=1000, n_jobs=threads).fit(x.numpy())
    qn = queries.numpy()
    dense = mod._ranks_densely
    times = {"ours": [], "sparse path": [], "reference": []}
    loads, out = [], {}
    try:
        for _ in range(repeats):
            for which in times:
                mod._ranks_densely = dense if which == "ours" else (lambda *a: False)
                loads.append(os.getloadavg()[0])
                t = time.perf_counter()
                r = ref.search(qn, k) if which == "reference" else model.rerank(queries, k)
                times[which].append(1000 * (time.perf_counter() - t) / q)
                out.setdefault(which, r)
    finally:
        mod._ranks_densely = dense
    a, b = out["ours"], out["sparse path"]
    diff = a.indices != b.indices
    sims = queries @ x.T
    swaps = all(  # the lists differ only by items of equal score 0 and equal similarity
        bool((a.scores[i][diff[i]] == 0).all())
        and torch.equal(
            sims[i, a.indices[i][diff[i]]].sort().values,
            sims[i, b.indices[i][diff[i]]].sort().values,
        )
        for i in diff.any(1).nonzero().flatten().tolist()
    )
    row = {"size": f"{n} + {q}", "load": f"{min(loads):.1f}-{max(loads):.1f}"}
    for which, v in times.items():
        row[which] = median(v)
    row["x"] = row["reference"] / row["ours"]
    row["x_sparse"] = row["reference"] / row["sparse path"]
    row["same_scores"] = bool(torch.equal(a.scores, b.scores))
    row["rows_equal"] = float((~diff).all(1).float().mean())
    row["only_ties"] = swaps
    return row


def agreement(a, b, k):
    import numpy as np

    kk = min(k, a.shape[1], b.shape[1])
    top10 = float(np.mean((a[:, :10] == b[:, :10]).all(1)))
    top100 = float(np.mean((a[:, :100] == b[:, :100]).all(1)))
    overlap = np.mean([len(np.intersect1d(a[i, :kk], b[i, :kk])) / kk for i in range(len(a))])
    return top10, top100, float(overlap)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", default=["10000:1000", "19732:3368"], help="N:Q")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=1000, help="length of the online ranking")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--single", type=int, default=30, help="single queries timed")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="time only the online batch step, ours / ours' sparse ranking / the reference "
        "alternating in one process (median of --repeats)",
    )
    p.add_argument(
        "--baseline", default=None, help="a graphrerank tree (an earlier version) run as 'before'"
    )
    args = p.parse_args(argv)
    kinds = ("ours", "reference") + (("before",) if args.baseline else ())
    if args.in_process:
        rows = [
            isolated(
                online_in_process,
                n=int(spec.split(":")[0]),
                q=int(spec.split(":")[1]),
                dim=args.dim,
                k=args.k,
                threads=args.threads,
                repeats=args.repeats,
            )
            for spec in args.sizes
        ]
        print(f"Machine: {machine()}; {args.threads} threads\n")
        print(
            "Command: python benchmarks/bench_offline_diffusion.py "
            + " ".join(sys.argv[1:] if argv is None else argv)
            + "\n"
        )
        cols = [
            ("size", "N + Q"),
            ("ours", "ms/query batch (ours)"),
            ("sparse path", "ms/query batch (ours, sparse ranking)"),
            ("reference", "ms/query batch (fyang93)"),
            ("x", "batch x"),
            ("x_sparse", "batch x (sparse ranking)"),
            ("same_scores", "scores equal"),
            ("rows_equal", "lists equal"),
            ("only_ties", "others differ by ties only"),
            ("load", "load"),
        ]
        print(table(rows, cols))
        return

    rows = []
    for spec in args.sizes:
        n, q = (int(v) for v in spec.split(":"))
        runs = {which: [] for which in kinds}
        for r in range(args.repeats):
            for which in kinds:
                out = isolated(
                    run_one,
                    which="ours" if which == "before" else which,
                    tree=args.baseline if which == "before" else None,
                    n=n,
                    q=q,
                    dim=args.dim,
                    k=args.k,
                    threads=args.threads,
                    single=args.single,
                )
                runs[which].append(out)
                print(
                    f"N={n} {which} #{r}: fit {out['fit_s']:.2f} s, online "
                    f"{out['online_s']:.2f} s, load {out['load']:.1f}",
                    file=sys.stderr,
                )
        top10, top100, overlap = agreement(
            runs["ours"][0]["ranks"], runs["reference"][0]["ranks"], args.k
        )
        row = {"size": f"{n} + {q}", "top10": top10, "top100": top100, "overlap": overlap}
        for which, tag in (("ours", "o"), ("reference", "r"), ("before", "b")):
            rs = runs.get(which)
            if not rs:
                continue
            row[f"fit_{tag}"] = median([o["fit_s"] for o in rs])
            row[f"all_{tag}"] = median([o["fit_s"] + o["online_s"] for o in rs])
            row[f"qb_{tag}"] = 1000 * median([o["online_s"] for o in rs]) / q
            row[f"q1_{tag}"] = median([o["single_ms"] for o in rs])
            row[f"mem_{tag}"] = max(o["peak_mb"] for o in rs)
        row["fit_x"] = row["fit_r"] / row["fit_o"]
        row["all_x"] = row["all_r"] / row["all_o"]
        row["qb_x"] = row["qb_r"] / row["qb_o"]
        row["q1_x"] = row["q1_r"] / row["q1_o"]
        if args.baseline:
            row["qb_bx"] = row["qb_r"] / row["qb_b"]
            row["q1_bx"] = row["q1_r"] / row["q1_b"]
        loads = [o["load"] for rs in runs.values() for o in rs]
        row["load"] = f"{min(loads):.1f}-{max(loads):.1f}"
        rows.append(row)

    print(f"Machine: {machine()}; {args.threads} threads (torch, faiss, joblib workers)\n")
    print(
        "Command: python benchmarks/bench_offline_diffusion.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
    )
    print()
    print(
        table(
            rows,
            [
                ("size", "N + Q"),
                ("fit_o", "fit s (ours)"),
                ("fit_r", "fit s (fyang93)"),
                ("fit_x", "fit x"),
                ("all_o", "fit+rerank s (ours)"),
                ("all_r", "fit+rerank s (fyang93)"),
                ("all_x", "fit+rerank x"),
                ("mem_o", "peak MiB (ours)"),
                ("mem_r", "peak MiB (fyang93)"),
                ("load", "load"),
            ],
        )
    )
    print()
    before = [
        ("size", "N + Q"),
        ("qb_b", "ms/query batch (before)"),
        ("qb_bx", "batch x (before)"),
        ("q1_b", "ms single query (before)"),
        ("q1_bx", "single x (before)"),
        ("fit_b", "fit s (before)"),
    ]
    print(
        table(
            rows,
            [
                ("size", "N + Q"),
                ("qb_o", "ms/query batch (ours)"),
                ("qb_r", "ms/query batch (fyang93)"),
                ("qb_x", "batch x"),
                ("q1_o", "ms single query (ours)"),
                ("q1_r", "ms single query (fyang93)"),
                ("q1_x", "single x"),
                ("top10", "top-10 equal"),
                ("top100", "top-100 equal"),
                ("overlap", f"top-{args.k} overlap"),
            ],
        )
    )

    if args.baseline:
        print(f"\nBefore: ours from {args.baseline}, interleaved with the runs above\n")
        print(table(rows, before))


if __name__ == "__main__":
    main()
