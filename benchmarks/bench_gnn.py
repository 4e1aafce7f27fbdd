"""Time and memory of GNN re-ranking against the official code's algorithm in dense torch.

Sizes (``--sizes``): ``digits`` (the 1,797 digits images, all-vs-all: one graph over the
database), and ``Q+N`` synthetic re-ID-like sets (queries and database in one graph;
:func:`graphrerank.datasets.make_retrieval_dataset`, about 26 database items per class,
d = ``--dim``), e.g. ``729+4271`` and the Market-1501 size ``3368+19732``.

Rows, each measured in fresh processes, alternating (reference, step, end to end, ... for
``--rounds`` rounds; the median is over every timed call of every round):

* ``faiss kNN``: the bare faiss search of all M items against all of them (k = 100);
* ``reference``: ``_reference_gnn.gnn_reference_rank`` (the official code's algorithm:
  the full similarity matrix, ``topk`` lists, the two kernels as dense torch, the score
  product and the full ranking it returns), float32, from the features;
* ``step``: graphrerank's re-ranking step given the fitted database: in the dense form
  (graphs with :math:`M^2 \\le` ``gnn.DENSE_ELEMENTS``) everything from the features,
  the similarity product included; in the sparse form the propagation and the exact top-k
  given the neighbour lists of the kNN layer (with numba importable, the score product by
  the compiled row-wise kernel; ``--torch-products`` adds the step with torch's products,
  the code path without numba, as its own row);
* ``end to end``: ``GNNRerank(...).fit(database).rerank(queries, k)`` from the features.

``ref / ours``: reference time over ours (higher is better for us); ``e2e / kNN``: end to end
over the faiss search; ``top-k = ref``: fraction of queries whose top-k list equals the
reference's (float32 near-ties may swap neighbours); ``overlap``: mean fraction of the
reference's top-k that ours holds.

Commands (2 threads, as in the results file):

    python benchmarks/bench_gnn.py --sizes digits 729+4271 --rounds 3
    nice python benchmarks/bench_gnn.py --sizes 3368+19732 --rounds 1 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table, timed


def _data(size, dim):
    import torch

    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    if size == "digits":
        from graphrerank.datasets import load_digits_retrieval

        return None, load_digits_retrieval().database.float()
    from graphrerank.datasets import make_retrieval_dataset

    nq, ng = (int(v) for v in size.split("+"))
    ds = make_retrieval_dataset(
        num_items=ng, dim=dim, num_classes=max(10, ng // 26), num_queries=nq, seed=0
    )
    return ds.queries, ds.database


def faiss_knn(size, dim, repeats, warmup=1):
    import torch

    from graphrerank.graph import knn_search

    q, g = _data(size, dim)
    x = g if q is None else torch.cat([q, g])
    base = rss_mb()
    ts = timed(lambda: knn_search(x, x, 100, backend="faiss"), repeats, warmup=warmup)
    return {"times": ts, "peak_mb": rss_mb(), "base_mb": base}


def reference(size, dim, k, lam, repeats, save):
    import numpy as np
    from _reference_gnn import gnn_reference_rank

    q, g = _data(size, dim)
    base = rss_mb()
    out = {}

    def run():
        out["r"] = gnn_reference_rank(q, g, lambda_value=lam)

    ts = timed(run, repeats, warmup=0)
    np.save(save, out["r"][:, :k].numpy())
    return {"times": ts, "peak_mb": rss_mb(), "base_mb": base}


def ours(size, dim, k, lam, repeats, part, save, dense_elements=None, warmup=1):
    import numpy as np

    from graphrerank.graph import lists as sp
    from graphrerank.nn import gnn_propagate
    from graphrerank.rerankers import GNNRerank, gnn

    if dense_elements is not None:  # force a form (--crossover)
        gnn.DENSE_ELEMENTS = dense_elements
    if part.endswith(TORCH_PRODUCTS):  # the score product without the compiled kernel
        gnn._KERNEL[:] = [None]
        part = part.removesuffix(TORCH_PRODUCTS)
    q, g = _data(size, dim)
    r = GNNRerank(lambda_value=lam)
    out = {}
    nodes = sp.FeatureNodes(q, g, "ip")
    form = "dense" if gnn._use_dense(nodes, None) else "sparse"
    if part == "end to end":
        base = rss_mb()

        def run():
            out["res"] = r.fit(g).rerank(q, k)

    elif form == "dense":
        r.fit(g)
        base = rss_mb()

        def run():
            out["res"] = gnn._dense_run(nodes, k, r.k1, r.k2, r.layers, lam)

    else:
        r.fit(g)
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
            a = gnn_propagate(lists["indices"], lists["values"], r.k1, r.k2, r.layers)
            out["res"] = gnn._rank(
                a, nodes.nq, lists["short_indices"], lists["short_values"], k, lam, nodes,
                sp.BLOCK_ELEMENTS,
            )  # fmt: skip

    ts = timed(run, repeats, warmup=warmup)
    np.save(save, out["res"].indices.numpy())
    return {"times": ts, "peak_mb": rss_mb(), "base_mb": base, "form": form}


#: The suffix of the parts run as without numba (``--torch-products``).
TORCH_PRODUCTS = ", torch products"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", default=["digits", "729+4271"])
    p.add_argument("--dim", type=int, default=2048, help="dimension of the synthetic sets")
    p.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 0.3])
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of processes")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per process")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (ours, faiss)")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    p.add_argument(
        "--crossover",
        action="store_true",
        help="time the step in the dense and in the sparse form at each size instead",
    )
    p.add_argument(
        "--torch-products",
        action="store_true",
        help="also time the step with torch's score products (the code path without numba)",
    )
    args = p.parse_args(argv)
    parts = ["step"] + (["step" + TORCH_PRODUCTS] if args.torch_products else []) + ["end to end"]
    for var in ("BENCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import tempfile

    import numpy as np

    tmp = Path(tempfile.mkdtemp())
    rows = []
    loads = [os.getloadavg()[0]]
    if args.crossover:
        return crossover(args, tmp, loads)
    for size in args.sizes:
        knn = isolated(faiss_knn, size=size, dim=args.dim, repeats=args.repeats, warmup=args.warmup)
        knn_s = median(knn["times"])
        rows.append({"size": size, "part": "faiss kNN (k=100)", "median_s": knn_s,
                     "peak_mb": knn["peak_mb"]})  # fmt: skip
        print(f"done {size} faiss", file=sys.stderr, flush=True)
        for lam in args.lambdas:
            ref_file = tmp / f"ref_{size}_{lam}.npy"
            times = {"ref": [], **{part: [] for part in parts}}
            peaks = {key: 0.0 for key in times}
            form = ""
            for _ in range(args.rounds):
                kw = {"size": size, "dim": args.dim, "k": args.k, "lam": lam}
                got = isolated(reference, repeats=args.repeats, save=str(ref_file), **kw)
                times["ref"] += got["times"]
                peaks["ref"] = max(peaks["ref"], got["peak_mb"] - got["base_mb"])
                for part in parts:
                    f = tmp / f"ours_{size}_{lam}_{part.replace(' ', '').replace(',', '')}.npy"
                    got = isolated(
                        ours, repeats=args.repeats, part=part, save=str(f), warmup=args.warmup,
                        **kw,
                    )  # fmt: skip
                    times[part] += got["times"]
                    peaks[part] = max(peaks[part], got["peak_mb"] - got["base_mb"])
                    form = got["form"]
                loads.append(os.getloadavg()[0])
                print(f"done {size} lambda={lam} round", file=sys.stderr, flush=True)
            ref_s = median(times["ref"])
            b = np.load(ref_file)
            rows.append({"size": size, "lambda": lam, "part": "reference (dense torch)",
                         "median_s": ref_s, "peak_mb": peaks["ref"]})  # fmt: skip
            for part in parts:
                a = np.load(tmp / f"ours_{size}_{lam}_{part.replace(' ', '').replace(',', '')}.npy")
                row = {
                    "size": size,
                    "lambda": lam,
                    "part": f"graphrerank {part} ({form})".replace(
                        f"{TORCH_PRODUCTS} ({form})", f" ({form}{TORCH_PRODUCTS})"
                    ),
                    "median_s": median(times[part]),
                    "peak_mb": peaks[part],
                    "speedup": ref_s / median(times[part]),
                    "agree": float((a == b).all(axis=1).mean()),
                    "overlap": float(
                        np.mean([np.intersect1d(x, y).size / y.size for x, y in zip(a, b)])
                    ),
                }
                if part == "end to end":
                    row["vs_knn"] = row["median_s"] / knn_s
                rows.append(row)
    cols = [
        ("size", "size (Q+N)"),
        ("lambda", "lambda"),
        ("part", "part"),
        ("median_s", "median s"),
        ("peak_mb", "MiB over inputs"),
        ("speedup", "ref / ours"),
        ("vs_knn", "e2e / kNN"),
        ("agree", "top-k = ref"),
        ("overlap", "overlap"),
    ]
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"Machine: {machine()}\n"
        f"Command: python benchmarks/bench_gnn.py {shown}\n"
        f"k1=26, k2=7, layers=2, k = {args.k}, d = {args.dim} (synthetic; digits: 64); {args.rounds} "
        f"alternating rounds of fresh processes x {args.repeats} timed calls (after "
        f"{args.warmup} warm-up call(s), none for the reference); {args.threads} threads; load average (1 min) "
        f"during the run: {min(loads):.1f}-{max(loads):.1f}\n\n" + table(rows, cols)
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def crossover(args, tmp, loads):
    """The step in both forms, alternating, at each size: where the dense form stops
    winning (``gnn.DENSE_ELEMENTS``)."""
    rows = []
    for size in args.sizes:
        for lam in args.lambdas:
            times = {"dense": [], "sparse": []}
            for _ in range(args.rounds):
                for form, limit in (("dense", 2**62), ("sparse", 0)):
                    got = isolated(
                        ours, size=size, dim=args.dim, k=args.k, lam=lam, repeats=args.repeats,
                        part="step", save=str(tmp / "x.npy"), dense_elements=limit,
                    )  # fmt: skip
                    times[form] += got["times"]
                loads.append(os.getloadavg()[0])
            d, s = median(times["dense"]), median(times["sparse"])
            rows.append({"size": size, "lambda": lam, "dense": d, "sparse": s, "ratio": s / d})
            print(f"done {size} {lam}", file=sys.stderr, flush=True)
    text = (
        f"Machine: {machine()}\nload average (1 min): {min(loads):.1f}-{max(loads):.1f}\n\n"
        + table(
            rows,
            [
                ("size", "size"),
                ("lambda", "lambda"),
                ("dense", "dense step s"),
                ("sparse", "sparse step s"),
                ("ratio", "sparse / dense"),
            ],
        )
    )
    print(text)


if __name__ == "__main__":
    main()
