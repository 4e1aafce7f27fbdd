"""Speed of the learned re-rankers: sparse kNN match graphs against all-pairs attention.

For the same descriptors (64 local 128-d descriptors per image, the Corel-1k shapes; synthetic
vectors, so no data file is needed) and the same width (d = 32, 2 heads, 2 layers), it times

* ``kNN graph``: :class:`~graphrerank.models.LocalMatcher` with ``k_intra=4, k_cross=4``
  (the edges grow with k);
* ``all-pairs graph``: the same model on complete graphs (``k_intra = L - 1``,
  ``k_cross = L``): every descriptor attends to every descriptor of its own image and of the
  other side, i.e. the same architecture with brute-force all-pairs attention;
* ``dense transformer``: ``torch.nn.TransformerEncoder`` over the concatenated descriptors
  (RRT-style all-pairs self-attention with PyTorch's fused attention kernels) and a mean-pooled
  logit, the usual way to write all-pairs attention;

in pairwise mode (one graph / sequence per (query, candidate)) and list-wise mode (one graph /
sequence holding the query and all its candidates: :math:`L (1 + M)` descriptors, where dense
attention costs :math:`L^2 (1 + M)^2`), and reports, in one run:

* training time per epoch: median time of one optimisation step (``--batch`` pairs, or lists of
  ``--window`` candidates, forward, backward, AdamW) times the steps of an epoch of
  ``--epoch-pairs`` pairs (400 queries x 8 pairs in ``benchmarks/learned_corel.py``);
* re-ranking time per query: median time to score the top ``--top-m`` candidates of one query;
* peak resident memory of a fresh process doing the re-ranking.

Full size (run on a quiet machine; the command of the table in the docs):

    python benchmarks/bench_learned.py --top-m 100 --repeats 5

Quick check:

    python benchmarks/bench_learned.py --top-m 20 --repeats 2 --epoch-pairs 640

``--part baselines`` times the training-free similarities instead
(:func:`graphrerank.models.shortlist_similarity`: one matrix product per block of queries)
against the library's previous chamfer path (pairs scored ``--pair-batch`` at a time, one
einsum per batch of pairs) and a plain batched einsum per query, on ``--images`` x
``--images`` images (every image against every image) of 64 descriptors of ``--dim``
dimensions, and checks that each batched form equals the per-pair one:

    python benchmarks/bench_learned.py --part baselines --images 150 --dim 1280 --repeats 3

``--part speed`` times the default :class:`~graphrerank.models.LocalMatcher`
(``design="late"``) re-ranking one query's top-M in one dense batched pass for several M (one
thread), with the database encoded once (as the reranker caches it at fit time) and without,
interleaved in the same run with: the model's pass alone (``LocalMatcher.match``, without
``score_shortlist``'s input checks), the top-k without numba, the products without oneDNN's
linear, the previous dense pass, a smaller ``k_cross=2`` (not the default), a model with a
global node (``global_dim``) and the previous default (``design="joint"``); it reports wall
and CPU (process) time (median and minimum over the repeats), fits the cost per extra
candidate (least squares over M), checks the dense pass against PyG's TransformerConv on the
match graph, and with ``--profile`` prints where the time goes (torch.profiler).
``--previous FILE`` adds an earlier version's inference pass (``match`` only, the same
weights) to the interleaved variants:

    python benchmarks/bench_learned.py --part speed --repeats 5 --profile
    git show HEAD:graphrerank/models/matcher.py > /tmp/matcher_previous.py
    python benchmarks/bench_learned.py --part speed --repeats 5 --previous /tmp/matcher_previous.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, median, rss_mb, table, timed

L, D, HIDDEN, HEADS, LAYERS, FFN = 64, 128, 32, 2, 2, 64


def _dense_model():
    import torch

    class DenseRRT(torch.nn.Module):
        """All-pairs self-attention over [query descriptors, candidate descriptors]."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(D, HIDDEN)
            self.role = torch.nn.Embedding(2, HIDDEN)
            layer = torch.nn.TransformerEncoderLayer(
                HIDDEN, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=True
            )
            self.encoder = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.head = torch.nn.Linear(HIDDEN, 1)

        def score(self, q, c):  # q (B, Lq, D), c (B, W, Lc, D) -> (B, W)
            b, w, lc = c.shape[:3]
            x = torch.cat([q, c.reshape(b, -1, D)], dim=1)
            x = torch.nn.functional.normalize(x, dim=-1)
            role = torch.cat(
                [torch.zeros(q.shape[1], dtype=torch.long), torch.ones(w * lc, dtype=torch.long)]
            )
            h = self.encoder(self.embed(x) + self.role(role))
            pooled = h[:, q.shape[1] :].reshape(b, w, lc, HIDDEN).mean(2)
            return self.head(pooled).view(b, w)

    return DenseRRT()


