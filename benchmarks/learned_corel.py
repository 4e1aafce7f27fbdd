"""Learned local-descriptor re-rankers on Corel-1k under a class-disjoint protocol.

Protocol: class-disjoint in all three parts (:func:`graphrerank.models.class_disjoint_split`).
Of the classes 0-4, train on 0-2 and validate on 3-4 (classes unseen at training time: early
stopping and the fusion's lambda and gamma), test all-vs-all within classes 5-9 (500 images;
every image queries the 500, its own entry is dropped when scoring: leave-one-out class mAP
over the full ranking). ``--split reverse`` swaps the halves: train 5-7, validate 8-9, test
0-4; ``--split hard`` trains on 3-7, validates on 8-9 and tests on 0-2 (the classes where the
global ranking leaves the most room under the top-100 ceiling). The first stage is the
global descriptor (``desc_lite2_max512_gem3``, cosine; ``--global`` picks another array of
the file, e.g. the weaker ``desc_lite0_max512_gem3``); re-rankers re-order its top M = 100.
Local descriptors: the 64 PCA-whitened 128-d vectors per image of ``corel1k_local``.

Rows: global cosine; every training-free similarity (one-sided chamfer, database-to-query
chamfer, symmetric chamfer, mutual nearest neighbours; as a full ranking and as a top-100
re-ranker, unfused and fused with lambda / gamma tuned on the validation classes); each
learned mode (pairwise, list-wise,
asymmetric 64 query / 16 database descriptors in float16, and the same with sign bits),
unfused (lambda = 0) and fused with (lambda, gamma) tuned on the validation images.

Full run (about an hour on one CPU core; writes benchmarks/results/learned_corel.md):

    python benchmarks/learned_corel.py --threads 1

Quick check that the script works (tiny training, top-20, no file written):

    python benchmarks/learned_corel.py --fast

Training-free rows only (minutes; ``--modes`` picks learned rows by name):

    python benchmarks/learned_corel.py --threads 1 --modes none

One learned row against the strongest training-free baseline of the reverse split, with the
list-wise softmax term added to the loss (``--loss softmax``; the sampling is set by
``--positives`` / ``--negatives`` / ``--hard-pool``, the model by ``--dropout`` and
``--no-global-node``):

    python benchmarks/learned_corel.py --threads 1 --split reverse --modes pairwise \
        --similarities chamfer_db --loss softmax
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table

from graphrerank.datasets import load_corel1k, load_corel1k_local
from graphrerank.metrics import class_map
from graphrerank.models import (
    SIMILARITIES,
    LocalMatcher,
    bytes_per_image,
    class_disjoint_split,
    rerank_shortlist,
    shortlist_similarity,
    train_matcher,
)
from graphrerank.rerankers import LocalDescriptorReranker

RESULTS = Path(__file__).resolve().parent / "results" / "learned_corel.md"

#: (name, training mode, inference settings, storage) of the learned rows.
MODES = [
    ("pairwise", "pairwise", {}, {"db_storage": "float16"}),
    ("list-wise", "listwise", {"window": 16, "stride": 8}, {"db_storage": "float16"}),
    ("asymmetric 64/16 fp16", "pairwise", {}, {"db_descriptors": 16, "db_storage": "float16"}),
    ("asymmetric 64/16 binary", "pairwise", {}, {"db_descriptors": 16, "db_storage": "binary"}),
]


#: test classes and validation classes of each ``--split`` (training: the rest)
SPLITS = {
    "forward": ([5, 6, 7, 8, 9], [3, 4]),
    "reverse": ([0, 1, 2, 3, 4], [8, 9]),
    "hard": ([0, 1, 2], [8, 9]),
}


def splits(labels: torch.Tensor, reverse: bool | str = False):
    """Class-disjoint (train, val, test) of a ``--split`` name: "forward" trains on 0-2,
    validates on 3-4 and tests on 5-9; "reverse" trains on 5-7, validates on 8-9, tests on 0-4;
    "hard" trains on 3-7, validates on 8-9, tests on 0-2 (``reverse=True``: "reverse")."""
    name = reverse if isinstance(reverse, str) else ("reverse" if reverse else "forward")
    test, val = SPLITS[name]
    split = class_disjoint_split(labels, test_classes=test, val_classes=val)
    return split.train, split.val, split.test, split


def full_similarity(local: torch.Tensor, kind: str = "chamfer") -> torch.Tensor:
    """All-pairs training-free similarity (N, N) of one image set."""
    n = local.shape[0]
    return shortlist_similarity(local, local, torch.arange(n).repeat(n, 1), kind)


def ranking_map(sim: torch.Tensor, labels: torch.Tensor) -> float:
    return class_map(sim.argsort(dim=1, descending=True, stable=True), labels, leave_one_out=True)


def tune(reranker, g, local, labels, index, top_m):
    """Fit on the validation images and choose lambda, gamma there (one call)."""
    reranker.set_params(top_m=min(top_m, index.numel())).fit(g[index], local=local[index])
    return reranker.tune_fusion(labels[index], local=local[index])


def evaluate(reranker, g, local, index, top_m):
    """Fit on the test images and score them all-vs-all (queries keep all 64 descriptors);
    returns the shortlist logits and the seconds per query."""
    reranker.set_params(top_m=top_m).fit(g[index], local=local[index])
    t = time.perf_counter()
    sl = reranker.shortlist_logits(None, index.numel(), local=local[index])
    seconds = time.perf_counter() - t
    return sl, seconds / index.numel()


def fused_map(sl, labels, lam, gam) -> float:
    out = rerank_shortlist(sl.scores, sl.indices, sl.logits, lam, gam)
    return class_map(out.indices, labels, leave_one_out=True)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--fast", action="store_true", help="a tiny run that checks the script")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--top-m", type=int, default=100)
    p.add_argument("--raw", action="store_true", help="also chamfer on the raw 1280-d vectors")
    p.add_argument("--split", choices=tuple(SPLITS), default="forward")
    p.add_argument(
        "--design", choices=("late", "joint"), default="late", help="LocalMatcher design"
    )
    p.add_argument(
        "--modes", default="all", help="learned rows: 'all', 'none' or names joined by ','"
    )
    p.add_argument(
        "--global", dest="global_", default="desc_lite2_max512_gem3",
        help="global descriptor of the first stage (an array of corel1k_effnetlite_desc.npz)",
    )  # fmt: skip
    p.add_argument("--loss", choices=("bce", "softmax"), default="bce", help="training loss")
    p.add_argument("--positives", type=int, default=2, help="pairwise: positives per query")
    p.add_argument("--negatives", type=int, default=6, help="pairwise: negatives per query")
    p.add_argument("--hard-pool", type=int, default=50, help="pairwise: hard-negative pool")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience")
    p.add_argument(
        "--val-top-m", type=int, default=None,
        help="shortlist re-ranked in validation (default: --top-m, as at test time)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--no-global-node", action="store_true", help="LocalMatcher without global_dim")
    p.add_argument("--dropout", type=float, default=0.0, help="LocalMatcher dropout")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    p.add_argument(
        "--similarities", default="all",
        help="training-free rows: 'all' or names joined by ',' (e.g. chamfer_db)",
    )  # fmt: skip
    p.add_argument(
        "--out", default=str(RESULTS), help="Markdown file to write ('none': print only)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/learned_corel.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )

    g = load_corel1k(descriptor=args.global_).database.float()
    loc = load_corel1k_local()
    local, labels = loc.local, loc.labels
    train, val, test, split = splits(labels, args.split)
    top_m, epochs = args.top_m, args.epochs
    modes = MODES
    if args.modes == "none":
        modes = []
    elif args.modes != "all":
        wanted = args.modes.split(",")
        modes = [m for m in MODES if m[0] in wanted]
    if args.fast:
        train, val, test = train[::8], val[::4], test[::10]
        top_m, epochs, modes = 20, 1, MODES[:2]
    lab_test = labels[test]
    val_top_m = top_m if args.val_top_m is None else args.val_top_m
    free_kinds = SIMILARITIES if args.similarities == "all" else args.similarities.split(",")
    for kind in free_kinds:
        if kind not in SIMILARITIES:
            raise SystemExit(f"--similarities: {kind!r} is not one of {SIMILARITIES}")
    rows: list[dict] = []
    global_bytes = 2 * g.shape[1]

    # ---------------------------------------------------------------- training-free rows
    s_test = g[test] @ g[test].T
    base = ranking_map(s_test, lab_test)
    rows.append(
        {"method": "global cosine (first stage)", "desc": "-", "bytes": 0, "test_unfused": base}
    )
    for kind in free_kinds:
        full = ranking_map(full_similarity(local[test], kind), lab_test)
        rows.append({"method": f"{kind}, full ranking (no first stage)", "desc": "64/64", "bytes": bytes_per_image(64, 128, "float16"), "test_unfused": full, "free": True})  # fmt: skip
    if args.raw:
        raw = load_corel1k_local(kind="local_raw").local[test]
        for kind in ("chamfer", "chamfer_sym"):
            rows.append({"method": f"{kind} raw 1280-d, full ranking", "desc": "64/64", "bytes": bytes_per_image(64, 1280, "float16"), "test_unfused": ranking_map(full_similarity(raw, kind), lab_test)})  # fmt: skip
        del raw
    oracle_done = False
    for kind in free_kinds:
        cham = LocalDescriptorReranker(similarity=kind, db_storage="float16")
        best = tune(cham, g, local, labels, val, top_m)
        sl, per_query = evaluate(cham, g, local, test, top_m)
        if not oracle_done:
            oracle = (lab_test[sl.indices[:, :top_m]] == lab_test[:, None]).float()
            rows.append({"method": f"oracle re-ordering of the top-{top_m} (ceiling)", "desc": "-", "bytes": 0, "test_unfused": fused_map(sl._replace(logits=oracle), lab_test, 0.0, 1.0)})  # fmt: skip
            oracle_done = True
        rows.append(
            {
                "method": f"{kind} re-ranking top-{top_m}",
                "desc": "64/64",
                "bytes": cham.bytes_per_image_,
                "test_unfused": fused_map(sl, lab_test, 0.0, 1.0),
                "test_fused": fused_map(sl, lab_test, best.lambda_value, best.gamma),
                "fusion": f"{best.lambda_value:g} / {best.gamma:g}",
                "val_fused": best.map,
                "ms_query": 1000 * per_query,
                "free": True,
            }
        )
    best_chamfer = max(
        max(r["test_unfused"], r.get("test_fused", 0.0)) for r in rows if r.get("free")
    )
    best_name = max(
        (r for r in rows if r.get("free")),
        key=lambda r: max(r["test_unfused"], r.get("test_fused", 0.0)),
    )["method"]
    print(table(rows, COLUMNS), flush=True)

    # ---------------------------------------------------------------- learned rows
    for name, mode, infer, storage in modes:
        torch.manual_seed(0)
        model = LocalMatcher(
            128,
            hidden=32,
            heads=2,
            num_layers=2,
            ffn=64,
            k_intra=4,
            k_cross=4,
            global_dim=None if args.no_global_node else g.shape[1],
            dropout=args.dropout,
            design=args.design,
        )
        t = time.perf_counter()
        result = train_matcher(
            model,
            g,
            local,
            labels,
            train_index=train,
            val_index=val,
            mode=mode,
            loss=args.loss,
            epochs=epochs,
            positives=args.positives,
            negatives=args.negatives,
            hard_pool=args.hard_pool,
            lr=args.lr,
            weight_decay=args.weight_decay,
            window=16,
            val_top_m=val_top_m,
            patience=args.patience,
            seed=0,
            progress=False,
            **storage,
        )
        train_s = time.perf_counter() - t
        curve = ", ".join(
            f"{h['epoch']}: {h['loss']:.3f}/{100 * (h['val_map'] or 0):.2f}" for h in result.history
        )
        print(f"{name}: epoch: loss/val mAP {curve}", flush=True)
        r = LocalDescriptorReranker(model=model, mode=mode, **infer, **storage)
        best = tune(r, g, local, labels, val, top_m)
        sl, per_query = evaluate(r, g, local, test, top_m)
        n_db = storage.get("db_descriptors", 64)
        row = {
            "method": f"learned {name}",
            "desc": f"64/{n_db}",
            "bytes": r.bytes_per_image_,
            "test_unfused": fused_map(sl, lab_test, 0.0, 1.0),
            "test_fused": fused_map(sl, lab_test, best.lambda_value, best.gamma),
            "fusion": f"{best.lambda_value:g} / {best.gamma:g}",
            "val_fused": best.map,
            "epochs": f"{result.best_epoch}/{len(result.history)}",
            "train_s": train_s,
            "ms_query": 1000 * per_query,
        }
        rows.append(row)
        print(table(rows, COLUMNS), flush=True)

    for row in rows:
        for key in ("test_unfused", "test_fused", "val_fused"):
            if key in row:
                row[key] = round(100 * row[key], 2)
        if row["method"].startswith("oracle"):
            continue
        top = row.get("test_fused", row["test_unfused"])
        row["vs_global"] = f"{top - round(100 * base, 2):+.2f}"
        row["vs_chamfer"] = f"{top - round(100 * best_chamfer, 2):+.2f}"
    text = report(rows, command, base, best_chamfer, top_m, global_bytes, split, best_name, args)
    print(text)
    if args.out != "none" and not args.fast:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return rows


COLUMNS = [
    ("method", "method"),
    ("desc", "descriptors query/db"),
    ("bytes", "local bytes / db image"),
    ("test_unfused", "test mAP, unfused"),
    ("test_fused", "test mAP, fused"),
    ("fusion", "lambda / gamma (val)"),
    ("vs_global", "fused - global"),
    ("vs_chamfer", "fused - best training-free"),
    ("val_fused", "val mAP, fused"),
    ("epochs", "best/run epochs"),
    ("train_s", "train s"),
    ("ms_query", "re-rank ms / query"),
]


def report(rows, command, base, best_chamfer, top_m, global_bytes, split, best_name, args) -> str:
    when = datetime.date.today().isoformat()
    n_tr, n_va, n_te = split.train.numel(), split.val.numel(), split.test.numel()
    return f"""# Learned local-descriptor re-rankers on Corel-1k (class-disjoint)

