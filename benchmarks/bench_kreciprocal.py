"""Time and memory of k-reciprocal and GNN re-ranking against dense transcriptions.

Synthetic descriptors (:func:`graphrerank.datasets.make_retrieval_dataset`, one curve per
class, about 26 database items per class) with queries and database in one graph, as the
re-ID protocol uses them. Every measurement runs in a fresh process, so the peak memory
reported is its own.

Rows:

* ``faiss kNN``: the bare faiss search of all M = Q + N items against all of them (k = 100),
  the kNN search every transductive method needs; end-to-end times are compared with it;
* ``reference``: the dense NumPy transcriptions of ``_reference_rerank.py``, given the
  distance matrices (k-reciprocal) or the features (GNN, including its similarity product),
  as the published codes compute them;
* ``step``: graphrerank's re-ranking step alone, given the neighbour lists of the kNN layer
  (k-reciprocal: encodings, local query expansion, Jaccard and exact top-k; GNN: the
  propagation layers and the exact top-k);
* ``end to end``: ``fit(database)`` then ``rerank(queries, k)`` from the features.

Ratios: time and memory (growth over the inputs) of the reference over ours (higher is better
for us), and end-to-end time over the faiss kNN search. ``top-k = reference``: the fraction
of queries whose top-k list equals the reference's (float32 near-ties may swap neighbours);
``top-k overlap``: the mean fraction of the reference's top-k that ours holds (the measure of
the ``max_nonzeros`` approximation).

Full-size commands (on a quiet machine; the references need about 13 GB and a minute each):

    python benchmarks/bench_kreciprocal.py                       # Market-1501 size
    python benchmarks/bench_kreciprocal.py --queries 11659 --gallery 82161 --no-reference
                                                                 # MSMT17 size, ours only

Quick check:

    python benchmarks/bench_kreciprocal.py --queries 300 --gallery 2000 --dim 256 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table, timed


def _data(nq, ng, dim, classes, seed=0):
    """``(queries, database)``; ``nq == 0``: the digits of scikit-learn all-vs-all
    (queries ``None``)."""
    import os

    import torch

    from graphrerank.datasets import load_digits_retrieval, make_retrieval_dataset

    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    if nq == 0:
        return None, load_digits_retrieval().database
    ds = make_retrieval_dataset(
        num_items=ng, dim=dim, num_classes=classes, num_queries=nq, seed=seed
    )
    return ds.queries, ds.database


def faiss_knn(nq, ng, dim, classes, k, repeats):
    import torch

    from graphrerank.graph import knn_search

    q, g = _data(nq, ng, dim, classes)
    x = g if q is None else torch.cat([q, g])
    base = rss_mb()
    ts = timed(lambda: knn_search(x, x, k, backend="faiss"), repeats)
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def kr_reference(nq, ng, dim, classes, k, repeats, save):
    import numpy as np
    import torch
    from _reference_rerank import kreciprocal_reference

    q, g = _data(nq, ng, dim, classes)
    if q is None:  # all-vs-all
        qg = qq = None
        gg = torch.cdist(g, g).numpy()
    else:
        qg, qq, gg = (torch.cdist(a, b).numpy() for a, b in ((q, g), (q, q), (g, g)))
    del q, g
    base = rss_mb()
    out = {}

    def run():
        out["d"] = kreciprocal_reference(qg, qq, gg)

    ts = timed(run, repeats, warmup=0)
    if save:
        np.save(save, np.argsort(out["d"], axis=1, kind="stable")[:, :k])
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def gnn_reference(nq, ng, dim, classes, k, repeats, save, lambda_value):
    import numpy as np
    from _reference_rerank import gnn_reference as ref

    q, g = _data(nq, ng, dim, classes)
    q, g = q.numpy(), g.numpy()
    base = rss_mb()
    out = {}

    def run():
        out["s"] = ref(q, g, lambda_value=lambda_value)

    ts = timed(run, repeats, warmup=0)
    if save:
        np.save(save, np.argsort(-out["s"], axis=1, kind="stable")[:, :k])
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def ours(method, nq, ng, dim, classes, k, repeats, part, save, params):
    import numpy as np

    from graphrerank.graph import lists as sp
    from graphrerank.nn import gnn_propagate
    from graphrerank.rerankers import GNNRerank, KReciprocal, gnn, kreciprocal

    q, g = _data(nq, ng, dim, classes)
    cls = KReciprocal if method == "kr" else GNNRerank
    r = cls(**params)
    out = {}
    if part == "end to end":
        base = rss_mb()

        def run():
            out["res"] = r.fit(g).rerank(q, k)

    else:
        r.fit(g)
        nq = 0 if q is None else q.shape[0]
        if method == "kr":
            nodes = sp.FeatureNodes(q, g, "l2")
            lists = sp.graph_lists(
                nodes,
                graph_k=min(nodes.m, max(r.k1 + 1, r.k2)),
                length=kreciprocal._list_length(r.k1, r.k2, nodes.m),
                k=k,
                largest=False,
                extreme=True,
                database=r._database_lists(),
            )
        else:
            nodes = sp.FeatureNodes(q, g, "ip")
            lists = sp.graph_lists(
                nodes,
                graph_k=min(nodes.m, r.k1),
                length=min(nodes.m, max(r.k1, gnn.LIST_LENGTH)),
                k=k,
                largest=True,
                extreme=False,
                database=r._database_lists(),
            )
        base = rss_mb()

        def run():
            if method == "kr":
                out["res"] = kreciprocal._step(
                    nodes, lists, k, r.k1, r.k2, r.lambda_value, sp.BLOCK_ELEMENTS
                )
            else:
                a = gnn_propagate(
                    lists["indices"], lists["values"], r.k1, r.k2, r.layers, r.max_nonzeros
                )
                out["res"] = gnn._rank(
                    a, nq, lists["short_indices"], lists["short_values"], k,
                    float(r.lambda_value), nodes, sp.BLOCK_ELEMENTS,
                )  # fmt: skip

    ts = timed(run, repeats)
    if save:
        np.save(save, out["res"].indices.numpy())
    return {"median_s": median(ts), "peak_mb": rss_mb(), "base_mb": base}


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--queries", type=int, default=3368, help="0: the digits of scikit-learn, all-vs-all"
    )
    p.add_argument("--gallery", type=int, default=19732)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--classes", type=int, help="default: gallery // 26")
    p.add_argument("--k", type=int, default=100, help="length of the re-ranked lists")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference-repeats", type=int, default=1)
    p.add_argument(
        "--rounds", type=int, default=1,
        help="k-reciprocal: rounds of (reference, step, end to end, faiss), each in a fresh "
        "process, interleaved; medians over the rounds",
    )  # fmt: skip
    p.add_argument("--methods", nargs="*", default=["kr", "gnn"])
    p.add_argument("--gnn-lambda", type=float, default=0.3)
    p.add_argument("--gnn-prune", type=int, default=64, help="max_nonzeros row; 0 to skip")
    p.add_argument("--no-reference", action="store_true", help="skip the dense references")
    p.add_argument("--threads", type=int, help="threads of torch and BLAS (default: all)")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    if args.threads:
        import os

        # read by the measuring processes (BLAS reads its variables at start-up)
        for var in ("BENCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    classes = args.classes or max(10, args.gallery // 26)
    common = {"nq": args.queries, "ng": args.gallery, "dim": args.dim, "classes": classes}

    import os
    import tempfile

    import numpy as np

    tmp = Path(tempfile.mkdtemp())
    rows = []
    loads = [os.getloadavg()[0]]

    def agreement(row, ours_file, ref_file):
        a, b = np.load(ours_file), np.load(ref_file)
        row["agree"] = float((a == b).all(axis=1).mean())
        row["overlap"] = float(np.mean([np.intersect1d(x, y).size / y.size for x, y in zip(a, b)]))

    def merge(runs):
        """The run of median time over the rounds, with the median and the spread."""
        ts = sorted(r["median_s"] for r in runs)
        out = dict(runs[0])
        out["median_s"] = median(ts)
        out["peak_mb"] = max(r["peak_mb"] for r in runs)
        out["spread"] = f"{ts[0]:.3g}-{ts[-1]:.3g}" if len(ts) > 1 else ""
        return out

    knn_runs, kr_runs = [], {"reference": [], "step": [], "end to end": []}
    kr_name = "k-reciprocal (k1=20, k2=6, lambda=0.3)"
    rounds = args.rounds if "kr" in args.methods else 1
    for rnd in range(rounds):
        # one round: faiss, the reference, our step and our end to end, each in a fresh
        # process, so that the load of the moment weighs on all of them alike
        knn_runs.append(isolated(faiss_knn, k=100, repeats=args.repeats, **common))
        loads.append(os.getloadavg()[0])
        if "kr" not in args.methods:
            break
        if not args.no_reference:
            run = isolated(
                kr_reference, k=args.k, repeats=args.reference_repeats,
                save=str(tmp / "kr_ref.npy"), **common,
            )  # fmt: skip
            kr_runs["reference"].append(run)
            loads.append(os.getloadavg()[0])
        for part in ("step", "end to end"):
            run = isolated(
                ours, method="kr", k=args.k, repeats=args.repeats, part=part,
                save=str(tmp / f"kr_{part.replace(' ', '')}.npy"), params={}, **common,
            )  # fmt: skip
            kr_runs[part].append(run)
            loads.append(os.getloadavg()[0])
        print(f"done round {rnd + 1} of {rounds}", file=sys.stderr, flush=True)
    knn = merge(knn_runs)
    rows.append({"method": "faiss kNN (all M items, k=100)", "part": "kNN search", **knn})
    if "kr" in args.methods:
        ref = merge(kr_runs["reference"]) if kr_runs["reference"] else None
        if ref is not None:
            rows.append({"method": kr_name, "part": "reference (dense NumPy)", **ref})
        for part in ("step", "end to end"):
            r = merge(kr_runs[part])
            row = {"method": kr_name, "part": f"graphrerank {part}", **r}
            if ref is not None:
                row["speedup"] = ref["median_s"] / r["median_s"]
                row["mem_ratio"] = (ref["peak_mb"] - ref["base_mb"]) / max(
                    1.0, r["peak_mb"] - r["base_mb"]
                )
                agreement(row, tmp / f"kr_{part.replace(' ', '')}.npy", tmp / "kr_ref.npy")
            if part == "end to end":
                row["vs_knn"] = r["median_s"] / knn["median_s"]
            rows.append(row)
    for method in [m for m in args.methods if m != "kr"]:
        name = f"GNN re-ranking (k1=26, k2=7, lambda={args.gnn_lambda})"
        variants = [("", {"lambda_value": args.gnn_lambda})]
        if args.gnn_prune:
            variants.append(
                (
                    f", max_nonzeros={args.gnn_prune}",
                    {"lambda_value": args.gnn_lambda, "max_nonzeros": args.gnn_prune},
                )
            )
        ref = None
        ref_file = tmp / f"{method}_ref.npy"
        if not args.no_reference:
            ref = isolated(
                gnn_reference, k=args.k, repeats=args.reference_repeats,
                save=str(ref_file), lambda_value=args.gnn_lambda, **common,
            )  # fmt: skip
            rows.append({"method": name, "part": "reference (dense NumPy)", **ref})
            print(f"done {method} reference", file=sys.stderr, flush=True)
        for suffix, params in variants:
            for part in ("step", "end to end"):
                ours_file = tmp / f"{method}{suffix}_{part.replace(' ', '')}.npy"
                r = isolated(
                    ours, method=method, k=args.k, repeats=args.repeats, part=part,
                    save=str(ours_file), params=params, **common,
                )  # fmt: skip
                row = {"method": name + suffix, "part": f"graphrerank {part}", **r}
                if ref is not None:
                    row["speedup"] = ref["median_s"] / r["median_s"]
                    row["mem_ratio"] = (ref["peak_mb"] - ref["base_mb"]) / max(
                        1.0, r["peak_mb"] - r["base_mb"]
                    )
                    agreement(row, ours_file, ref_file)
                if part == "end to end":
                    row["vs_knn"] = r["median_s"] / knn["median_s"]
                rows.append(row)
                print(f"done {method}{suffix} {part}", file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])

    for r in rows:
        r["mem_mb"] = r["peak_mb"] - r["base_mb"]
    cols = [
        ("method", "method"),
        ("part", "part"),
        ("median_s", "median s"),
        ("spread", "range over rounds"),
        ("peak_mb", "peak MiB"),
        ("mem_mb", "MiB over inputs"),
        ("speedup", "reference / ours (time)"),
        ("mem_ratio", "reference / ours (memory)"),
        ("vs_knn", "end to end / faiss kNN"),
        ("agree", "top-k = reference"),
        ("overlap", "top-k overlap"),
    ]
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    size = (
        "the 1,797 digits of scikit-learn (d = 64), all-vs-all"
        if args.queries == 0
        else f"Q = {args.queries} queries + N = {args.gallery} database items, d = {args.dim}, "
        f"{classes} classes"
    )
    text = (
        f"Machine: {machine()}\n"
        f"Command: python benchmarks/bench_kreciprocal.py {shown}\n"
        f"{size}, k = {args.k}; each run the median of {args.repeats} after one warm-up "
        f"(references: {args.reference_repeats} run, no warm-up), {rounds} interleaved "
        f"round(s) of fresh processes, median over the rounds; measuring processes use "
        f"{args.threads or 'all'} thread(s); 1-minute load average during the run "
        f"{min(loads):.1f}-{max(loads):.1f}\n\n" + table(rows, cols)
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
