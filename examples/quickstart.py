"""Quickstart: how much does re-ranking improve a ranking, and how long does it take?

Loads a real retrieval set (by default scikit-learn's bundled digits: 1,797 8x8 images of
10 classes, no download), ranks every item against all the others (all-vs-all, leave-one-out:
an item's own entry is ignored when scoring), first with the plain kNN baseline, then with
every re-ranker graphrerank ships, at the papers' default settings (but where a default is
meant for other inputs: see ``SETTINGS``). Prints mean average precision (same class =
relevant, AP over the full ranking) and time, and writes a plot.

    python examples/quickstart.py                      # digits
    python examples/quickstart.py --data corel         # Corel-1k CNN descriptors, if present
    python examples/quickstart.py --fast --plot none   # the test suite's quick run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import graphrerank as gr
from graphrerank.metrics import class_map

#: Settings other than the defaults, with the reason (printed): the descriptors here are one
#: vector per image.
SETTINGS = {
    "RegionalDiffusion": (
        {"kd": 50, "kq": 10},
        "one vector per image here, so the global graph sizes of Diffusion (kd=50, kq=10); the "
        "regional defaults (kd=kq=200) are meant for about 20 region vectors per image and "
        "lose against plain kNN on single vectors",
    ),
}


def load(name: str):
    if name == "digits":
        return gr.datasets.load_digits_retrieval()
    if name == "corel":
        return gr.datasets.load_corel1k()
    raise SystemExit(f"unknown --data {name!r}: use digits or corel")


def run(reranker, x, labels):
    t = time.perf_counter()
    reranker.fit(x)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    out = reranker.rerank(None, k=x.shape[0])
    rerank_s = time.perf_counter() - t
    return class_map(out.indices, labels, leave_one_out=True), fit_s, rerank_s, out


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default="digits", help="digits (default) or corel")
    p.add_argument("--fast", action="store_true", help="first 600 items only")
    p.add_argument("--plot", default="quickstart.png", help="image file to write, or 'none'")
    args = p.parse_args(argv)

    data = load(args.data)
    x, labels = data.database, data.database_labels
    if args.fast:
        x, labels = x[:600], labels[:600]
    print(
        f"{data.name}: {x.shape[0]} items, {x.shape[1]}-d, {int(labels.unique().numel())} classes"
    )
    print(
        f"all-vs-all, leave-one-out mAP (torch {torch.__version__}, {torch.get_num_threads()} threads)\n"
    )

    rows = []
    base_map = None
    notes = []
    rerankers = []
    for cls in gr.rerankers.RERANKERS:
        settings, reason = SETTINGS.get(cls.__name__, ({}, None))
        rerankers.append(cls(**settings))
        if reason:
            notes.append(f"{rerankers[-1]!r}: {reason}.")
    width = max(len(repr(r)) for r in rerankers)
    for reranker in rerankers:
        cls = type(reranker)
        try:
            m, fit_s, rerank_s, out = run(reranker, x, labels)
        except ImportError as err:  # an optional dependency is missing
            print(f"{cls.__name__:<{width}} skipped: {err}")
            continue
        base_map = m if base_map is None else base_map
        rows.append(
            {"method": repr(reranker), "map": m, "fit_s": fit_s, "rerank_s": rerank_s, "out": out}
        )
        print(
            f"{reranker!r:<{width}} mAP {100 * m:6.2f}  ({100 * (m - base_map):+6.2f})  "
            f"fit {1000 * fit_s:8.1f} ms  rerank {1000 * rerank_s:8.1f} ms"
        )
    for note in notes:
        print(f"\n{note}")
    if args.plot != "none":
        plot(rows, data, args.plot)
    return rows


def plot(rows, data, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'graphrerank[examples]')")
        return
    names = [r["method"].split("(")[0] for r in rows]
    maps = [100 * r["map"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    ax.barh(names[::-1], maps[::-1], color="tab:blue")
    ax.axvline(maps[0], color="k", lw=0.8, ls="--", label="kNN baseline")
    for i, v in enumerate(maps[::-1]):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(min(maps) - 5, max(maps) + 4)
    ax.set_xlabel("mAP (%), all-vs-all, leave-one-out")
    ax.set_title(f"Re-ranking on {data.name}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {Path(path).resolve()}")


if __name__ == "__main__":
    main()