def _model(kind: str):
    import torch

    from graphrerank.models import LocalMatcher

    torch.manual_seed(0)
    if kind.startswith("dense transformer"):
        return _dense_model()
    k_intra, k_cross = (4, 4) if kind.startswith("kNN") else (L - 1, L)
    # the architecture comparison (sparse kNN graph / all-pairs graph / dense transformer) is
    # made with the joint design, where every block attends across images; `--part speed`
    # times the default late design against it
    return LocalMatcher(
        D,
        hidden=HIDDEN,
        heads=HEADS,
        num_layers=LAYERS,
        ffn=FFN,
        k_intra=k_intra,
        k_cross=k_cross,
        design="joint",
    )


def _data(n_images: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_images, L, D, generator=g)


def train_step(kind: str, batch: int, window: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    model = _model(kind)
    x = _data(2 * batch)
    if "list-wise" in kind:  # batch // window lists of `window` candidates
        lists = max(1, batch // window)
        q, c = x[:lists], x[batch : batch + lists * window].view(lists, window, L, D)
    else:
        q, c = x[:batch], x[batch:].unsqueeze(1)
    y = (torch.arange(c.shape[0] * c.shape[1]) % 2).float().view(c.shape[0], c.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.score(q, c), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times = timed(step, repeats)
    return {"step_s": median(times), "peak_mb": rss_mb()}


def rerank_query(kind: str, top_m: int, repeats: int, threads: int) -> dict:
    import torch

    from graphrerank.models import score_shortlist

    torch.set_num_threads(threads)
    model = _model(kind).eval()
    db = _data(top_m + 1)
    query = db[:1]
    short = torch.arange(1, top_m + 1).view(1, -1)
    base = rss_mb()
    if kind == "dense transformer":

        def run():
            with torch.no_grad():
                return model.score(query.expand(top_m, -1, -1), db[1:].unsqueeze(1))

    elif kind == "dense transformer, list-wise":

        def run():
            with torch.no_grad():
                return model.score(query, db[1:].unsqueeze(0))

    else:
        mode = "listwise" if "list-wise" in kind else "pairwise"

        def run():
            return score_shortlist(model, query, db, short, mode=mode, window=top_m, batch_size=256)

    times = timed(run, repeats)
    return {"query_s": median(times), "base_mb": base, "peak_mb": rss_mb()}


KINDS = [
    "kNN graph",
    "kNN graph, list-wise",
    "all-pairs graph",
    "dense transformer",
    "dense transformer, list-wise",
]


def _previous_chamfer(query, db, shortlist, pair_batch):
    """The library's chamfer before the batched similarities: the valid (query, candidate)
    pairs in batches of ``pair_batch``, each batch gathered and scored by one einsum."""
    import torch

    from graphrerank.models import chamfer_similarity

    out = torch.full(shortlist.shape, float("-inf"))
    rows, cols = (shortlist >= 0).nonzero(as_tuple=True)
    for s in range(0, rows.numel(), pair_batch):
        r, c = rows[s : s + pair_batch], cols[s : s + pair_batch]
        out[r, c] = chamfer_similarity(query[r], db[shortlist[r, c]].unsqueeze(1)).view(-1)
    return out


def _plain_einsum(query, db, shortlist):
    """A plain batched einsum per query over all of its candidates (the user's own loop)."""
    import torch

    out = torch.empty(shortlist.shape)
    qn = torch.nn.functional.normalize(query, dim=-1)
    dn = torch.nn.functional.normalize(db, dim=-1)
    for i in range(query.shape[0]):
        sim = torch.einsum("id,mjd->mij", qn[i], dn[shortlist[i]])
        out[i] = sim.amax(2).mean(1)
    return out


def baseline_times(images: int, dim: int, repeats: int, threads: int, pair_batch: int) -> dict:
    import torch

    from graphrerank.models import SIMILARITIES, local_similarity, shortlist_similarity

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    local = torch.randn(images, L, dim, generator=g).relu()  # sparse, non-negative like CNN maps
    short = torch.arange(images).repeat(images, 1)
    base = rss_mb()
    runs = {
        "previous library chamfer (pairs)": lambda: _previous_chamfer(
            local, local, short, pair_batch
        ),
        "plain einsum per query": lambda: _plain_einsum(local, local, short),
    }
    for kind in SIMILARITIES:
        runs[f"batched {kind}"] = lambda kind=kind: shortlist_similarity(local, local, short, kind)
    out = {}
    ref = _previous_chamfer(local, local, short, pair_batch).double()
    # exactness: every batched form against a float64 per-pair evaluation of a few pairs
    probe = [(0, 1), (images - 1, 2), (3, images // 2)]
    for name, fn in runs.items():
        times = timed(fn, repeats)
        got = fn()
        err = 0.0
        if not name.startswith("batched") or name == "batched chamfer":  # one-sided chamfer
            err = float((got.double() - ref).abs().max())
        else:
            kind = name.split()[-1]
            for a, b in probe:
                exact = local_similarity(
                    local[a : a + 1].double(), local[b : b + 1].unsqueeze(0).double(), kind
                )
                err = max(err, abs(float(got[a, b]) - float(exact)))
        out[name] = {"s": median(times), "err": err}
    out["_peak_mb"] = rss_mb() - base
    return out


#: (name, model, database encoded at fit, inference pass, numba top-k, match only)
VARIANTS = (
    ("late (default), database encoded at fit", "late", True, True, True, False),
    ("same, LocalMatcher.match only (no input checks)", "late", True, True, True, True),
    ("same, torch.topk (without numba)", "late", True, True, False, False),
    ("same, torch.addmm (without oneDNN's linear)", "late", True, True, "no-onednn", False),
    ("same, previous dense pass (autograd-capable)", "late", True, False, False, False),
    ("late (default), shortlist encoded per call", "late", False, True, True, False),
    ("late, k_cross=2 (not the default), encoded at fit", "late2", True, True, True, False),
    ("late, global node (global_dim=128), encoded at fit", "lateg", True, True, True, False),
    ('joint (previous default, design="joint")', "joint", False, True, True, False),
)
#: With ``--previous FILE`` (an earlier ``graphrerank/models/matcher.py``, e.g. from ``git
#: show``): its inference pass, ``match`` only, same weights, interleaved with the others.
PREVIOUS = ("previous version's match only (--previous)", "late", True, True, True, "previous")


def _previous_matcher(path: str):
    """The module of an earlier ``matcher.py`` (its relative imports resolve in the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("graphrerank.models._matcher_previous", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def speed_times(
    top_ms: list[int], repeats: int, threads: int, profile: bool, previous: str | None = None
) -> dict:
    import time

    import torch

    from graphrerank.models import LocalMatcher, matcher, score_shortlist

    torch.set_num_threads(threads)
    db = _data(max(top_ms) + 1)
    dbg = torch.randn(db.shape[0], D, generator=torch.Generator().manual_seed(1))
    models, encoded = {}, {}
    kinds = (("late", {}), ("late2", {"k_cross": 2}), ("lateg", {"global_dim": D}),
             ("joint", {"design": "joint"}))  # fmt: skip
    for key, kw in kinds:
        torch.manual_seed(0)
        models[key] = LocalMatcher(D, **kw).eval()  # the default sizes
        if key != "joint":
            with torch.no_grad():  # what the reranker caches at fit time
                encoded[key] = models[key].encode(
                    db, role=1, global_=dbg if key == "lateg" else None
                )
    variants = VARIANTS
    if previous:
        prev = _previous_matcher(previous).LocalMatcher(D).eval()
        prev.load_state_dict(models["late"].state_dict())
        models["previous"] = prev
        with torch.no_grad():
            encoded["previous"] = prev.encode(db, role=1)
        variants = (*VARIANTS[:2], PREVIOUS, *VARIANTS[2:])

    def run(variant, m):
        _, key, cached, fast, numba, match_only = variant
        if match_only == "previous":
            key = "previous"
        model = models[key]
        matcher._USE_ONEDNN = numba != "no-onednn"
        matcher._FAST_INFERENCE, matcher._USE_NUMBA = fast, bool(numba)
        short = torch.arange(1, m + 1).view(1, -1)
        glob = {"query_global": dbg[:1], "database_global": dbg} if key == "lateg" else {}
        try:
            with torch.no_grad():
                if match_only:
                    q = model.encode(db[:1], role=0, **({"global_": dbg[:1]} if glob else {}))
                    return model.match(q, encoded[key][short[0]], 1)
                kw = {"database_encoded": encoded[key]} if cached else {}
                return score_shortlist(model, db[:1], db, short, batch_size=m, **kw, **glob)
        finally:
            matcher._FAST_INFERENCE, matcher._USE_NUMBA, matcher._USE_ONEDNN = True, True, True

    for variant in variants:  # warm-up (the numba kernel compiles or loads from its cache)
        run(variant, top_ms[0])
    times: dict = {(v[0], m): ([], []) for v in variants for m in top_ms}
    # interleaved: every variant at each M in turn, repeat after repeat
    for m in top_ms:
        for rep in range(repeats):
            for variant in variants:
                if variant[1] == "joint" and rep >= 3:
                    continue
                wall, cpu = times[(variant[0], m)]
                t0, c0 = time.perf_counter(), time.process_time()
                run(variant, m)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    out: dict = {k: (median(w), median(c), min(c), min(w)) for k, (w, c) in times.items()}
    # the dense batched pass against PyG's sparse TransformerConv on the match graph
    model = models["late"]
    m = 100 if 100 in top_ms else top_ms[0]
    with torch.no_grad():
        graph = model(model.graph(db[:1].expand(m, -1, -1), db[1 : m + 1].unsqueeze(1)))
        out["_err"] = float((run(VARIANTS[0], m)[0] - graph).abs().max())
        out["_err_prev"] = float((run(VARIANTS[4], m)[0] - graph).abs().max())
        if previous:
            out["_err_previous"] = float((run(PREVIOUS, m).reshape(-1) - graph).abs().max())
        # the global-node model's pass against the graph path
        gm = models["lateg"]
        graph_g = gm(gm.graph(db[:1].expand(m, -1, -1), db[1 : m + 1].unsqueeze(1),
                              query_global=dbg[:1].expand(m, -1),
                              candidate_global=dbg[1 : m + 1].unsqueeze(1)))  # fmt: skip
        out["_err_glob"] = float((run(VARIANTS[7], m)[0] - graph_g).abs().max())
    out["_variants"] = [v[0] for v in variants]
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with torch.no_grad(), prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(repeats):
                run(VARIANTS[0], m)
        rows = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in rows)
        out["_profile"] = [
            (e.key, e.count // repeats, e.self_cpu_time_total / total) for e in rows[:14]
        ]
    return out


def main_baselines(args, command) -> list[dict]:
    res = isolated(
        baseline_times,
        images=args.images,
        dim=args.dim,
        repeats=args.repeats,
        threads=args.threads,
        pair_batch=args.pair_batch,
    )
    peak = res.pop("_peak_mb")
    ref = res["previous library chamfer (pairs)"]["s"]
    rows = [
        {
            "method": name,
            "s": r["s"],
            "x": f"{ref / r['s']:.2f}x",
            "err": f"{r['err']:.1e}",
        }
        for name, r in res.items()
    ]
    print(f"# Training-free local matching: speed on CPU\n\n`{command}`\n")
    print(f"{machine()}; {args.threads} thread(s).\n")
    print(
        f"{args.images} x {args.images} images (each against all), {L} descriptors of "
        f"{args.dim}-d per image (synthetic, ReLU-sparse); previous path: pairs in batches of "
        f"{args.pair_batch}; median of {args.repeats}; speed-up against the previous path; "
        f"max |error| against the previous chamfer (chamfer rows) or a float64 per-pair "
        f"evaluation (other rows); peak extra memory {peak:.0f} MiB.\n"
    )
    print(
        table(
            rows,
            [("method", "method"), ("s", "seconds"), ("x", "speed-up"), ("err", "max |error|")],
        )
    )
    return rows


def main_speed(args, command) -> list[dict]:
    import os

    top_ms = [25, 50, 100, 200]
    load_before = os.getloadavg()[0]
    res = isolated(
        speed_times, top_ms=top_ms, repeats=args.repeats, threads=args.threads,
        profile=args.profile, previous=args.previous,
    )  # fmt: skip
    load_after = os.getloadavg()[0]
    rows = []
    slopes = {}
    for name in res["_variants"]:
        cpu = [1000 * res[(name, m)][1] for m in top_ms]
        n = len(top_ms)
        mean_m, mean_t = sum(top_ms) / n, sum(cpu) / n
        slopes[name] = sum(
            (m - mean_m) * (t - mean_t) for m, t in zip(top_ms, cpu, strict=True)
        ) / sum((m - mean_m) ** 2 for m in top_ms)
        for m in top_ms:
            wall, c, cmin, wmin = (1000 * t for t in res[(name, m)])
            rows.append(
                {"variant": name, "top_m": m, "ms": wall, "wmin": wmin, "cpu": c, "cmin": cmin,
                 "per": c / m}
            )  # fmt: skip
    print(f"# Learned re-ranker: ms per query (CPU)\n\n`{command}`\n")
    print(
        f"{machine()}; {args.threads} thread(s); load average {load_before:.1f} before, "
        f"{load_after:.1f} after.\n"
    )
    print(
        f"`LocalMatcher({D})` at the default sizes (d=32, 2 heads, 2 layers, k_intra = k_cross "
        f"= 4), {L} descriptors of {D}-d per image, one query's top-M scored in one batched "
        f"pass (`score_shortlist(..., batch_size=M)`); variants interleaved (each M: every "
        f"variant in turn, {args.repeats} times; joint: at most 3); median and minimum over "
        f"the repeats; CPU = process time (what the call itself used: on a shared machine the "
        f"wall time also counts other jobs; the minimum is the estimate of an uncontended "
        f"core). Cost per extra candidate (least-squares slope of the median CPU time over "
        f"M): "
        + "; ".join(f"{k}: {v:.3f} ms" for k, v in slopes.items())
        + f". Max |dense batched pass - PyG TransformerConv on the match graph| (same "
        f"weights, top-100): {res['_err']:.1e} (previous dense pass: {res['_err_prev']:.1e}"
        + (f"; --previous: {res['_err_previous']:.1e}" if "_err_previous" in res else "")
        + f"; global node model: {res['_err_glob']:.1e}).\n"
    )
    print(
        table(
            rows,
            [
                ("variant", "variant"),
                ("top_m", "top-M"),
                ("ms", "wall ms (median)"),
                ("wmin", "wall ms (min)"),
                ("cpu", "CPU ms (median)"),
                ("cmin", "CPU ms (min)"),
                ("per", "CPU ms / candidate"),
            ],
        )
    )
    if "_profile" in res:
        print("\ntorch.profiler, default model, database encoded, top-100 (self CPU time):\n")
        print(
            table(
                [{"op": k, "calls": c, "share": f"{100 * f:.1f}%"} for k, c, f in res["_profile"]],
                [("op", "op"), ("calls", "calls / query"), ("share", "share")],
            )
        )
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=("models", "baselines", "speed"), default="models")
    p.add_argument("--images", type=int, default=150, help="baselines: images (all-vs-all)")
    p.add_argument("--dim", type=int, default=128, help="baselines: descriptor dimension")
    p.add_argument("--pair-batch", type=int, default=256, help="baselines: previous batch")
    p.add_argument("--top-m", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=64, help="pairs per training step")
    p.add_argument("--window", type=int, default=16, help="candidates per training list")
    p.add_argument("--epoch-pairs", type=int, default=3200, help="pairs per training epoch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="speed: torch.profiler table")
    p.add_argument("--previous", help="speed: an earlier matcher.py to time against")
    args = p.parse_args(argv)
    command = "python benchmarks/bench_learned.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.part == "baselines":
        return main_baselines(args, command)
    if args.part == "speed":
        return main_speed(args, command)
    steps = -(-args.epoch_pairs // args.batch)
    rows = []
    for kind in KINDS:
        row = {"method": kind}
        tr = isolated(
            train_step,
            kind=kind,
            batch=args.batch,
            window=args.window,
            repeats=args.repeats,
            threads=args.threads,
        )
        row["epoch_s"] = tr["step_s"] * steps
        rr = isolated(
            rerank_query, kind=kind, top_m=args.top_m, repeats=args.repeats, threads=args.threads
        )
        row["query_ms"] = 1000 * rr["query_s"]
        row["peak_mb"] = rr["peak_mb"]
        rows.append(row)
    for row in rows:
        ref = rows[1] if "list-wise" in row["method"] else rows[0]
        row["epoch_x"] = f"{row['epoch_s'] / ref['epoch_s']:.2f}x"
        row["query_x"] = f"{row['query_ms'] / ref['query_ms']:.2f}x"
    print(
        f"# Learned re-rankers: speed on CPU\n\n`{command}`\n\n{machine()}; {args.threads} thread(s).\n"
    )
    print(
        f"{L} descriptors of {D}-d per image, d={HIDDEN}, {HEADS} heads, {LAYERS} layers; training "
        f"epoch = {steps} steps of {args.batch} pairs (list-wise: lists of {args.window}); "
        f"re-ranking = top-{args.top_m} of one query (list-wise: one list of {args.top_m}); "
        f"median of {args.repeats}; ratios against the kNN graph of the same mode.\n"
    )
    print(
        table(
            rows,
            [
                ("method", "method"),
                ("epoch_s", "train s / epoch"),
                ("epoch_x", "vs kNN"),
                ("query_ms", "re-rank ms / query"),
                ("query_x", "vs kNN"),
                ("peak_mb", "peak MiB"),
            ],
        )
    )
    return rows


if __name__ == "__main__":
    main()
