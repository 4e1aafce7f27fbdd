"""Time query expansion (alpha-QE), database augmentation (DBA) and SuperGlobal re-ranking.

For each size and each method it measures

* ``search``: the bare first-stage kNN search the method needs (faiss, exact), for scale;
* ``step``: the re-ranking step alone, given that search's result (alpha-QE: expanding the
  queries; DBA: augmenting the database given its kNN graph; SuperGlobal: refining the
  top-M shortlist of every query, on a fitted re-ranker; all-vs-all with the first 64
  entries of the database items' lists at hand, ``database_neighbors=64``, as ``rerank(None)``
  reads them from its own first-stage search);
* ``end to end``: ``fit(database)`` then ``rerank(queries, k=100)`` from scratch;

for graphrerank and for the reference. For alpha-QE and DBA that is a straightforward dense
torch transcription of the formulas; for SuperGlobal it is the official code's algorithm in
its own dtypes and operations (``dense_superglobal``: float32 torch, per block of
``--sg-batch`` queries the shortlist gathered twice, the M x M similarities sorted twice,
``b x M x (K+1) x D`` neighbour descriptors gathered in a loop over the block's queries,
the ranking rebuilt per query; end to end from a full argsort of the similarities).

Sizes: ``QxN`` (Q queries, a database of N synthetic items of dimension ``--dim`` from
``make_retrieval_dataset``), ``digits`` (the 1,797 scikit-learn digits, 64-d, all-vs-all:
``rerank(None)``), ``corel`` (Corel-1k, 1,280-d, its 1,000 descriptors as explicit queries)
and ``corel-all`` (the same, all-vs-all); the real sets need ``GRAPHRERANK_DATA``.

Every measurement runs in a fresh process (``_common.isolated``), ours and the reference's
alternating, so its peak resident memory is its own; times are medians over ``--repeats``
runs after ``--warmup`` runs, with ``--threads`` torch threads. ``ratio`` is the reference's
time over graphrerank's, measured in the same run; ``load`` is the 1-minute load average when
the measurement started and ended; ``agree`` is the share of the top-100 entries in which the
SuperGlobal ranking equals the reference's (over the queries the reference ran). With
``--ref-queries R`` the SuperGlobal reference runs on the first R queries only and its time
is scaled by Q / R (it treats blocks of queries independently: its time is linear in Q).

Full size (Market-1501's 3,368 queries and 19,732 gallery items at d = 2048), as recorded in
``benchmarks/results/neighbourhood.md``:

    nice python benchmarks/bench_neighbourhood.py --sizes digits corel corel-all 3368x19732 \
        --dim 2048 --repeats 3 --ref-queries 200

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
_ALL_VS_ALL_DEPTH = 64  # as graphrerank.rerankers.superglobal: the first-stage lists it reads
M, K, BETA = 400, 9, 0.15


def _data(size, dim, cache=None):
    """``(queries, database, all_vs_all)`` of a size token (see the module docstring)."""
    import torch
    from torch.nn.functional import normalize

    if size in ("digits", "corel", "corel-all"):
        from graphrerank.datasets import load_corel1k, load_digits_retrieval

        ds = load_digits_retrieval() if size == "digits" else load_corel1k()
        x = normalize(ds.database.float(), dim=1).contiguous()
        return x.clone(), x, size != "corel"
    nq, n = (int(v) for v in size.lower().split("x"))
    path = None if cache is None else Path(cache) / f"synthetic_{nq}x{n}x{dim}.pt"
    if path is not None and path.exists():
        q, x = torch.load(path)
        return q, x, False
    from graphrerank.datasets import make_retrieval_dataset

    ds = make_retrieval_dataset(
        num_items=n, dim=dim, num_classes=max(10, n // 50), num_queries=nq, seed=0
    )
    q, x = ds.queries.contiguous(), ds.database.contiguous()
    if path is not None:
        torch.save((q, x), path)
    return q, x, False


def _label(size):
    names = {"digits": "digits (1797, all-vs-all)", "corel": "Corel-1k (1000 queries)"}
    names["corel-all"] = "Corel-1k (all-vs-all)"
    return names.get(size, size.replace("x", " x "))


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
    """The official ``MDescAug`` + ``RerankwMDA`` (float32 torch), one block of ``batch`` queries
    at a time (the official code takes all queries in one block: 70 on ROxford; at Market size
    that would hold 3,368 x 400 x 10 x 2048 floats).

    As the official code: the shortlist's descriptors are gathered twice, the M x M
    similarities are sorted twice (``argsort`` and ``sort`` of copies), every shortlisted item's
    K + 1 neighbour descriptors are gathered per query in a Python loop and averaged, the
    refined descriptors re-gathered in the new order, and the ranking rebuilt per query with
    the rest of the first-stage ranking ``ranks[:, m:]`` appended. Returns the new ranking.
    """
    import torch

    kk = kk + 1  # including oneself
    out = []
    for s in range(0, q.shape[0], batch):
        r = ranks[s : s + batch]
        r_m = r[:, :m]
        x1 = x[r_m]  # (b, M, D)
        g = torch.einsum("abc,adc->abd", x1, x1)
        o = torch.argsort(-g.clone(), dim=-1)[:, :, :kk]
        v = -torch.sort(-g.clone(), dim=-1)[0][:, :, :kk, None]
        v[:, :, 1:, :] *= beta
        v[:, :, 0:1, :] = 1.0
        x_dba = x[r_m]
        xd = torch.stack([j[i] for i, j in zip(o, x_dba)], 0)  # (b, M, K+1, D)
        xd = torch.sum(xd * v, 2) / torch.sum(v, 2)
        a = torch.einsum("ac,adc->ad", q[s : s + batch], xd)
        pre = torch.argsort(-a, -1)
        first = torch.stack([r_m[i][pre[i]] for i in range(pre.shape[0])], 0)
        a_sorted = -torch.sort(-a, -1)[0]
        _unused = a_sorted[:, :kk].clone() * beta  # computed there, unused
        x_top = torch.take_along_dim(xd, pre[:, :kk, None], 1)
        x2 = torch.take_along_dim(xd, pre[..., None], 1)
        x_top = torch.max(x_top, 1, True)[0]
        f = torch.sum(torch.einsum("abc,adc->abd", x_top, x2), 1)
        f = (a_sorted + f) / 2.0
        order = torch.argsort(-f, dim=-1)
        tail = r[:, m:]
        out.extend(torch.cat([first[i][order[i]], tail[i]], 0) for i in range(order.shape[0]))
    return torch.stack(out, 0)


# ----------------------------------------------------------------------------- measurements


def measure(method, impl, stage, size, dim, repeats, sg_batch, threads, warmup, ref_queries, cache):
    import os

    import torch
    from torch.nn.functional import normalize

    from graphrerank.graph import knn_graph, knn_search, to_torch_csr
    from graphrerank.nn import ExpansionPropagation, bipartite_adjacency
    from graphrerank.rerankers import AlphaQueryExpansion, DatabaseAugmentation, SuperGlobal

    torch.set_num_threads(threads)
    q, x, all_vs_all = _data(size, dim, cache)
    n = x.shape[0]
    fn = None
    scale, keep = 1.0, None
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
        ours_q = None if all_vs_all else q
        nref = q.shape[0] if not ref_queries else min(ref_queries, q.shape[0])
        keep = nref
        if stage == "search":
            fn = lambda: knn_search(q, x, M)  # noqa: E731
        elif stage == "step":
            first = knn_search(q, x, M)
            if impl == "graphrerank":
                # All-vs-all, rerank(None) reads the database items' neighbours from its own
                # exact first-stage lists; a given ``initial`` might be approximate, so the
                # step gets the same lists as database_neighbors=64 (built at fit, untimed):
                # the work that end to end does after its search (without them the step
                # would time each query's own M x M product: 2.5-4x slower on digits).
                own = _ALL_VS_ALL_DEPTH if all_vs_all and lists is None else lists
                sg = SuperGlobal(M=M, K=K, beta=BETA, database_neighbors=own).fit(x)
                fn = lambda: sg.rerank(ours_q, TOP, initial=first).indices  # noqa: E731
            else:
                scale = q.shape[0] / nref
                qr, fr = q[:nref], first.indices[:nref]
                fn = lambda: dense_superglobal(qr, x, fr, M, K, BETA, sg_batch)  # noqa: E731
        elif impl == "graphrerank":
            fn = lambda: (  # noqa: E731
                SuperGlobal(M=M, K=K, beta=BETA, database_neighbors=lists)
                .fit(x)
                .rerank(ours_q, TOP)
                .indices
            )
        else:
            scale = q.shape[0] / nref
            qr = q[:nref]

            def fn():
                # As the official test script: similarities, a full argsort, the re-ranking.
                ranks = torch.argsort(-(x @ qr.T), dim=0).T
                return dense_superglobal(qr, x, ranks, M, K, BETA, sg_batch)

    base = rss_mb()
    load0 = os.getloadavg()[0]
    out = {}

    def run():
        out["r"] = fn()

    ts = timed(run, repeats, warmup=warmup)
    res = {
        "median_s": median(ts) * scale,
        "peak_mb": rss_mb(),
        "base_mb": base,
        "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}",
    }
    if keep is not None and stage != "search":
        res["top"] = out["r"][:keep, :TOP].numpy().copy()  # a tensor would travel as a handle
    if scale != 1.0:
        res["note"] = f"reference on {keep} of {q.shape[0]} queries, time x {scale:.3g}"
    return res


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
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument(
        "--ref-queries", type=int, default=0, help="SuperGlobal reference on this many queries"
    )
    p.add_argument("--cache", type=Path, help="keep the synthetic data in this folder")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    p.add_argument(
        "--stages",
        nargs="*",
        default=["search", "step", "end to end"],
        choices=["search", "step", "end to end"],
        help="stages to time (default: all three)",
    )
    args = p.parse_args(argv)

    rows = []
    for size in args.sizes:
        for method in args.methods:
            for stage in args.stages:
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
                        size=size,
                        dim=args.dim,
                        repeats=args.repeats,
                        sg_batch=args.sg_batch,
                        threads=args.threads,
                        warmup=args.warmup,
                        ref_queries=args.ref_queries,
                        cache=args.cache,
                    )
                    res[impl] = r
                    label = "faiss kNN" if stage == "search" else impl
                    if impl == "dense" and method.startswith("SuperGlobal"):
                        label = "reference"
                    rows.append(
                        {
                            "size": _label(size),
                            "method": method,
                            "stage": stage,
                            "impl": label,
                            **r,
                        }
                    )
                ours, dense = res.get("graphrerank", {}), res.get("dense", {})
                if "median_s" in ours and "median_s" in dense:
                    rows[-2]["ratio"] = dense["median_s"] / ours["median_s"]
                if "top" in ours and "top" in dense:
                    a, b = ours.pop("top"), dense.pop("top")
                    rows[-2]["agree"] = float((a[: b.shape[0]] == b).mean())
                for r in res.values():
                    r.pop("top", None)
                print(f"done {size} {method} {stage}", file=sys.stderr, flush=True)

    text = "\n".join(
        [
            f"Machine: {machine()}",
            f"Command: python benchmarks/bench_neighbourhood.py {' '.join(argv or sys.argv[1:])}",
            f"d = {args.dim}; alpha-QE k={QE_K}, alpha={ALPHA}; DBA k={DBA_K}; SuperGlobal "
            f"M={M}, K={K}, beta={BETA} (+lists: database_neighbors=64, lists built at fit); "
            f"ranked lists of {TOP}; {args.threads} threads; median of {args.repeats} runs "
            f"after {args.warmup} warm-up; peak = resident memory of the measuring process; "
            "ratio = reference time / graphrerank time; agree = share of equal top-100 "
            "entries; load = 1-minute load average at the start and end of the measurement.",
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
                    ("agree", "agree"),
                    ("load", "load"),
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
