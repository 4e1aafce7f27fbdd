"""Time query expansion (alpha-QE), database augmentation (DBA) and SuperGlobal re-ranking.

For each size ``QxN`` (Q queries, a database of N items, synthetic descriptors of dimension
``--dim`` from ``make_retrieval_dataset``) and each method it measures

* ``search``: the bare first-stage kNN search the method needs (faiss, exact), for scale;
* ``step``: the re-ranking step alone, given that search's result (alpha-QE: expanding the
  queries; DBA: augmenting the database given its kNN graph; SuperGlobal: refining the
  top-M shortlist of every query);
* ``end to end``: ``fit(database)`` then ``rerank(queries, k=100)`` from scratch;

for graphrerank and for a straightforward dense torch transcription of the same formulas run
in the same process family (the SuperGlobal one gathers ``b x M x (K+1) x D`` descriptors per
block of ``b`` queries and sorts the ``M x M`` similarities, as the official code does).
Every measurement runs in a fresh process (``_common.isolated``), so its peak resident memory
is its own; times are medians over ``--repeats`` runs after one warm-up. ``ratio`` is the
dense transcription's time over graphrerank's, measured in the same run.

Full size (Market-1501's 3,368 queries and 19,732 gallery items at d = 2048, and a database
of 100k items), as recorded in the repository:

    python benchmarks/bench_neighbourhood.py --sizes 3368x19732 1000x100000 --dim 2048 --repeats 3

Quick check (a few seconds a row):

    python benchmarks/bench_neighbourhood.py --sizes 200x2000 --dim 256 --repeats 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table, timed

QE_K, ALPHA, DBA_K, TOP = 5, 3.0, 5, 100
M, K, BETA = 400, 9, 0.15


def _data(nq, n, dim):
    import torch

    from graphrerank.datasets import make_retrieval_dataset

    ds = make_retrieval_dataset(
        num_items=n, dim=dim, num_classes=max(10, n // 50), num_queries=nq, seed=0
    )
    torch.set_num_threads(torch.get_num_threads())
    return ds.queries.contiguous(), ds.database.contiguous()


# ----------------------------------------------------------------------------- dense references


def dense_qe(q, x, k, alpha):
    """q' = norm(q + sum_{top-k} (q.x)^alpha x) with a full Q x N similarity matrix."""
    import torch

    s = q @ x.T
    w, nn = s.topk(k, dim=1)
    v = q + (w.clamp(min=0).pow(alpha)[:, :, None] * x[nn]).sum(1)
    return torch.nn.functional.normalize(v, dim=1)


def dense_dba(x, k):
    """x_i' = norm(x_i + sum of its k nearest other items) with a full N x N matrix."""
    import torch

    s = x @ x.T
    s.fill_diagonal_(float("-inf"))
    _, nn = s.topk(k, dim=1)
    del s
    return torch.nn.functional.normalize(x + x[nn].sum(1), dim=1)


def dense_superglobal(q, x, ranks, m, kk, beta, batch):
    """The official MDescAug + RerankwMDA, vectorised per block of ``batch`` queries."""
    import torch

    out = []
    for s in range(0, q.shape[0], batch):
        r = ranks[s : s + batch, :m]
        x1 = x[r]  # (b, M, D)
        g = torch.einsum("abc,adc->abd", x1, x1)
        v, o = torch.sort(g, dim=-1, descending=True)
        v, o = v[:, :, : kk + 1].clone(), o[:, :, : kk + 1]
        del g
        v[:, :, 1:] *= beta
        v[:, :, :1] = 1.0
        xd = torch.stack([x1[i][o[i]] for i in range(x1.shape[0])])  # (b, M, K+1, D)
        xd = (xd * v[..., None]).sum(2) / v.sum(2)[..., None]
        a = torch.einsum("ac,adc->ad", q[s : s + batch], xd)
        pre = torch.argsort(-a, dim=-1)
        a_sorted = -torch.sort(-a, dim=-1)[0]
        x2 = torch.take_along_dim(xd, pre[..., None], 1)
        qt = x2[:, : kk + 1].max(1, keepdim=True)[0]
        f = (a_sorted + torch.einsum("abc,adc->abd", qt, x2).sum(1)) / 2
        order = torch.argsort(-f, dim=-1)
        out.append(torch.take_along_dim(r.gather(1, pre), order, 1))
    return torch.cat(out)


# ----------------------------------------------------------------------------- measurements


