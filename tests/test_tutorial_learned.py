"""The learned re-ranking tutorial runs in its fast mode (synthetic descriptors: no data)."""

import re

import pytest

from ._tutorials import TUTORIALS, run_script

TUTORIAL = TUTORIALS / "tutorial_learned_rerankers.py"


def test_tutorial_learned_rerankers_fast(tmp_path, monkeypatch, capsys):
    plt = pytest.importorskip("matplotlib.pyplot")
    plt.switch_backend("Agg")
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = run_script(TUTORIAL, monkeypatch, tmp_path, capsys, GRAPHRERANK_DATA=str(empty))
    assert "synthetic local descriptors" in out
    # the class-disjoint protocol: validation classes unseen at training, test unseen by both
    assert "train classes [0, 1, 2] validation [3, 4] test [5, 6, 7, 8, 9]" in out
    pattern = r"^(global cosine|chamfer|chamfer_sym|mnn|learned|learned \+ global) +mAP +([\d.]+)$"
    maps = dict(re.findall(pattern, out, re.M))
    assert set(maps) == {"global cosine", "chamfer", "chamfer_sym", "mnn", "learned",
                         "learned + global"}  # fmt: skip
    # the synthetic images share clutter, so matching their class parts beats the global mean
    assert float(maps["chamfer"]) > float(maps["global cosine"]) + 3
    assert float(maps["learned"]) > float(maps["global cosine"])
    assert re.search(r"16 x binary +64 bytes per database image", out)
    assert (tmp_path / "learned_reranker.npz").exists()
    assert plt.get_fignums()
    plt.close("all")
