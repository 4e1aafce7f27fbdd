"""Tuned on one half of the classes / identities, applied to the other half: does tuning beat
the papers' defaults and never lose to the plain first stage on data it has not seen?

For each real set (digits, Corel-1k, the re-ID result file) the classes (identities) are split
in two seeded halves; for each re-ranker, :func:`graphrerank.tune` chooses settings on one
half, and the baseline (kNN), the defaults and the tuned choice are scored on the other half;
then the halves swap. Needs the real data (``GRAPHRERANK_DATA``) for Corel-1k and re-ID.

    python benchmarks/tune_heldout.py > benchmarks/results/tune_heldout.md
    python benchmarks/tune_heldout.py --sets digits --rerankers Diffusion   # one row pair
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine

#: The re-rankers at their defaults and the grid searched for each.
RERANKERS = {
    "KReciprocal": ("KReciprocal()", {"k1": [3, 5, 10, 20], "k2": [1, 2, 3, 6],
                                      "lambda_value": [0.1, 0.3, 0.6]}),
    "GNNRerank": ("GNNRerank()", {"k1": [3, 5, 10, 26], "k2": [2, 3, 7], "layers": [1, 2]}),
    "Diffusion": ("Diffusion()", {"kd": [5, 10, 20, 50], "kq": [3, 5, 10],
                                  "alpha": [0.9, 0.99]}),
    "DBA+aQE": ("Pipeline([DatabaseAugmentation(), AlphaQueryExpansion()])",
                {"0.k": [1, 2, 3, 5, 10], "1.k": [1, 2, 3, 5, 10], "1.alpha": [1.0, 3.0]}),
    "SuperGlobal": ("SuperGlobal()", {"M": [25, 50, 100, 400], "K": [2, 3, 5, 9],
                                      "beta": [0.15, 0.5]}),
}  # fmt: skip


def _sets(names: list[str]):
    import graphrerank as gr
    from graphrerank.testing import data_dir
    from graphrerank.tuning import class_protocol, reid_protocol

    root = data_dir()
    for name in names:
        if name == "digits":
            ds = gr.datasets.load_digits_retrieval()
            yield "digits (1797, 10 classes)", class_protocol(ds.database, ds.database_labels)
        elif name == "corel1k":
            if root is None:
                print(f"<!-- skipped {name}: no GRAPHRERANK_DATA -->")
                continue
            ds = gr.datasets.load_corel1k()
            yield "Corel-1k (1000, 10 classes)", class_protocol(ds.database, ds.database_labels)
        elif name == "reid":
            path = None if root is None else root / "pku_sketch_reid" / "pytorch_result.mat"
            if path is None or not path.exists():
                print(f"<!-- skipped {name}: no re-ID file -->")
                continue
            yield (
                "PKU-Sketch re-ID (50 q, 100 g, 50 ids)",
                reid_protocol(gr.datasets.load_reid_result(path)),
            )


def _score(model, protocol) -> float:
    k = min(protocol.num_database, 1000)
    model.fit(protocol.database)
    return protocol.score(model.rerank(protocol.queries, k).indices)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["digits", "corel1k", "reid"])
    ap.add_argument("--rerankers", nargs="+", default=list(RERANKERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search", default="grid", choices=("grid", "random", "halving"))
    ap.add_argument("--margin", default="0", help="tune(margin=...): a number, 'se' or '2se'")
    args = ap.parse_args(argv)
    margin = args.margin if args.margin.endswith("se") else float(args.margin)

    from graphrerank.cli import parse_reranker
    from graphrerank.rerankers import KNN
    from graphrerank.tuning import tune

    command = "python benchmarks/tune_heldout.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print("# Tuned on one half, applied to the other\n")
    print(f"Machine: {machine()}  ")
    print(f"Command: `{command.strip()}`  ")
    print(
        f"Halves: the classes (identities) split in two by `Protocol.split(0.5, seed={args.seed})`;"
        f" `tune(..., search={args.search!r}, margin={margin!r})` on one half, the three rows scored on the other, "
        "then the halves swap. Scores: leave-one-out class mAP (digits, Corel-1k), Market-rule "
        "re-ID mAP (re-ID), in %. `tuned >= base` and `tuned >= defaults` are checked on each "
        "held-out half (the second only where the defaults are >= the baseline).\n"
    )
    for name, grid in ((n, RERANKERS[n][1]) for n in args.rerankers):
        print(f"- {name} (`{RERANKERS[name][0]}`): grid `{grid}`")
    print()
    print(
        "| data | re-ranker | held out | baseline | defaults | tuned | tuned settings | "
        "tuned >= base | tuned >= defaults | tune s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for data_name, protocol in _sets(args.sets):
        halves = protocol.split(0.5, seed=args.seed)
        for rname in args.rerankers:
            spec, grid = RERANKERS[rname]
            for which, (val, test) in enumerate(((halves[0], halves[1]), (halves[1], halves[0]))):
                model = parse_reranker(spec)
                t = time.perf_counter()
                try:
                    res = tune(model, grid, val, search=args.search, seed=args.seed, margin=margin)
                except Exception as err:  # a row says why
                    print(f"| {data_name} | {rname} | {'BA'[which]} | failed: {err} |")
                    failures += 1
                    continue
                secs = time.perf_counter() - t
                base = _score(KNN(), test)
                defaults = _score(parse_reranker(spec), test)
                tuned_model = res.best_estimator()
                tuned = _score(tuned_model, test)
                ok_base = tuned >= base - 1e-12
                ok_def = (
                    "n/a" if defaults < base else ("yes" if tuned >= defaults - 1e-12 else "no")
                )
                failures += (not ok_base) + (ok_def == "no")
                chosen = "baseline (KNN)" if res.best_params_ is None else res.best_params_
                nfail = sum(1 for r in res.results_ if r.get("error"))
                if nfail:
                    chosen = f"{chosen}; {nfail} runs failed"
                print(
                    f"| {data_name} | {rname} | {'BA'[which]} | {100 * base:.2f} | "
                    f"{100 * defaults:.2f} | {100 * tuned:.2f} | `{chosen}` | "
                    f"{'yes' if ok_base else 'no'} | {ok_def} | {secs:.1f} |"
                )
                sys.stdout.flush()
    print(f"\nRows where a requirement fails: {failures}.")


if __name__ == "__main__":
    main()
