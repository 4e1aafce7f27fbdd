"""k-reciprocal and GNN re-ranking at MSMT17 size, and a 100k all-vs-all: time and peak memory.

MSMT17 has 11,659 queries and 82,161 database images; with d = 2048 descriptors the
transductive graph has M = 93,820 nodes. The dense reference codes need M x M matrices
(93,820^2 float32 = 35 GB, float64 = 70 GB, several of them), so they cannot run here and
there is nothing to compare against at this size: this script checks that graphrerank runs
within the memory budget (24 GiB for MSMT17 size, 8 GB for the 100k all-vs-all) and records
what it costs.

Synthetic descriptors of that size with the recipe of ``bench_kreciprocal.py`` (its
``_data``: :func:`graphrerank.datasets.make_retrieval_dataset`, about 26 database items per
class). Cases, each in a fresh process (so that its peak memory is its own):

* ``kr``: :class:`~graphrerank.rerankers.KReciprocal` (Market preset k1=20, k2=6,
  lambda=0.3), ``fit(database)`` then ``rerank(queries, 100)``;
* ``gnn``: :class:`~graphrerank.rerankers.GNNRerank` (k1=26, k2=7, 2 layers, lambda=0),
  the same;
* ``ava``: k-reciprocal all-vs-all over ``--ava-items`` items (100,000; ``rerank(None, 100)``)
  of ``--ava-dim`` dimensions;
* ``faiss`` (``--faiss``): the bare exact faiss kNN search (``IndexFlat``, k = 100) of all M
  items against all of them, the search every transductive method needs (the rerankers run
  their own blocked exact search through NumPy's BLAS, not faiss).

Per case: seconds of the kNN search (every call of the neighbour-list scans, fit and
rerank), of the step (the rest: encodings / propagation, Jaccard / scores, top-k) and in all,
the CPU seconds of the process, and the peak resident memory (``VmHWM``) of the process, over
the inputs, and in each stage (the peak is reset at each stage's start through
``/proc/self/clear_refs`` where the kernel allows it). A watchdog thread stops a case whose
resident memory passes ``--max-gb``.

Full size (about 18e12 multiply-adds of search per case at d = 2048):

    flock /tmp/helpers/bigmem.lock python benchmarks/bench_msmt17.py --cases kr
    flock /tmp/helpers/bigmem.lock python benchmarks/bench_msmt17.py --cases ava --ava-dim 128

Quick check:

    python benchmarks/bench_msmt17.py --scale 0.05
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import isolated, machine, table

QUERIES, GALLERY, DIM = 11_659, 82_161, 2048
AVA_ITEMS = 100_000

#: Settings of the cases.
PARAMS = {
    "kr": {"k1": 20, "k2": 6, "lambda_value": 0.3},
    "gnn": {"k1": 26, "k2": 7, "layers": 2, "lambda_value": 0.0},
}

COLUMNS = [
    ("case", "case"),
    ("size", "size"),
    ("knn_s", "kNN search s"),
    ("step_s", "step s"),
    ("total_s", "total s"),
    ("cpu_s", "CPU s"),
    ("setup_mb", "data generation peak MiB"),
    ("base_mb", "inputs MiB"),
    ("knn_mb", "kNN peak MiB"),
    ("step_mb", "step peak MiB"),
    ("peak_mb", "peak MiB"),
    ("budget", "budget"),
    ("met", "within budget"),
]


def _status(field: str) -> float:
    """A ``/proc/self/status`` field in MiB (``nan`` where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current resident memory (Linux >= 4.0); False where not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _watchdog(max_mb: float) -> None:
    """Stop this process once its resident memory passes ``max_mb``."""

    def watch():
        while True:
            rss = _status("VmRSS")
            if rss > max_mb:
                print(f"bench_msmt17: resident memory {rss:.0f} MiB passed {max_mb:.0f} MiB, "
                      "stopping", file=sys.stderr, flush=True)  # fmt: skip
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_case(case: str, nq: int, ng: int, dim: int, classes: int, k: int, max_mb: float) -> dict:
    """One case in this (fresh) process; the measurements as a dict."""
    _watchdog(max_mb)
    from bench_kreciprocal import _data

    q, g = _data(nq, ng, dim, classes)
    if case == "ava":
        q = None
    import torch

    x = g if q is None else torch.cat([q, g])
    setup, base = _status("VmHWM"), _status("VmRSS")
    if case == "faiss":
        from graphrerank.graph import knn_search

        del q, g
        can_reset = _reset_peak()
        c0, t0 = _cpu_s(), time.perf_counter()
        knn_search(x, x, k, backend="faiss")
        t = time.perf_counter() - t0
        peak = _status("VmHWM")
        return {"knn_s": t, "total_s": t, "cpu_s": _cpu_s() - c0, "base_mb": base, "setup_mb": setup,
                "knn_mb": peak, "peak_mb": peak, "reset": can_reset}  # fmt: skip
    del x
    from graphrerank.rerankers import GNNRerank, KReciprocal, gnn, kreciprocal

    module, cls = (gnn, GNNRerank) if case == "gnn" else (kreciprocal, KReciprocal)
    spent = {"knn": 0.0}
    peaks = {"knn": 0.0}

    def timed(fn):
        def inner(*args, **kwargs):
            _reset_peak()
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["knn"] += time.perf_counter() - t0
                peaks["knn"] = max(peaks["knn"], _status("VmHWM"))
                _reset_peak()

        return inner

    # the neighbour-list scans of fit and rerank, timed where the reranker calls them
    for name in ("scan", "_database_scan", "graph_lists"):
        if hasattr(module, name):
            setattr(module, name, timed(getattr(module, name)))
    r = cls(progress=False, **PARAMS["gnn" if case == "gnn" else "kr"])
    can_reset = _reset_peak()
    c0, t0 = _cpu_s(), time.perf_counter()
    out = r.fit(g).rerank(q, k)
    total = time.perf_counter() - t0
    cpu = _cpu_s() - c0
    step_peak = _status("VmHWM")  # since the last scan ended: the step
    overall = max(step_peak, peaks["knn"])
    assert out.indices.shape == ((nq if q is not None else ng), k)
    return {"knn_s": spent["knn"], "step_s": total - spent["knn"], "total_s": total,
            "cpu_s": cpu, "base_mb": base, "setup_mb": setup, "knn_mb": peaks["knn"], "step_mb": step_peak,
            "peak_mb": overall if can_reset else step_peak, "reset": can_reset}  # fmt: skip


def main(argv=None) -> str:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", nargs="*", default=["kr", "gnn", "ava"],
                   choices=["kr", "gnn", "ava", "faiss"])  # fmt: skip
    p.add_argument("--faiss", action="store_true", help="also the bare faiss kNN row")
    p.add_argument("--scale", type=float, default=1.0,
                   help="fraction of the sizes (queries, database, all-vs-all items)")  # fmt: skip
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--ava-items", type=int, default=AVA_ITEMS)
    p.add_argument("--ava-dim", type=int, default=DIM)
    p.add_argument("--k", type=int, default=100, help="length of the re-ranked lists")
    p.add_argument("--max-gb", type=float, default=20.0,
                   help="stop a case whose resident memory passes this (GiB)")  # fmt: skip
    p.add_argument("--threads", type=int, help="threads of torch and BLAS (default: all)")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 1:
        p.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.threads:
        # read by the measuring processes (BLAS reads its variables at start-up)
        for var in ("BENCH_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    cases = list(args.cases) + (["faiss"] if args.faiss and "faiss" not in args.cases else [])
    nq = max(2, round(QUERIES * args.scale))
    ng = max(26, round(GALLERY * args.scale))
    na = max(26, round(args.ava_items * args.scale))
    budgets = {"kr": 24 * 1024, "gnn": 24 * 1024, "faiss": 24 * 1024, "ava": 8e9 / 2**20}
    rows, loads = [], [os.getloadavg()[0]]
    for case in cases:
        n_q, n_g, d = (0, na, args.ava_dim) if case == "ava" else (nq, ng, args.dim)
        size = (f"N = {n_g:,} all-vs-all, d = {d}" if case == "ava"
                else f"Q = {n_q:,} + N = {n_g:,}, d = {d}")  # fmt: skip
        name = {
            "kr": "k-reciprocal (k1=20, k2=6, lambda=0.3)",
            "gnn": "GNN (k1=26, k2=7, 2 layers, lambda=0)",
            "ava": "k-reciprocal all-vs-all (k1=20, k2=6, lambda=0.3)",
            "faiss": "faiss exact kNN (all M items, k=100)",
        }[case]
        row = {"case": name, "size": size, "budget": f"{budgets[case] / 1024:.3g} GiB"}
        try:
            row.update(isolated(run_case, case=case, nq=n_q if case != "ava" else 1, ng=n_g,
                                dim=d, classes=max(10, n_g // 26), k=args.k,
                                max_mb=args.max_gb * 1024))  # fmt: skip
            row["met"] = "yes" if row["peak_mb"] < budgets[case] else "no"
        except RuntimeError as err:
            row["met"] = f"failed: {err}"
        loads.append(os.getloadavg()[0])
        rows.append(row)
        print(f"done {case}", file=sys.stderr, flush=True)
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    note = (
        ""
        if all(r.get("reset", True) for r in rows)
        else (" (the kernel refused to reset the peak: stage peaks are cumulative)")
    )
    text = (
        f"Machine: {machine()}\n"
        f"Command: python benchmarks/bench_msmt17.py {shown}\n"
        f"k = {args.k}; one run per case in a fresh process; measuring processes use "
        f"{args.threads or 'all'} thread(s); 1-minute load average during the run "
        f"{min(loads):.1f}-{max(loads):.1f}; peaks are resident memory (VmHWM) of the whole "
        f"process from the start of fit, inputs included (the synthetic data generation "
        f"before it is its own column){note}\n\n" + table(rows, COLUMNS)
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
