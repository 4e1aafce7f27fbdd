"""The re-ID re-ranking example runs on the real re-ID result file."""

import importlib.util
from pathlib import Path

import pytest

from graphrerank.testing import requires_data

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reid_reranking.py"


@requires_data("pku_sketch_reid/pytorch_result.mat")
def test_reid_example(capsys):
    spec = importlib.util.spec_from_file_location("reid_reranking", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main([])
    printed = capsys.readouterr().out
    assert [r["method"] for r in rows] == [
        "KNN()",
        "KReciprocal()",
        "GNNRerank()",
        "GNNRerank(lambda_value=0.3)",
    ]
    # the cosine baseline of this file (data README): mAP 21.71, Rank-1 14.0, Rank-10 48.0
    base = rows[0]["metrics"]
    assert 100 * base.map == pytest.approx(21.71, abs=0.01)
    assert (100 * base.rank1, 100 * base.rank10) == pytest.approx((14.0, 48.0))
    assert "ranks as from features: True" in printed