def measure(method, impl, stage, nq, n, dim, repeats, sg_batch):
    from torch.nn.functional import normalize

    from graphrerank.graph import knn_graph, knn_search, to_torch_csr
    from graphrerank.nn import ExpansionPropagation, bipartite_adjacency
    from graphrerank.rerankers import AlphaQueryExpansion, DatabaseAugmentation, SuperGlobal

    q, x = _data(nq, n, dim)
    fn = None
    if method == "alpha-QE":
        if stage == "search":
            fn = lambda: knn_search(q, x, QE_K)  # noqa: E731
        elif stage == "step":
            s, i = knn_search(q, x, QE_K)
            if impl == "graphrerank":
                layer = ExpansionPropagation(alpha=ALPHA)
                fn = lambda: layer((x, q), bipartite_adjacency(i, s, n))  # noqa: E731
            else:
                fn = lambda: normalize(  # noqa: E731
                    q + (s.clamp(min=0).pow(ALPHA)[:, :, None] * x[i]).sum(1), dim=1
                )
        elif impl == "graphrerank":
            fn = lambda: AlphaQueryExpansion(k=QE_K, alpha=ALPHA).fit(x).rerank(q, TOP)  # noqa: E731
        else:
            fn = lambda: (dense_qe(q, x, QE_K, ALPHA) @ x.T).topk(TOP, dim=1)  # noqa: E731
    elif method == "DBA":
        if impl == "dense" and n * n * 4 > 16 * 2**30 and stage != "search":
            return {"note": f"skipped: the N x N matrix takes {n * n * 4 / 2**30:.0f} GiB"}
        if stage == "search":
            fn = lambda: knn_search(x, x, DBA_K + 1)  # noqa: E731
        elif stage == "step":
            if impl == "graphrerank":
                adj = to_torch_csr(knn_graph(x, DBA_K, k_includes_self=False, gamma=None))
                layer = ExpansionPropagation(alpha=0.0)
                fn = lambda: layer(x, adj)  # noqa: E731
            else:
                _, nn = knn_search(x, x, DBA_K + 1)
                nn = nn[:, 1:]
                fn = lambda: normalize(x + x[nn].sum(1), dim=1)  # noqa: E731
        elif impl == "graphrerank":
            fn = lambda: DatabaseAugmentation(k=DBA_K).fit(x).rerank(q, TOP)  # noqa: E731
        else:
            fn = lambda: (q @ dense_dba(x, DBA_K).T).topk(TOP, dim=1)  # noqa: E731
    elif method.startswith("SuperGlobal"):
        lists = 64 if "lists" in method else None
        if stage == "search":
            fn = lambda: knn_search(q, x, M)  # noqa: E731
        elif stage == "step":
            first = knn_search(q, x, M)
            if impl == "graphrerank":
                sg = SuperGlobal(M=M, K=K, beta=BETA, database_neighbors=lists).fit(x)
                fn = lambda: sg.rerank(q, TOP, initial=first)  # noqa: E731
            else:
                fn = lambda: dense_superglobal(q, x, first.indices, M, K, BETA, sg_batch)  # noqa: E731
        elif impl == "graphrerank":
            fn = lambda: (  # noqa: E731
                SuperGlobal(M=M, K=K, beta=BETA, database_neighbors=lists).fit(x).rerank(q, TOP)
            )
        else:

            def fn():
                s = q @ x.T
                return dense_superglobal(q, x, s.topk(M, dim=1).indices, M, K, BETA, sg_batch)

    base = rss_mb()
    ts = timed(fn, repeats)
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="*", default=["3368x19732", "1000x100000"])
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--methods", nargs="*", default=["alpha-QE", "DBA", "SuperGlobal", "SuperGlobal+lists"]
    )
    p.add_argument("--sg-batch", type=int, default=16, help="queries per block, dense SuperGlobal")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)

    rows = []
    for size in args.sizes:
        nq, n = (int(v) for v in size.lower().split("x"))
        for method in args.methods:
            stages = ["search", "step", "end to end"]
            for stage in stages:
                impls = ["graphrerank"] if stage == "search" else ["graphrerank", "dense"]
                if method == "SuperGlobal+lists" and stage != "search":
                    impls = ["graphrerank"]
                if method == "SuperGlobal+lists" and stage == "search":
                    continue
                res = {}
                for impl in impls:
                    r = isolated(
                        measure,
                        method=method,
                        impl=impl,
                        stage=stage,
                        nq=nq,
                        n=n,
                        dim=args.dim,
                        repeats=args.repeats,
                        sg_batch=args.sg_batch,
                    )
                    res[impl] = r
                    label = "faiss kNN" if stage == "search" else impl
                    rows.append(
                        {
                            "size": f"{nq} x {n}",
                            "method": method,
                            "stage": stage,
                            "impl": label,
                            **r,
                        }
                    )
                ours, dense = res.get("graphrerank", {}), res.get("dense", {})
                if "median_s" in ours and "median_s" in dense:
                    rows[-2]["ratio"] = dense["median_s"] / ours["median_s"]
                print(f"done {size} {method} {stage}", file=sys.stderr, flush=True)

    text = "\n".join(
        [
            f"Machine: {machine()}",
            f"Command: python benchmarks/bench_neighbourhood.py {' '.join(argv or sys.argv[1:])}",
            f"d = {args.dim}; alpha-QE k={QE_K}, alpha={ALPHA}; DBA k={DBA_K}; SuperGlobal "
            f"M={M}, K={K}, beta={BETA} (+lists: database_neighbors=64, lists built at fit); "
            f"ranked lists of {TOP}; median of {args.repeats} runs; peak = resident memory of "
            "the measuring process; ratio = dense time / graphrerank time.",
            "",
            table(
                rows,
                [
                    ("size", "Q x N"),
                    ("method", "method"),
                    ("stage", "stage"),
                    ("impl", "implementation"),
                    ("median_s", "median s"),
                    ("peak_mb", "peak MiB"),
                    ("ratio", "ratio"),
                    ("note", "note"),
                ],
            ),
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
