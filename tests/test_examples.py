"""Every example script runs in its fast mode."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import graphrerank as gr

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_fast(capsys):
    pytest.importorskip("sklearn")
    rows = _load("quickstart").main(["--fast", "--plot", "none"])
    printed = capsys.readouterr().out
    assert [r["method"].split("(")[0] for r in rows] == [c.__name__ for c in gr.rerankers.RERANKERS]
    for cls in gr.rerankers.RERANKERS:
        assert cls.__name__ in printed
    # the baseline row is plain cosine leave-one-out mAP on the first 600 digits
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float64)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x, y = x[:600], load_digits().target[:600]
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :-1]
    hits = y[order] == y[:, None]
    prec = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
    expected = ((prec * hits).sum(1) / hits.sum(1)).mean()
    assert rows[0]["map"] == pytest.approx(expected, abs=1e-6)


def test_quickstart_writes_a_plot(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "q.png"
    _load("quickstart").main(["--fast", "--plot", str(out)])
    assert out.stat().st_size > 1000
