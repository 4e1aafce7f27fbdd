"""Shared helpers of the command-line tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphrerank.cli import main


def run(capsys, *argv):
    """Run ``graphrerank ARGV`` in-process: ``(exit code, stdout, stderr)``."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def separate_query_args(
    folder: Path,
    database: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    *,
    query_labels_as_text: bool = False,
) -> list[str]:
    """Write class-labelled data with separate queries into ``folder``; return the options
    (``--database --labels --queries --query-labels``) that name the files."""
    np.save(folder / "db.npy", database)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "q.npy", queries)
    if query_labels_as_text:
        qlabels = folder / "qlabels.txt"
        qlabels.write_text("".join(f"{int(v)}\n" for v in query_labels))
    else:
        qlabels = folder / "qlabels.npy"
        np.save(qlabels, query_labels)
    return [
        "--database", str(folder / "db.npy"),
        "--labels", str(folder / "labels.npy"),
        "--queries", str(folder / "q.npy"),
        "--query-labels", str(qlabels),
    ]  # fmt: skip