Produced by `{command}` on {when}; {machine()}.

Class-disjoint (`graphrerank.models.class_disjoint_split`): train on classes
{split.train_classes} ({n_tr} images), validate on classes {split.val_classes} ({n_va} images,
unseen at training: early stopping, and lambda / gamma of the fusion
`s = lambda * s_global + (1 - lambda) * sigmoid(gamma * logit)`), test all-vs-all within
classes {split.test_classes} ({n_te} images, unseen by both; leave-one-out class mAP over the
full ranking, in %). First stage: global cosine of `{args.global_}`; re-rankers re-order its top {top_m}. Local descriptors: 64
PCA-whitened 128-d vectors per image (`load_corel1k_local()`); "64/16" keeps 16 database
descriptors (AMES-style asymmetry). "bytes" counts the stored local descriptors of one database
image (float16 unless stated; the global descriptor adds {global_bytes} bytes as float16). Model:
`LocalMatcher(128, hidden=32, heads=2, num_layers=2, ffn=64, k_intra=4, k_cross=4,
global_dim={"None" if args.no_global_node else 1280}, dropout={args.dropout:g}, design="{args.design}")`, {args.positives} positives and {args.negatives} hard negatives
(of the first {args.hard_pool}) per query and epoch (list-wise: one window of 16 consecutive shortlist
entries per query and epoch; at test time windows of 16 with stride 8 over the top-M, logits
averaged), loss "{args.loss}" (`train_matcher(loss=...)`), AdamW {args.lr:g} (weight decay
{args.weight_decay:g}), at most {args.epochs}
epochs with early stopping on the validation mAP of the top-{top_m if args.val_top_m is None else args.val_top_m} (patience {args.patience}), one seed.

Global cosine: {100 * base:.2f}. Best training-free number on the same 128-d descriptors
(any similarity, full ranking or re-ranking the top-{top_m}, unfused or fused):
{100 * best_chamfer:.2f} ({best_name}); the "- global" and "- best training-free" columns
compare each row's best (fused where there is one) with these two. Chamfer on the raw 1280-d vectors (`--raw`, ten times the memory, full ranking
with no first stage) is a reference row, not part of that comparison.
With M = {top_m} the top-M re-ranking ceiling on these test classes (a perfect re-ordering of the
global shortlist) is lower than 100: every class has 99 positives per query.

{table(rows, COLUMNS)}
"""


if __name__ == "__main__":
    main()
