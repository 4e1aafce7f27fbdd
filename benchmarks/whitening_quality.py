"""Leave-one-out class mAP with and without centring / PCA-whitening (the ``Whitening`` stage).

Two protocols on each real set (Corel-1k CNN descriptors, scikit-learn's digits):

* ``ranked set``: the map is learned on the very items that are ranked (the unsupervised
  setting of ``Whitening().fit(database)``), all-vs-all over every item;
* ``classes A -> B`` / ``B -> A``: learned on one half of the classes (``train=``), applied to
  the other half, which is ranked all-vs-all (no test class is seen while learning).

Every item queries the others (its own entry dropped), same class relevant, non-interpolated
AP over the full ranking.

Usage: ``GRAPHRERANK_DATA=/path/to/data python benchmarks/whitening_quality.py [--out FILE]``
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from graphrerank.datasets import load_corel1k, load_digits_retrieval
from graphrerank.metrics import class_map
from graphrerank.rerankers import KNN, AlphaQueryExpansion, DatabaseAugmentation, Whitening

SETTINGS = {
    "cosine (no preprocessing)": lambda train: KNN(),
    "centre (Whitening())": lambda train: Whitening(train=train),
    "PCA-whitening, s = 0": lambda train: Whitening(whiten=True, train=train),
    "PCA-whitening, s = 0.5": lambda train: Whitening(whiten=True, shrinkage=0.5, train=train),
    "PCA-whitening, s = 0.9": lambda train: Whitening(whiten=True, shrinkage=0.9, train=train),
    "PCA-whitening, d = 32": lambda train: Whitening(whiten=True, dim=32, train=train),
    "centre + power 0.5": lambda train: Whitening(power=0.5, train=train),
    "DBA + aQE (k = 5)": lambda train: DatabaseAugmentation(k=5) | AlphaQueryExpansion(k=5),
    "centre, then DBA + aQE (k = 5)": lambda train: (
        Whitening(train=train) | DatabaseAugmentation(k=5) | AlphaQueryExpansion(k=5)
    ),
}


def loo_map(model, x: torch.Tensor, y: torch.Tensor) -> float:
    idx = model.fit(x).rerank(None, k=x.shape[0]).indices
    return 100.0 * class_map(idx, y, leave_one_out=True)


def columns():
    sets = []
    for d in ("desc_lite2_max512_gem3", "desc_lite2_native_avg"):
        try:
            ds = load_corel1k(descriptor=d)
        except FileNotFoundError:
            print(f"corel1k not found (set GRAPHRERANK_DATA); skipped {d}", file=sys.stderr)
            continue
        sets.append((f"Corel {d[5:]}", ds.database, ds.database_labels))
    ds = load_digits_retrieval()
    sets.append(("digits", ds.database, ds.database_labels))
    for name, x, y in sets:
        half = y < int(y.max() + 1) // 2
        yield f"{name}: ranked set", None, x, y
        yield f"{name}: classes A -> B", x[half], x[~half], y[~half]
        yield f"{name}: classes B -> A", x[~half], x[half], y[half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cols = list(columns())
    lines = [
        "| setting | " + " | ".join(c[0] for c in cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for label, make in SETTINGS.items():
        row = [f"{loo_map(make(train), x, y):.2f}" for _, train, x, y in cols]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
        print(lines[-1], file=sys.stderr)
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(
                "# Centring and PCA-whitening as a first stage (leave-one-out class mAP)\n\n"
                "Command: `GRAPHRERANK_DATA=/work/shared/data python "
                "benchmarks/whitening_quality.py --out benchmarks/results/whitening.md`\n\n"
                + (__doc__ or "").split("\n\n", 1)[1].rsplit("\n\nUsage", 1)[0]
                + "\n\n"
                + table
                + "\n"
            )


if __name__ == "__main__":
    main()
