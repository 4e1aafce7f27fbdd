"""Presets: the published settings of each method, with their source."""

from __future__ import annotations

import pytest
import torch

from graphrerank.rerankers import (
    RERANKERS,
    Diffusion,
    GNNRerank,
    KReciprocal,
    Preset,
    RDiP,
    RegionalDiffusion,
    Reranker,
    SuperGlobal,
)
from graphrerank.rerankers.presets import PRESETS, presets_table


def test_named_presets_hold_the_published_values():
    # methods.md section 1.1: Market-1501 k1=20, k2=6, lambda=0.3; CUHK03 k1=7, k2=3
    assert KReciprocal.preset("market").get_params() == KReciprocal().get_params()
    c = KReciprocal.preset("cuhk03")
    assert (c.k1, c.k2, c.lambda_value) == (7, 3, 0.3)
    # section 2.1: Market k1=26, k2=7; VeRi-776 k1=60, k2=10; 2 layers; lambda 0.3 in 2023
    v = GNNRerank.preset("veri776")
    assert (v.k1, v.k2, v.layers, v.lambda_value) == (60, 10, 2, 0.0)
    assert GNNRerank.preset("market_2023").lambda_value == 0.3
    # section 3.4: Mishkin's ROxford5k run, K=100 min-mutual, kq=10, alpha=0.9
    d = Diffusion.preset("roxford")
    assert (d.kd, d.kq, d.alpha, d.symmetrize) == (100, 10, 0.9, "min")
    r = RegionalDiffusion.preset("oxford105k")
    assert (r.kd, r.kq, r.truncation) == (200, 200, 10000)
    assert RDiP.preset("paper").rescorer == "superglobal"
    s = SuperGlobal.preset("reference")
    assert (s.M, s.K, s.beta) == (400, 9, 0.15)


def test_preset_returns_a_fresh_instance_and_takes_overrides():
    a, b = Diffusion.preset("roxford"), Diffusion.preset("roxford")
    assert a is not b
    a.set_params(kd=5)
    assert Diffusion.preset("roxford").kd == 100
    assert Diffusion.preset("roxford", kq=5).kq == 5


def test_presets_list_their_source():
    for cls_name, presets in PRESETS.items():
        for name, p in presets.items():
            assert isinstance(p, Preset)
            assert len(p.source) > 10, (cls_name, name)
    assert set(KReciprocal.presets()) == {"market", "cuhk03"}
    assert "Zhong" in KReciprocal.presets()["market"].source
    rows = presets_table()
    assert len(rows) == sum(len(p) for p in PRESETS.values())


def test_every_preset_is_a_valid_configuration():
    classes = {c.__name__: c for c in RERANKERS}
    for cls_name, presets in PRESETS.items():
        cls = classes[cls_name]
        for name in presets:
            r = cls.preset(name)
            assert type(r) is cls
            r.validate_params()


def test_a_preset_fits():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(120, 8, generator=g), dim=1)
    out = KReciprocal.preset("cuhk03").fit(x).rerank(None, 5)
    assert out.indices.shape == (120, 5)


def test_unknown_preset():
    with pytest.raises(
        ValueError, match="KReciprocal has no preset 'duke'; its presets: 'cuhk03', 'market'"
    ):
        KReciprocal.preset("duke")
    with pytest.raises(ValueError, match="its presets: none"):
        Reranker.preset("x")
    assert Reranker.presets() == {}


def test_the_docs_table_lists_every_preset():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "conventions.rst").read_text()
    table = text[text.index("Published settings (presets)") : text.index("Settings against")]
    rows = [line.split() for line in table.splitlines()]
    listed = {(r[0], r[1]) for r in rows if len(r) > 1}
    for cls_name, presets in PRESETS.items():
        for name in presets:
            assert (cls_name, name) in listed, (cls_name, name)
