"""Shared helpers of the benchmark scripts: machine description, isolated timed runs, tables."""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any


def machine() -> str:
    """One line describing where the numbers were taken.

    :func:`graphrerank.cli.report.machine` (the line ``graphrerank bench`` prints), naming the
    faiss version (or "no faiss") in place of graphrerank's.
    """
    from graphrerank.cli.report import machine as describe

    return describe(libraries=("faiss",))


def rss_mb() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(
    fn: Callable[[], Any], repeats: int, *, warmup: int = 1, cuda: bool = False
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls (CUDA-synchronised)."""
    import torch

    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def _child(target, kwargs, queue):
    try:
        queue.put(("ok", target(**kwargs)))
    except BaseException as err:  # report, do not hang the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def isolated(target: Callable[..., dict], **kwargs: Any) -> dict:
    """Run ``target(**kwargs)`` in a fresh process so its peak memory is its own.

    ``target`` must be a module-level function returning a dict; it should record
    ``rss_mb()`` itself after its setup (as ``base_mb``) and at the end (as ``peak_mb``).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(target, kwargs, queue))
    p.start()
    status, value = queue.get()
    p.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` given as (key, header)."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join(" --- " for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
