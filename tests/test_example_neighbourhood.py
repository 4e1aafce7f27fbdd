"""The neighbourhood example runs in its fast mode and prints what it computes."""

import importlib.util
from pathlib import Path

import pytest

from graphrerank.metrics import class_map
from graphrerank.rerankers import AlphaQueryExpansion

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "neighbourhood.py"


def test_neighbourhood_example_fast(capsys):
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("neighbourhood_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--fast"])
    printed = capsys.readouterr().out
    table = rows["all_vs_all"]
    assert len(table) == 8 and all(r["method"] in printed for r in table)
    # the alpha-QE row is alpha-QE's leave-one-out mAP on the first 500 digits
    from graphrerank.datasets import load_digits_retrieval

    data = load_digits_retrieval()
    x, y = data.database[:500], data.database_labels[:500]
    out = AlphaQueryExpansion(k=5, alpha=3.0).fit(x).rerank(None, k=500)
    assert table[2]["map"] == pytest.approx(
        100 * float(class_map(out.indices, y, leave_one_out=True))
    )
    # every re-ranker of the set improves on plain kNN there
    assert all(r["map"] > table[0]["map"] for r in table[1:])
