"""The measured parts of ``check.py``: data, timing and one function per method.

A part runs its *variants* in order and hands each result to ``record`` as soon as it is
known (so a part stopped at its time budget keeps what it finished):

* ``cpu``: graphrerank on the CPU, at the part's CPU size;
* ``device@cpu-size`` and ``dense@cpu-size``: graphrerank and the dense transcription
  (:mod:`_dense`) on the device at the CPU size (only when it is smaller than the full size):
  they give the same-size device/CPU ratio, the top-k agreement with the CPU, and warm the
  device up;
* ``device`` and ``dense``: the same at the full size; some parts add extra rows (the dense
  GNN with a bf16 score product).

Device times are CUDA-event times after warm-up calls, the median of the repeats; CPU times
are wall-clock medians. Peak memory is ``torch.cuda.max_memory_allocated`` over the timed
calls (device), or the growth of the process's peak resident memory (CPU).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _dense  # noqa: E402

#: Market-1501 size and the 100k diffusion size (the issue's).
FULL = {
    "queries": 3368,
    "gallery": 19732,
    "dim": 2048,
    "k": 100,
    "diffusion_nodes": 100_000,
    "diffusion_dim": 512,
    "diffusion_batch": 1000,
    "offline_nodes": 100_000,
    "offline_dim": 512,
    "offline_queries": 1000,
    "truncation": 1000,
    "sg_M": 400,
}

#: The ``--quick`` sizes (a few seconds on one CPU core).
QUICK = {
    "queries": 24,
    "gallery": 160,
    "dim": 32,
    "k": 10,
    "diffusion_nodes": 300,
    "diffusion_dim": 16,
    "diffusion_batch": 20,
    "offline_nodes": 200,
    "offline_dim": 16,
    "offline_queries": 12,
    "truncation": 40,
    "sg_M": 40,
}

#: Fraction of the full size the CPU runs at (the device runs both sizes).
CPU_FRACTION = {
    "knn": 1.0,
    "kreciprocal": 0.5,
    "gnn": 0.25,
    "gnn_lambda": 0.25,
    "diffusion": 0.25,
    "offline": 0.1,
    "superglobal": 0.5,
}

#: The parts, in the order they run (the issue's targets first).
PARTS = ["gnn", "gnn_lambda", "kreciprocal", "diffusion", "knn", "superglobal", "offline"]

TITLES = {
    "gnn": "GNN re-ranking (k1=26, k2=7, lambda=0), fit + rerank",
    "gnn_lambda": "GNN re-ranking (k1=26, k2=7, lambda=0.3), fit + rerank",
    "kreciprocal": "k-reciprocal (k1=20, k2=6, lambda=0.3), fit + rerank",
    "diffusion": "online diffusion (kd=50, kq=10, CG 20 it.), rerank of one batch",
    "knn": "exact kNN, torch backend (all M items, k=100)",
    "superglobal": "SuperGlobal (K=9, beta=0.15), fit + rerank",
    "offline": "offline diffusion precompute (kd=50, CG 20 it.), fit",
}


# ----------------------------------------------------------------------------- sizes and data
def part_sizes(part: str, sizes: dict, fraction: float) -> dict:
    """The problem size of ``part`` at ``fraction`` of ``sizes`` (1.0: the full size)."""

    def frac(n: int, low: int) -> int:
        return max(low, round(n * fraction))

    if part in ("diffusion",):
        return {
            "nodes": frac(sizes["diffusion_nodes"], 60),
            "dim": sizes["diffusion_dim"],
            "queries": sizes["diffusion_batch"],
        }
    if part == "offline":
        n = frac(sizes["offline_nodes"], 60)
        return {
            "nodes": n,
            "dim": sizes["offline_dim"],
            "queries": sizes["offline_queries"],
            "truncation": min(sizes["truncation"], n),
        }
    out = {
        "queries": frac(sizes["queries"], 8),
        "gallery": frac(sizes["gallery"], 60),
        "dim": sizes["dim"],
    }
    if part == "superglobal":
        out["M"] = min(sizes["sg_M"], out["gallery"])
    return out


def describe(part: str, size: dict) -> str:
    if part == "diffusion":
        return f"N={size['nodes']}, d={size['dim']}, batch={size['queries']}"
    if part == "offline":
        return f"N={size['nodes']}, d={size['dim']}, T={size['truncation']}"
    if part == "superglobal":
        return f"Q={size['queries']}+N={size['gallery']}, d={size['dim']}, M={size['M']}"
    return f"Q={size['queries']}+N={size['gallery']}, d={size['dim']}"


def dataset(part: str, size: dict, cache: Path):
    """``(queries, database)`` float32 CPU tensors, the synthetic recipe of the benchmarks
    (:func:`graphrerank.datasets.make_retrieval_dataset`, seed 0; 26 items per class at the
    Market sizes as ``bench_kreciprocal.py``, 100 per class for diffusion as
    ``bench_diffusion.py``), cached as ``.npy`` files in ``cache``."""
    import numpy as np
    import torch

    from graphrerank.datasets import make_retrieval_dataset

    if part in ("diffusion", "offline"):
        n, nq, per_class = size["nodes"], size["queries"], 100
    else:
        n, nq, per_class = size["gallery"], size["queries"], 26
    d = size["dim"]
    classes = max(10, n // per_class)
    stem = cache / f"data_{n}_{nq}_{d}_{classes}"
    qf, xf = Path(f"{stem}_q.npy"), Path(f"{stem}_x.npy")
    if qf.exists() and xf.exists():
        return torch.from_numpy(np.load(qf)), torch.from_numpy(np.load(xf))
    ds = make_retrieval_dataset(num_items=n, dim=d, num_classes=classes, num_queries=nq, seed=0)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(qf, ds.queries.numpy())
    np.save(xf, ds.database.numpy())
    return ds.queries, ds.database


# ----------------------------------------------------------------------------- timing
def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    fn: Callable[[], Any], device: str, repeats: int, warmup: int, cap_s: float = float("inf")
) -> tuple[Any, list[float], float, float, bool]:
    """``(last output, times in ms, peak MiB, MiB held before the timed calls, cold)``.

    Where the warm-up shows that ``repeats`` calls would take longer than ``cap_s``, fewer
    are timed (at least one); where one call alone takes longer, the warm-up call is the
    only (cold) time returned."""
    import torch

    cuda = device.startswith("cuda")
    out = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base0 = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb()
    for _ in range(warmup):
        t = time.perf_counter()
        out = fn()
        _sync(device)
        once = time.perf_counter() - t
        if once > cap_s:
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mb()
            return out, [1e3 * once], peak, base0, True
        repeats = max(1, min(repeats, int(cap_s / max(once, 1e-9))))
    out = None
    times = []
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            out = None
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        base = rss_mb()
        for _ in range(repeats):
            out = None
            t = time.perf_counter()
            out = fn()
            times.append(1e3 * (time.perf_counter() - t))
        peak = rss_mb()
    return out, times, peak, base, False


# ----------------------------------------------------------------------------- the methods
def _ours(part: str, q, x, sizes: dict, device: str):
    """The graphrerank call that is timed, as a closure; and extra settings shown."""
    from graphrerank.graph import knn_search
    from graphrerank.rerankers import (
        Diffusion,
        GNNRerank,
        KReciprocal,
        OfflineDiffusion,
        SuperGlobal,
    )

    k = sizes["k"]
    if part == "knn":
        m = torch_cat(q, x)
        return lambda: knn_search(m, m, k, backend="torch"), {}
    if part == "kreciprocal":
        return lambda: KReciprocal().fit(x).rerank(q, k), {}
    if part in ("gnn", "gnn_lambda"):
        lam = 0.3 if part == "gnn_lambda" else 0.0
        return lambda: GNNRerank(lambda_value=lam).fit(x).rerank(q, k), {}
    if part == "superglobal":
        m = sizes["sg_M"]
        return lambda: SuperGlobal(M=m, backend="torch").fit(x).rerank(q, k), {}
    if part == "diffusion":
        # the batches of 1000 queries per CG call on the device; the CPU keeps the
        # library's own choice (its blocks stay in cache)
        batch = q.shape[0] if device.startswith("cuda") else None
        r = Diffusion(backend="torch", batch_size=batch)
        t = time.perf_counter()
        r.fit(x)
        _sync(device)
        fit_s = time.perf_counter() - t
        return lambda: r.rerank(q, k), {"fit_s": fit_s, "batch_size": batch or "auto"}
    if part == "offline":
        t = min(sizes["truncation"], x.shape[0])
        holder = {}

        def run():
            holder["r"] = OfflineDiffusion(truncation=t, search="exact", backend="torch").fit(x)
            return holder["r"]

        return run, {"holder": holder}
    raise ValueError(part)


def _dense_fn(part: str, q, x, sizes: dict, extra: str = ""):
    import torch

    k = sizes["k"]
    if part == "knn":
        m = torch_cat(q, x)
        return lambda: _dense.knn(m, m, k)
    if part == "kreciprocal":
        return lambda: _dense.kreciprocal(q, x, k=k)
    if part in ("gnn", "gnn_lambda"):
        lam = 0.3 if part == "gnn_lambda" else 0.0
        dt = torch.bfloat16 if extra == "bf16" else None
        return lambda: _dense.gnn(q, x, lambda_value=lam, k=k, score_dtype=dt)
    if part == "superglobal":
        return lambda: _dense.superglobal(q, x, M=sizes["sg_M"], k=k)
    raise ValueError(part)


def torch_cat(q, x):
    import torch

    return torch.cat([q, x])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _indices(out) -> Any:
    """Top-k indices of a result as a numpy array."""
    idx = out.indices if hasattr(out, "indices") else out[1]
    return idx.detach().cpu().numpy()


# ----------------------------------------------------------------------------- a part
def planned(part: str, device: str, same_size: bool) -> list[str]:
    """The variants ``part`` runs, in order (``same_size``: the CPU runs the full size)."""
    names = ["cpu"]
    if not same_size:
        names += ["device@cpu-size", "dense@cpu-size"]
    names += ["device", "dense"]
    if part in ("gnn", "gnn_lambda") and device.startswith("cuda"):
        names.append("dense-bf16")
    return names


def run_part(
    part: str,
    *,
    device: str,
    sizes: dict,
    fraction: float,
    repeats: int,
    cpu_repeats: int,
    work: Path,
    record: Callable[[dict], None],
    budget_s: float = float("inf"),
) -> None:
    """Run every variant of ``part`` and ``record`` each (see the module docstring)."""
    import numpy as np
    import torch

    full = part_sizes(part, sizes, 1.0)
    small = part_sizes(part, sizes, fraction)
    same = small == full
    runs = {
        "cpu": ("cpu", small, "ours"),
        "device@cpu-size": (device, small, "ours"),
        "dense@cpu-size": (device, small, "dense"),
        "device": (device, full, "ours"),
        "dense": (device, full, "dense"),
        "dense-bf16": (device, full, "dense-bf16"),
    }
    plan = [(name, *runs[name]) for name in planned(part, device, same)]
    info = {
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    record({"kind": "info", "part": part, **info})
    cap = budget_s / (len(plan) + 2)  # time for the repeats of one variant
    for variant, dev, size, what in plan:
        t0 = time.perf_counter()
        rec = {
            "kind": "variant",
            "part": part,
            "variant": variant,
            "device": dev,
            "size": describe(part, size),
            "size_key": "full" if size == full else "cpu",
        }
        try:
            q, x = dataset(part, size, work / "data")
            q, x = q.to(dev), x.to(dev)
            cuda = dev.startswith("cuda")
            reps = repeats if cuda else cpu_repeats
            # the heavy full-size runs (seconds each) run once, warmed up by the CPU-size run
            heavy = part == "offline" or (part == "diffusion" and what != "ours")
            warm = 1 if cuda else 0
            if cuda and heavy and size == full and not same:
                warm, reps = 0, 1
            extra: dict = {}
            if part in ("diffusion", "offline") and what != "ours":
                out, times, peak, base, cold, extra = _dense_diffusion(
                    part, q, x, sizes, dev, reps, warm, cap
                )
            else:
                fn, extra = (
                    _ours(part, q, x, sizes, dev)
                    if what == "ours"
                    else (_dense_fn(part, q, x, sizes, "bf16" if what == "dense-bf16" else ""), {})
                )
                out, times, peak, base, cold = measure(fn, dev, reps, warm, cap)
                if part == "offline" and what == "ours":
                    r = extra.pop("holder")["r"]
                    out = r.rerank(q, sizes["k"])
                    extra["C_nnz"] = int(r.C_.values().numel())
            if isinstance(out, torch.Tensor):
                raise TypeError("a part must return (scores, indices)")
            np.save(work / f"{part}_{variant}.npy", _indices(out)[:, : sizes["k"]])
            rec.update(
                status="ok",
                times_ms=[round(t, 4) for t in times],
                median_ms=statistics.median(times),
                repeats=len(times),
                warmup=0 if cold else warm,
                cold=cold,
                peak_mb=peak,
                base_mb=base,
                over_inputs_mb=max(0.0, peak - base),
                per_query_ms=statistics.median(times) / q.shape[0],
                **{k: v for k, v in extra.items() if k != "holder"},
            )
        except torch.cuda.OutOfMemoryError as err:
            rec.update(status="out of memory", error=str(err).splitlines()[0][:300])
        except Exception as err:
            if type(err).__name__ == "PartTimeout":
                raise
            import traceback

            rec.update(
                status="error",
                error=f"{type(err).__name__}: {err}"[:500],
                traceback=traceback.format_exc()[-2000:],
            )
        rec["elapsed_s"] = time.perf_counter() - t0
        record(rec)
        out = q = x = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _dense_diffusion(part, q, x, sizes, dev, reps, warm, cap):
    """The dense diffusion variants: the dense operator (timed apart), then the solve
    (online) or the whole precompute (offline), and the online ranking for the agreement."""
    k = sizes["k"]
    if part == "diffusion":
        t = time.perf_counter()
        lap = _dense.laplacian(x)
        _sync(dev)
        extra = {"build_s": time.perf_counter() - t}
        out, times, peak, base, cold = measure(
            lambda: _dense.online_diffusion(lap, q, x, k=k), dev, reps, warm, cap
        )
        return out, times, peak, base, cold, extra
    tt = min(sizes["truncation"], x.shape[0])
    holder = {}

    def precompute():  # the operator, the truncation lists and every truncated solve
        holder.clear()
        lap = _dense.laplacian(x)
        lists = _dense.truncation_lists(x, tt)
        holder["c"], holder["lists"] = _dense.offline_matrix(lap, lists), lists
        return holder["c"]

    _, times, peak, base, cold = measure(precompute, dev, reps, warm, cap)
    out = _dense.offline_scores(holder["c"], holder["lists"], q, x, k=k)
    return out, times, peak, base, cold, {}


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def child_threads() -> None:
    """Honour ``GPU_CHECK_THREADS`` (CPU threads of torch in a part's process)."""
    n = os.environ.get("GPU_CHECK_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))
