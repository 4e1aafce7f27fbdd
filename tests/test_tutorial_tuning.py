"""The tuning tutorial's claims, on the real re-ID file: the defaults lose to the cosine
baseline, the tuned choices (margin of two standard errors) never do on held-out identities,
and query expansion tuned on one half gains on the other."""

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from graphrerank.testing import requires_data

TUTORIAL = Path(__file__).resolve().parents[1] / "examples" / "tutorials" / "tutorial_tuning.py"
ROW = re.compile(
    r"^(KReciprocal|GNNRerank|Diffusion|DBA \+ aQE) +([AB]) +([\d.]+) +([\d.]+) +([\d.]+)  (.+)$",
    re.M,
)


@requires_data("pku_sketch_reid/pytorch_result.mat")
def test_tutorial_tuning_claims(tmp_path, monkeypatch, capsys):
    plt = pytest.importorskip("matplotlib.pyplot")
    plt.switch_backend("Agg")
    monkeypatch.setenv("GRAPHRERANK_FAST", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [TUTORIAL.name])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(TUTORIAL), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    # the data folder's README: cosine baseline mAP 21.71 on the whole file
    assert re.search(r"^kNN baseline +mAP +21\.71$", out, re.M)
    for name in ("KReciprocal", "GNNRerank", "Diffusion", "DBA \\+ aQE"):
        m = re.search(rf"^{name} +mAP +([\d.]+) ", out, re.M)
        assert m and float(m.group(1)) < 21.71  # the defaults lose on the whole file
    rows = ROW.findall(out)
    assert len(rows) == 8  # 4 re-rankers x 2 held-out halves
    for name, held, base, defaults, tuned, chosen in rows:
        base, defaults, tuned = float(base), float(defaults), float(tuned)
        assert defaults < base, (name, held)  # the defaults lose on each held-out half
        assert tuned >= base, (name, held)  # the tuned choice never does
        if chosen == "KNN()":
            assert tuned == base
    dba = {held: (float(base), float(tuned)) for name, held, base, _, tuned, _ in rows
           if name == "DBA + aQE"}  # fmt: skip
    assert dba["A"][1] > dba["A"][0] + 1.0  # tuned on half B, it gains on half A
    assert "shared" in out and "baseline (KNN)" in out
    # the whitening pipeline, tuned on one half, never below the baseline on the other
    held = re.findall(
        r"^whitening pipeline, held out ([AB]): baseline ([\d.]+), tuned ([\d.]+)", out, re.M
    )
    assert sorted(h for h, _, _ in held) == ["A", "B"]
    assert all(float(t) >= float(b) for _, b, t in held)
    m = re.search(r"^centring alone on the whole file: mAP ([\d.]+)$", out, re.M)
    assert m and float(m.group(1)) > 21.71  # centring gains a little here


def test_the_tutorials_digits_claims():
    # "With ten images per class diffusion's published kd = 50 ... loses to the baseline;
    # kd='auto' gains on it"; strict leave-one-out changes alpha-QE's figure
    import graphrerank as gr
    from graphrerank.metrics import class_map
    from graphrerank.rerankers import KNN, AlphaQueryExpansion, Diffusion, check_settings

    digits = gr.datasets.load_digits_retrieval()
    labels = digits.database_labels
    rows = torch.cat([torch.nonzero(labels == c).flatten()[:10] for c in range(10)])
    x, y = digits.database[rows], labels[rows]
    assert {p.setting for p in check_settings(Diffusion(), x, y, warn=False)} >= {"kd"}

    def score(r, strict=False):
        fitted = r.fit(x)
        if strict:
            out = fitted.rerank(None, k=len(x) - 1, leave_one_out="strict")
        else:
            out = fitted.rerank(None, k=len(x))
        return class_map(out.indices, y, leave_one_out=True)

    base = score(KNN())
    assert score(Diffusion()) < base < score(Diffusion(kd="auto"))
    aqe = AlphaQueryExpansion(k=3)
    assert abs(score(aqe) - score(aqe, strict=True)) > 1e-3
