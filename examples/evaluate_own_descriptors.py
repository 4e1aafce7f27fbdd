"""Evaluate your own descriptors, with and without re-ranking, in the standard formats.

Revisited Oxford / Paris: the revisitop ground truth (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``)
and your descriptors, either a ``.mat`` file in the revisitop / cirtorch layout (``X`` (D, N)
database and ``Q`` (D, Q) queries, one descriptor per column) or two ``.npy`` files (one
descriptor per row). Prints Easy / Medium / Hard mAP and mP@10 for the kNN baseline and every
re-ranker.

Person re-ID: a result ``.mat`` file (``query_f``, ``query_label``, ``query_cam``,
``gallery_f``, ``gallery_label``, ``gallery_cam``). Prints mAP, Rank-1/5/10 and mINP under the
Market-1501 rule.

    python examples/evaluate_own_descriptors.py revisitop --gnd gnd_roxford5k.pkl --features mine.mat
    python examples/evaluate_own_descriptors.py revisitop --gnd gnd_rparis6k.pkl \\
        --database db.npy --queries q.npy --reranker KNN
    python examples/evaluate_own_descriptors.py reid --result pytorch_result.mat
    python examples/evaluate_own_descriptors.py demo            # writes small files of both
    python examples/evaluate_own_descriptors.py demo --fast     # formats, evaluates them

``demo`` has no files of yours to read: it writes a small benchmark in each format (from
synthetic descriptors) into a temporary folder and evaluates it; where the real files of the
data folder (``GRAPHRERANK_DATA``) are present it also evaluates the real re-ID result file and,
on the real revisitop ground truth, simulated descriptors built from that ground truth. The
same evaluations are one command each: ``graphrerank evaluate --gnd ... --features ...`` and
``graphrerank evaluate --reid ...``.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.io import savemat

import graphrerank as gr
from graphrerank.datasets import load_features, load_reid_result, load_revisitop_gnd
from graphrerank.metrics import reid_metrics, revisited_map
from graphrerank.testing import data_dir


def make_rerankers(names: list[str] | None) -> list[gr.Reranker]:
    """The kNN baseline first, then the named re-rankers (default: every one; ``[]``: the
    baseline alone)."""
    table = {cls.__name__.lower(): cls for cls in gr.rerankers.RERANKERS}
    if names is not None:
        unknown = [n for n in names if n.lower() not in table]
        if unknown:
            raise SystemExit(f"unknown re-ranker(s) {unknown}; available: {sorted(table)}")
        classes = [table[n.lower()] for n in names]
    else:
        classes = list(gr.rerankers.RERANKERS)
    if gr.KNN not in classes:
        classes.insert(0, gr.KNN)
    return [cls() for cls in classes]


def rank(reranker, database, queries):
    """Fit, then rank the whole database for each query; returns indices and seconds."""
    t = time.perf_counter()
    indices = reranker.fit(database).rerank(queries, k=database.shape[0]).indices
    return indices, time.perf_counter() - t


# --------------------------------------------------------------------------- revisitop
def evaluate_revisitop(gnd_file, *, features=None, database=None, queries=None, rerankers=None):
    """Easy / Medium / Hard scores of each re-ranker on a revisitop benchmark."""
    gnd = load_revisitop_gnd(gnd_file)
    if features is not None:  # the revisitop layout: X (D, N) and Q (D, Q), one per column
        db, q = load_features(features, key="X"), load_features(features, key="Q")
    else:  # one descriptor per row
        db, q = load_features(database), load_features(queries)
    if db.shape[0] != gnd.num_database or q.shape[0] != gnd.num_queries:
        raise SystemExit(
            f"{gnd.name} has {gnd.num_database} database images and {gnd.num_queries} queries, "
            f"but the descriptors are {tuple(db.shape)} and {tuple(q.shape)}"
        )
    print(f"{gnd.name}: {gnd.num_database} images, {gnd.num_queries} queries, {db.shape[1]}-d")
    print(f"{'method':<28}{'E mAP':>8}{'M mAP':>8}{'H mAP':>8}{'M mP@10':>9}{'H mP@10':>9}{'s':>7}")
    rows = []
    for reranker in make_rerankers(rerankers):
        try:
            indices, seconds = rank(reranker, db, q)
        except ValueError as err:  # e.g. a setting too large for a small database
            print(f"{reranker!r:<28} skipped: {err}")
            continue
        r = revisited_map(indices, gnd.gnd, num_database=gnd.num_database)
        rows.append({"method": repr(reranker), "result": r, "seconds": seconds})
        print(
            f"{reranker!r:<28}{100 * r.easy.map:8.2f}{100 * r.medium.map:8.2f}"
            f"{100 * r.hard.map:8.2f}{100 * r.medium.mp_at_k[10]:9.2f}"
            f"{100 * r.hard.mp_at_k[10]:9.2f}{seconds:7.2f}"
        )
    return rows


# --------------------------------------------------------------------------- re-ID
def evaluate_reid(result_file, *, rerankers=None):
    """mAP, CMC and mINP of each re-ranker on a re-ID result file."""
    data = load_reid_result(result_file)
    print(
        f"{data.name}: {data.query_features.shape[0]} queries, "
        f"{data.gallery_features.shape[0]} gallery images, {data.query_features.shape[1]}-d"
    )
    print(f"{'method':<28}{'mAP':>8}{'R-1':>8}{'R-5':>8}{'R-10':>8}{'mINP':>8}{'s':>7}")
    rows = []
    for reranker in make_rerankers(rerankers):
        try:
            indices, seconds = rank(reranker, data.gallery_features, data.query_features)
        except ValueError as err:  # e.g. a setting too large for a small gallery
            print(f"{reranker!r:<28} skipped: {err}")
            continue
        r = reid_metrics(
            indices,
            data.query_ids,
            data.query_cams,
            data.gallery_ids,
            data.gallery_cams,
            max_rank=min(50, indices.shape[1]),
        )
        rows.append({"method": repr(reranker), "result": r, "seconds": seconds})
        print(
            f"{reranker!r:<28}{100 * r.map:8.2f}{100 * r.rank1:8.2f}{100 * r.rank5:8.2f}"
            f"{100 * r.rank10:8.2f}{100 * r.minp:8.2f}{seconds:7.2f}"
        )
    return rows


# --------------------------------------------------------------------------- demo files
def write_revisitop_files(folder: Path, *, num_items: int, seed: int = 0) -> tuple[Path, Path]:
    """A small benchmark in the revisitop formats: ``gnd_toy.pkl`` and ``toy.mat``.

    Landmarks are the classes of synthetic manifold data; for each query, the images of its
    landmark closest to it are "easy", the others "hard", and a few of them "junk".
    """
    ds = gr.datasets.make_retrieval_dataset(
        num_items=num_items, dim=64, num_classes=10, num_queries=20, seed=seed
    )
    x, q = ds.database.numpy(), ds.queries.numpy()
    sims = q @ x.T
    gnd = []
    for i in range(q.shape[0]):
        same = np.flatnonzero(ds.database_labels.numpy() == int(ds.query_labels[i]))
        order = same[np.argsort(-sims[i, same])]
        cut = len(order) // 2
        gnd.append(
            {
                "bbx": np.array([0.0, 0.0, 100.0, 100.0]),
                "easy": order[:cut],
                "hard": order[cut:-2],
                "junk": order[-2:],
            }
        )
    names = {
        "imlist": [f"im{j:05d}" for j in range(len(x))],
        "qimlist": [f"q{i}" for i in range(len(q))],
    }
    gnd_file, feat_file = folder / "gnd_toy.pkl", folder / "toy.mat"
    gnd_file.write_bytes(pickle.dumps({**names, "gnd": gnd}, protocol=2))
    savemat(feat_file, {"X": x.T, "Q": q.T})  # one descriptor per column
    return gnd_file, feat_file


def simulated_descriptors(gnd_file, folder: Path, *, dim: int = 128, seed: int = 0) -> Path:
    """Descriptors for a real revisitop ground truth: each query has a random direction;
    its easy images lie close to it, its hard ones farther, the rest is noise."""
    gnd = load_revisitop_gnd(gnd_file)
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((gnd.num_queries, dim))
    x = 0.9 * rng.standard_normal((gnd.num_database, dim))
    for i, g in enumerate(gnd.gnd):
        x[g["easy"]] += 1.2 * directions[i]
        x[g["hard"]] += 0.6 * directions[i]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    path = folder / f"simulated_{gnd.name}.mat"
    savemat(path, {"X": x.T.astype(np.float32), "Q": q.T.astype(np.float32)})
    return path


def write_reid_file(folder: Path, *, num_items: int, seed: int = 0) -> Path:
    """A small re-ID result file: synthetic identities seen by six cameras."""
    ds = gr.datasets.make_retrieval_dataset(
        num_items=num_items, dim=64, num_classes=25, num_queries=50, seed=seed
    )
    rng = np.random.default_rng(seed)
    path = folder / "toy_result.mat"
    savemat(
        path,
        {
            "query_f": ds.queries.numpy(),
            "query_label": ds.query_labels.numpy()[None, :],
            "query_cam": rng.integers(1, 7, (1, ds.num_queries)),
            "gallery_f": ds.database.numpy(),
            "gallery_label": ds.database_labels.numpy()[None, :],
            "gallery_cam": rng.integers(1, 7, (1, ds.num_items)),
        },
    )
    return path


def demo(fast: bool, rerankers=None) -> dict:
    n = 400 if fast else 2000
    if fast and rerankers is None:  # the test suite's quick run: the formats, not the methods
        rerankers = []
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gnd_file, feat_file = write_revisitop_files(folder, num_items=n)
        print(f"== revisitop format: {gnd_file.name} + {feat_file.name} (X (D, N), Q (D, Q))")
        out["revisitop"] = evaluate_revisitop(gnd_file, features=feat_file, rerankers=rerankers)
        reid_file = write_reid_file(folder, num_items=n)
        print(f"\n== re-ID result format: {reid_file.name}")
        out["reid"] = evaluate_reid(reid_file, rerankers=rerankers)
        root = data_dir()
        real_gnd = None if root is None else root / "revisitop" / "gnd_roxford5k.pkl"
        if real_gnd is not None and real_gnd.is_file():
            sim = simulated_descriptors(real_gnd, folder)
            print(f"\n== the real {real_gnd.name}, simulated descriptors")
            out["real_gnd"] = evaluate_revisitop(real_gnd, features=sim, rerankers=rerankers)
        real_reid = None if root is None else root / "pku_sketch_reid" / "pytorch_result.mat"
        if real_reid is not None and real_reid.is_file():
            print(f"\n== the real re-ID result file {real_reid.name}")
            out["real_reid"] = evaluate_reid(real_reid, rerankers=rerankers)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="mode", required=True)
    rv = sub.add_parser("revisitop", help="a revisitop ground truth and your descriptors")
    rv.add_argument("--gnd", required=True, help="gnd_roxford5k.pkl or gnd_rparis6k.pkl")
    rv.add_argument("--features", help=".mat with X (D, N) and Q (D, Q)")
    rv.add_argument("--database", help="(N, D) .npy/.npz, or .mat (D, N)")
    rv.add_argument("--queries", help="(Q, D) .npy/.npz, or .mat (D, Q)")
    rd = sub.add_parser("reid", help="a re-ID result .mat file")
    rd.add_argument("--result", required=True)
    de = sub.add_parser("demo", help="write small files in both formats and evaluate them")
    de.add_argument(
        "--fast", action="store_true", help="small files, kNN only (the test suite's run)"
    )
    for s in (rv, rd, de):
        s.add_argument("--reranker", action="append", help="class name; repeat; default: all")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    try:
        return run(p, args)
    except (FileNotFoundError, ValueError) as err:  # a bad file: say which, no traceback
        raise SystemExit(f"error: {err}") from None


def run(p, args):
    if args.mode == "revisitop":
        if not args.features and not (args.database and args.queries):
            p.error("revisitop needs --features, or --database and --queries")
        return evaluate_revisitop(
            args.gnd,
            features=args.features,
            database=args.database,
            queries=args.queries,
            rerankers=args.reranker,
        )
    if args.mode == "reid":
        return evaluate_reid(args.result, rerankers=args.reranker)
    return demo(args.fast, rerankers=args.reranker)


if __name__ == "__main__":
    main()
