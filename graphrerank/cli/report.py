"""What the command line prints and writes: tables, scores, JSON, the machine, re-rankers."""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .base import CLIError
from .tasks import Task

__all__ = [
    "bench_table",
    "describe_reranker",
    "format_score",
    "json_safe",
    "machine",
    "metric_table",
    "summary",
    "table",
    "write_json",
]


def format_score(v: Any) -> str:
    """A score in % with two decimals (``-`` for none, ``nan`` kept); other values as text."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{100 * v:.2f}"
    return str(v)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded: the first one left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    align = ["<"] + [">"] * (len(header) - 1)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)) + " |"

    sep = "|".join(
        ("-" * (w + 1) + ":") if a == ">" else "-" * (w + 2) for a, w in zip(align, widths)
    )
    return "\n".join([line(header), f"|{sep}|", *(line(r) for r in rows)])


def metric_table(task: Task, rows: list[dict]) -> str:
    """The table of ``graphrerank evaluate``: a row per re-ranker, its metrics in %, the gain of
    the task's primary metric over the first row, and the times.

    Args:
        task: the task (its columns: those some row has).
        rows: ``{"reranker", "metrics", "fit_s", "rerank_s", ...}`` per re-ranker.
    """
    cols = [(key, head) for key, head in task.columns if any(key in r["metrics"] for r in rows)]
    base = rows[0]["metrics"].get(task.primary) if rows else None
    header = ["method"] + [h for _, h in cols] + ["gain", "fit ms", "rerank ms"]
    body = []
    for r in rows:
        m = r["metrics"]
        gain = m.get(task.primary)
        gain_s = "-" if base is None or gain is None else f"{100 * (gain - base):+.2f}"
        body.append(
            [r["reranker"]]
            + [format_score(m.get(key)) for key, _ in cols]
            + [gain_s, f"{1000 * r['fit_s']:.1f}", f"{1000 * r['rerank_s']:.1f}"]
        )
    return table(header, body)


def bench_table(rows: list[dict], k: int) -> str:
    """The table of ``graphrerank bench``: median times in seconds, the ratio of each total to
    the first row's, and the mAP of the rankings of length ``k``.

    Args:
        rows: ``{"reranker", "fit_s", "rerank_s", "total_s", "map"}`` per re-ranker.
        k: the ranking length.
    """
    base = rows[0]["total_s"] if rows else float("nan")
    header = ["method", "fit s", "rerank s", "total s", "x KNN", f"mAP@{k} %"]
    body = [
        [
            r["reranker"],
            f"{r['fit_s']:.4g}",
            f"{r['rerank_s']:.4g}",
            f"{r['total_s']:.4g}",
            f"{r['total_s'] / base:.2f}",
            f"{100 * r['map']:.2f}",
        ]
        for r in rows
    ]
    return table(header, body)


def machine(libraries: Sequence[str] = ("graphrerank",)) -> str:
    """One line describing where the numbers were taken.

    The CPU and its cores, Python, torch and its threads, each of ``libraries``, and the GPU
    when CUDA is available.

    Args:
        libraries: modules to name with their ``__version__``, in order; one that cannot be
            imported is written ``no NAME`` (the benchmarks pass ``("faiss",)``).

    Example:
        >>> machine().count(";") >= 3
        True
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} cores",
        f"Python {platform.python_version()}",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
    ]
    for name in libraries:
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            parts.append(f"no {name}")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def json_safe(v: Any) -> Any:
    """``v`` with what JSON cannot hold replaced: NaN by ``None``, other objects by ``repr``."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return repr(v)


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` (through :func:`json_safe`) to ``path``, its folders created, the file
    replaced in one step; prints where.

    Raises:
        CLIError: the file cannot be written.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(json_safe(payload), indent=2) + "\n")
        tmp.replace(target)
    except OSError as err:
        raise CLIError(f"cannot write {path!r}: {err}") from None
    print(f"\nwrote {target}")


def summary(doc: str) -> str:
    """The first sentence of a docstring as plain text (links and roles reduced to their text)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    paragraph = re.sub(r"`([^`<]+?)\s*<[^>]+>`_", r"\1", paragraph)  # `"Title" <url>`_
    paragraph = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], paragraph)
    paragraph = paragraph.replace("``", "").replace("\\to", "->")
    end = re.search(r"(?<!e\.g)(?<!i\.e)(?<! al)\.(\s|$)", paragraph)  # not "e.g." or "et al."
    return paragraph[: end.start() + 1] if end else paragraph


def _setting(value: Any) -> str:
    """A default as it would be typed (objects such as models by their class name)."""
    if value is None or isinstance(value, (bool, int, float, str, tuple, list)):
        return repr(value)
    return type(value).__name__


def describe_reranker(cls: type) -> str:
    """A re-ranker class for ``graphrerank list``: its name and first sentence, its settings
    with their defaults, and the declarations it makes (``transductive``, ...)."""
    model = cls()
    flags = [
        name
        for name in ("transductive", "needs_query_similarity", "accepts_initial")
        if getattr(model, name)
    ]
    settings = ", ".join(f"{n}={_setting(d)}" for n, d in cls.default_params().items()) or "(none)"
    lines = [f"{cls.__name__}: {summary(cls.__doc__ or '')}", f"    settings: {settings}"]
    if flags:
        lines.append(f"    {', '.join(flags)}")
    return "\n".join(lines)
