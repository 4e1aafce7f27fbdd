"""benchmarks/bench_msmt17.py at a tiny ``--scale``: its table's columns and rows (no timings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_msmt17.py"

HEADERS = [
    "case",
    "size",
    "kNN search s",
    "step s",
    "total s",
    "CPU s",
    "data generation peak MiB",
    "inputs MiB",
    "kNN peak MiB",
    "step peak MiB",
    "peak MiB",
    "budget",
    "within budget",
]


def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _table(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("msmt") / "table.md"
    # 0.002 of MSMT17: 23 queries + 164 database items; 0.002 of 100k: 200 items
    proc = _run("--scale", "0.002", "--dim", "16", "--ava-dim", "16", "--faiss", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, out.read_text()


def test_table_has_the_columns_and_one_row_per_case(result):
    stdout, written = result
    assert written.strip() == stdout.strip()
    rows = _table(stdout)
    assert rows[0] == HEADERS
    body = rows[2:]
    assert [r[0] for r in body] == [
        "k-reciprocal (k1=20, k2=6, lambda=0.3)",
        "GNN (k1=26, k2=7, 2 layers, lambda=0)",
        "k-reciprocal all-vs-all (k1=20, k2=6, lambda=0.3)",
        "faiss exact kNN (all M items, k=100)",
    ]
    # the sizes follow --scale (rounded) and the dimensions given
    assert [r[1] for r in body] == [
        "Q = 23 + N = 164, d = 16",
        "Q = 23 + N = 164, d = 16",
        "N = 200 all-vs-all, d = 16",
        "Q = 23 + N = 164, d = 16",
    ]
    assert [r[-2] for r in body] == ["24 GiB", "24 GiB", "7.45 GiB", "24 GiB"]
    assert all(r[-1] == "yes" for r in body)


def test_stages_add_up_and_memory_is_positive(result):
    stdout, _ = result
    for r in _table(stdout)[2:]:
        cells = dict(zip(HEADERS, r, strict=True))
        total = float(cells["total s"])
        assert total > 0
        assert float(cells["peak MiB"]) > float(cells["inputs MiB"]) * 0.5 > 0
        if cells["step s"]:  # the rerankers: search + step = total (4 significant digits)
            assert float(cells["kNN search s"]) + float(cells["step s"]) == pytest.approx(
                total, rel=2e-3, abs=2e-3
            )
            assert float(cells["kNN search s"]) <= total
    head = stdout.splitlines()
    assert head[0].startswith("Machine: ")
    assert head[1].startswith("Command: python benchmarks/bench_msmt17.py --scale 0.002")
    assert "load average" in head[2]


def test_scale_out_of_range_is_refused():
    proc = _run("--scale", "0")
    assert proc.returncode == 2
    assert "--scale must be in (0, 1], got 0.0" in proc.stderr
