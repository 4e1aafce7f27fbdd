"""``graphrerank evaluate --leave-one-out strict``: each item removed from the database."""

import json

import numpy as np
import pytest

from graphrerank.testing import requires_data

from ._cli import run, separate_query_args

SYNTHETIC = ["--data", "synthetic", "--size", "120", "--dim", "8", "--classes", "6"]


def _map_column(out):
    rows = [line for line in out.splitlines() if line.startswith("|")][2:]
    return {r.split("|")[1].strip(): float(r.split("|")[2]) for r in rows}


def _step_ap_strict(x, y):
    """Dense float64 strict leave-one-out class mAP of cosine ranking: item i ranks the other
    N - 1 items (step AP)."""
    x = np.asarray(x, np.float64)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :-1]
    hits = y[order] == y[:, None]
    npos = hits.sum(1)
    prec = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
    ap = (prec * hits).sum(1) / np.maximum(npos, 1)
    return ap[npos > 0].mean()


def test_strict_knn_is_the_dense_leave_one_out_map(capsys, tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 6))
    y = np.repeat(np.arange(5), 8)
    x = centres[y] + 0.8 * rng.normal(size=(40, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "db.npy", x.astype(np.float32))
    np.save(tmp_path / "labels.npy", y)
    out_json = tmp_path / "out.json"
    code, out, _ = run(
        capsys,
        "evaluate",
        "--database",
        str(tmp_path / "db.npy"),
        "--labels",
        str(tmp_path / "labels.npy"),
        "--leave-one-out",
        "strict",
        "--json",
        str(out_json),
    )
    assert code == 0, out
    assert "strict leave-one-out" in out
    got = _map_column(out)["KNN()"]
    assert got == pytest.approx(100 * _step_ap_strict(x, y), abs=0.006)
    report = json.loads(out_json.read_text())
    assert report["leave_one_out"] == "strict" and report["k"] == 39  # N - 1 others at most


def test_strict_changes_query_expansion_but_not_the_baseline(capsys):
    code, loo, _ = run(capsys, "evaluate", *SYNTHETIC, "-r", "AlphaQueryExpansion(k=3)")
    assert code == 0
    code, strict, _ = run(
        capsys,
        "evaluate",
        *SYNTHETIC,
        "-r",
        "AlphaQueryExpansion(k=3)",
        "--leave-one-out",
        "strict",
    )
    assert code == 0
    a, b = _map_column(loo), _map_column(strict)
    assert a["KNN()"] == b["KNN()"]  # the baseline never counts the item itself
    assert a["AlphaQueryExpansion(k=3)"] != b["AlphaQueryExpansion(k=3)"]


def test_strict_needs_all_vs_all_data(capsys, tmp_path):
    x = np.eye(6, dtype=np.float32)
    files = separate_query_args(tmp_path, x, np.arange(6) % 2, x[:2], np.arange(2) % 2)
    code, _, err = run(
        capsys,
        "evaluate",
        *files,
        "--leave-one-out",
        "strict",
    )
    assert code == 2
    assert "--leave-one-out strict needs all-vs-all data" in err


@requires_data("corel1k")
def test_strict_alpha_qe_on_corel_is_the_published_figure(capsys):
    # the data folder's README: alpha-QE (k=5) under strict leave-one-out, 94.14 mAP
    code, out, _ = run(
        capsys,
        "evaluate",
        "--data",
        "corel1k",
        "-r",
        "AlphaQueryExpansion(k=5)",
        "--leave-one-out",
        "strict",
    )
    assert code == 0
    assert _map_column(out)["AlphaQueryExpansion()"] == pytest.approx(94.14, abs=0.005)
