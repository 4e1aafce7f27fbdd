"""What the command line prints and writes: tables, scores, JSON, rankings, the machine,
re-rankers, and the progress line of long steps."""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import re
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from .._io import save_arrays
from .base import CLIError
from .tasks import Task

__all__ = [
    "RANKINGS_FORMAT",
    "Step",
    "bench_table",
    "describe_reranker",
    "format_score",
    "gain_header",
    "json_safe",
    "machine",
    "metric_table",
    "save_rankings",
    "summary",
    "table",
    "write_json",
]

#: The ``format`` recorded in the metadata of the files of ``--save-rankings``.
RANKINGS_FORMAT = "graphrerank-rankings"


def format_score(v: Any) -> str:
    """A score in % with two decimals (``-`` for none, ``nan`` kept); other values as text."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{100 * v:.2f}"
    return str(v)


def table(header: list[str], rows: list[list[str]], *, text_columns: int = 0) -> str:
    """A Markdown table, columns padded: the first one and the last ``text_columns`` (an
    ``error`` column) left-aligned, the others right-aligned; a cell is one line, ``|``
    escaped."""
    header = [_cell(h) for h in header]
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    align = ["<"] + [">"] * (len(header) - 1)
    for i in range(1, text_columns + 1):
        align[-i] = "<"

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)) + " |"

    sep = "|".join(
        ("-" * (w + 1) + ":") if a == ">" else "-" * (w + 2) for a, w in zip(align, widths)
    )
    return "\n".join([line(header), f"|{sep}|", *(line(r) for r in rows)])


def _cell(text: str) -> str:
    """One line of text that cannot break a Markdown table (``|`` escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def _error_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """An ``error`` column where some row has no result, else nothing."""
    if all(r.get("status", "ok") == "ok" for r in rows):
        return [], [[] for _ in rows]
    cells = []
    for r in rows:
        if r.get("status", "ok") == "ok":
            cells.append([""])
        else:
            where = r.get("failed_at")
            text = f"{r['status']}{f' at {where}' if where else ''}: {r['error']}"
            cells.append([text if len(text) <= 160 else text[:157] + "..."])  # all in --json
    return ["error"], cells


def gain_header(task: Task) -> str:
    """The header of the gain column: ``gain`` and the metric it compares (``gain M mAP``)."""
    return f"gain {task.primary_header}"


def metric_table(task: Task, rows: list[dict]) -> str:
    """The table of ``graphrerank evaluate``: a row per re-ranker, its metrics in %, the gain of
    the task's primary metric over the first row, the times, and an ``error`` column when a
    row failed.

    Every header names its metric: ``E mAP``, ``M mP@10``, ``R@1``, ``R-1``...; the gain column
    says which metric it compares (``gain M mAP`` on revisitop: the Medium protocol, the one
    the benchmark's papers lead with; ``gain mAP`` on classes and re-ID). One gain column keeps
    the table narrow; the JSON report holds every metric for other differences.

    Args:
        task: the task (its columns: those some row has).
        rows: ``{"reranker", "metrics", "fit_s", "rerank_s", ...}`` per re-ranker, and for a
            row without result ``"status"`` (``"failed"`` or ``"skipped"``), ``"error"`` and
            ``"failed_at"``.
    """
    cols = [(key, head) for key, head in task.columns if any(key in r["metrics"] for r in rows)]
    base = rows[0]["metrics"].get(task.primary) if rows else None
    err_head, err_cells = _error_cells(rows)
    header = ["method"] + [h for _, h in cols] + [gain_header(task), "fit ms", "rerank ms"]
    body = []
    for r, err in zip(rows, err_cells):
        m = r["metrics"]
        gain = m.get(task.primary)
        gain_s = "-" if base is None or gain is None else f"{100 * (gain - base):+.2f}"
        body.append(
            [r["reranker"]]
            + [format_score(m.get(key)) for key, _ in cols]
            + [gain_s, _ms(r.get("fit_s")), _ms(r.get("rerank_s"))]
            + err
        )
    return table(header + err_head, body, text_columns=len(err_head))


def bench_table(rows: list[dict], k: int) -> str:
    """The table of ``graphrerank bench``: median times in seconds, the ratio of each total to
    that of the kNN baseline ``KNN()`` (the first row where there is none; the header names
    it), the mAP of the rankings of length ``k``, and an ``error`` column when a row failed.

    Args:
        rows: ``{"reranker", "fit_s", "rerank_s", "total_s", "map"}`` per re-ranker (``None``
            where the row failed), and ``"status"``, ``"error"``, ``"failed_at"``.
        k: the ranking length.
    """
    ref = next((r for r in rows if r["reranker"] == "KNN()"), rows[0] if rows else None)
    base = None if ref is None else ref["total_s"]
    err_head, err_cells = _error_cells(rows)
    ratio = f"x {ref['reranker'] if ref is not None else 'KNN()'}"
    header = ["method", "fit s", "rerank s", "total s", ratio, f"mAP@{k} %"]

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    body = []
    for r, err in zip(rows, err_cells):
        total = r["total_s"]
        body.append(
            [
                r["reranker"],
                num(r["fit_s"], ".4g"),
                num(r["rerank_s"], ".4g"),
                num(total, ".4g"),
                "-" if total is None or not base else f"{total / base:.2f}",
                num(None if r["map"] is None else 100 * r["map"], ".2f"),
                *err,
            ]
        )
    return table(header + err_head, body, text_columns=len(err_head))


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


def write_json(path: str, payload: dict, *, quiet: bool = False) -> None:
    """Write ``payload`` (through :func:`json_safe`) to ``path``, its folders created, the file
    replaced in one step; prints where unless ``quiet`` (the commands rewrite the file after
    each row, quietly, so that finished rows are on disk whatever happens next).

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
    if not quiet:
        print(f"\nwrote {target}")


def _slug(text: str, limit: int = 60) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "_", text).strip("_.")[:limit] or "reranker"


def save_rankings(folder: str | os.PathLike, number: int, row: dict, meta: dict) -> Path:
    """Write one row's rankings to ``folder/NN-NAME.npz``, pickle-free.

    The file holds ``indices`` :math:`(Q, k)` int64 (database rows, best first) and ``scores``
    :math:`(Q, k)` as the re-ranker returned them, and the JSON metadata ``meta`` with the
    re-ranker (``format`` :data:`RANKINGS_FORMAT`, version 1); ``numpy.load(path)`` reads it
    (``allow_pickle`` may stay off). The file is replaced in one step.

    Args:
        folder: where (created if missing).
        number: the row's number in the table, from 1 (the ``NN`` of the name).
        row: the row (``"reranker"``, ``"class"``, ``"settings"``, ``"result"``).
        meta: what else to record (the data, ``k``, ...).

    Returns:
        The file's path.
    """
    result = row["result"]
    arrays = {
        "indices": result.indices.detach().cpu().numpy().astype(np.int64, copy=False),
        "scores": result.scores.detach().cpu().numpy(),
    }
    info = {
        "format": RANKINGS_FORMAT,
        "version": 1,
        "row": number,
        "reranker": row["reranker"],
        "class": row["class"],
        "settings": row["settings"],
        **meta,
    }
    path = save_arrays(
        Path(folder) / f"{number:02d}-{_slug(row['reranker'])}.npz", arrays, json_safe(info)
    )
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # as any file the user writes (the temporary file was 0600)
    return path


class Step:
    """While a step runs: a line on standard error with its name and the seconds so far.

    The line appears once the step has run ``delay`` seconds (short steps stay quiet), is
    redrawn every ``interval`` seconds by a background thread (a fit gives no progress of its
    own) and is erased when the step ends. Nothing is drawn when ``show`` is false, or when
    ``show`` is ``None`` and the stream is not a terminal (logs and pipes stay clean), as
    :class:`graphrerank._progress.Progress` does.

    Example:
        >>> with Step("fit", show=False):
        ...     pass
    """

    _SPIN = "|/-\\"

    def __init__(
        self,
        desc: str,
        *,
        show: bool | None = None,
        stream: TextIO | None = None,
        delay: float = 1.0,
        interval: float = 0.2,
    ) -> None:
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.show = bool(isatty()) if show is None else bool(show)
        self.delay, self.interval = delay, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False

    def __enter__(self) -> Step:
        if self.show:
            self._start = time.perf_counter()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def _tick(self) -> None:
        if self._stop.wait(self.delay):
            return
        width = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)
        i = 0
        while True:
            elapsed = time.perf_counter() - self._start
            tail = f" {self._SPIN[i % 4]} {elapsed:.1f}s"
            head = (
                self.desc
                if len(self.desc) + len(tail) <= width
                else (self.desc[: max(width - len(tail) - 3, 0)] + "...")
            )
            self.stream.write(f"\r\x1b[K{head}{tail}")
            self.stream.flush()
            self._drawn = True
            i += 1
            if self._stop.wait(self.interval):
                return


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
