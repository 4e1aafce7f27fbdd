"""Query expansion, database augmentation, SuperGlobal and pipelines of them.

Ranks every item of a real retrieval set against all the others (all-vs-all, leave-one-out
mAP, same class = relevant) with plain kNN, average and alpha-weighted query expansion,
database augmentation (plain and alpha-weighted), SuperGlobal re-ranking, and two pipelines
(DBA then alpha-QE, and DBA then alpha-QE then SuperGlobal); then, when the re-ID result file
is present, scores the same methods on its sketch queries against its photo gallery with the
Market-1501 rule (mAP, Rank-1/5/10).

    python examples/neighbourhood.py                 # digits (no file needed)
    python examples/neighbourhood.py --data corel    # Corel-1k descriptors, if present
    python examples/neighbourhood.py --fast          # first 500 items, the test suite's run
"""

from __future__ import annotations

import argparse
import time

import graphrerank as gr
from graphrerank.metrics import class_map, reid_metrics
from graphrerank.rerankers import (
    KNN,
    AlphaQueryExpansion,
    AverageQueryExpansion,
    DatabaseAugmentation,
    Pipeline,
    SuperGlobal,
)


def methods(fast: bool):
    sg = {"M": 100} if fast else {}
    return [
        KNN(),
        AverageQueryExpansion(k=5),
        AlphaQueryExpansion(k=5, alpha=3.0),
        DatabaseAugmentation(k=5),
        DatabaseAugmentation(k=5, alpha=3.0),
        SuperGlobal(**sg),
        Pipeline([DatabaseAugmentation(k=5), AlphaQueryExpansion(k=5)]),
        Pipeline([DatabaseAugmentation(k=5), AlphaQueryExpansion(k=5), SuperGlobal(**sg)]),
    ]


def all_vs_all(name: str, fast: bool) -> list[dict]:
    data = gr.datasets.load_corel1k() if name == "corel" else gr.datasets.load_digits_retrieval()
    x, labels = data.database, data.database_labels
    if fast:
        x, labels = x[:500], labels[:500]
    print(f"{data.name}: {x.shape[0]} items, all-vs-all, leave-one-out mAP")
    rows = []
    for reranker in methods(fast):
        t = time.perf_counter()
        out = reranker.fit(x).rerank(None, k=x.shape[0])
        seconds = time.perf_counter() - t
        m = 100 * float(class_map(out.indices, labels, leave_one_out=True))
        rows.append({"method": repr(reranker), "map": m, "seconds": seconds})
        print(f"  {m:6.2f}  {seconds:6.2f} s  {reranker!r}")
    return rows


def reid(fast: bool) -> list[dict]:
    root = gr.testing.data_dir()
    path = None if root is None else root / "pku_sketch_reid" / "pytorch_result.mat"
    if path is None or not path.exists():
        print("re-ID result file not found (GRAPHRERANK_DATA): skipped")
        return []
    r = gr.datasets.load_reid_result(path)
    g = r.gallery_features
    print(f"\n{r.name}: {r.query_features.shape[0]} sketch queries, {g.shape[0]} photos")
    rows = []
    for reranker in methods(fast):
        # sketches and photos: the queries come from another modality than the database
        out = reranker.fit(g).rerank(r.query_features, k=g.shape[0], asymmetric=True)
        res = reid_metrics(out.indices, r.query_ids, r.query_cams, r.gallery_ids, r.gallery_cams)
        rows.append({"method": repr(reranker), "map": 100 * res.map, "rank1": 100 * res.rank1})
        print(
            f"  mAP {100 * res.map:6.2f}  R1 {100 * res.rank1:5.1f}  R5 {100 * res.rank5:5.1f}"
            f"  R10 {100 * res.rank10:5.1f}  {reranker!r}"
        )
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="digits", choices=["digits", "corel"])
    p.add_argument("--fast", action="store_true", help="first 500 items, shorter shortlists")
    args = p.parse_args(argv)
    return {"all_vs_all": all_vs_all(args.data, args.fast), "reid": reid(args.fast)}


if __name__ == "__main__":
    main()
