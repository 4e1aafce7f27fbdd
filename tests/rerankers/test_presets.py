"""Presets: the published settings of each method, with their source."""

from __future__ import annotations

import pytest
import torch

from graphrerank.rerankers import (
    RERANKERS,
    RERANKERS_WITH_LOCAL,
    Diffusion,
    GNNRerank,
    KReciprocal,
    LocalDescriptorReranker,
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
    classes = {c.__name__: c for c in RERANKERS + RERANKERS_WITH_LOCAL}
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

    docs = Path(__file__).parents[2] / "docs"
    text = (docs / "conventions.rst").read_text()
    table = text[text.index("Published settings (presets)") : text.index("Settings against")]
    # the learned re-rankers' presets have their own table, beside the model presets
    text = (docs / "learned_models.rst").read_text()
    table += text[text.index("Re-ranker presets") : text.index("Where each preset departs")]
    rows = [line.split() for line in table.splitlines()]
    listed = {(r[0], r[1]) for r in rows if len(r) > 1}
    for cls_name, presets in PRESETS.items():
        for name in presets:
            assert (cls_name, name) in listed, (cls_name, name)


# methods.md section 7 (hand-copied): shortlist, mode, windows, descriptors, storage, fusion
LEARNED = {
    # 7.1: top-100, pairwise, up to 500 locals, no fusion (the logit replaces the score)
    "rrt": dict(top_m=100, mode="pairwise", lambda_value=0.0, query_descriptors=500,
                db_descriptors=500, db_storage="float32"),
    # 7.2: top-100, query 600 / database 50, DINOv2 fp (0.55, 0.30), binary (0.35, 0.10)
    "ames": dict(top_m=100, mode="pairwise", lambda_value=0.55, gamma=0.30,
                 query_descriptors=600, db_descriptors=50, db_storage="float32"),
    "ames_binary": dict(top_m=100, mode="pairwise", lambda_value=0.35, gamma=0.10,
                        query_descriptors=600, db_descriptors=50, db_storage="binary"),
    # 7.3: window 100, stride 50 over the top-400, 48 descriptors, alpha 0.5, temp 0.1
    "locore": dict(top_m=400, mode="listwise", window=100, stride=50, lambda_value=0.5,
                   gamma=0.1, query_descriptors=48, db_descriptors=48, db_storage="float32"),
}  # fmt: skip


def test_the_learned_rerankers_presets_hold_the_papers_values():
    assert set(LocalDescriptorReranker.presets()) == set(LEARNED)
    for name, expected in LEARNED.items():
        r = LocalDescriptorReranker.preset(name)
        assert {k: getattr(r, k) for k in expected} == expected, name
        assert r.model is None
    assert "Suma" in LocalDescriptorReranker.presets()["ames"].source
    assert "Xiao" in LocalDescriptorReranker.presets()["locore"].source
    assert "Tan" in LocalDescriptorReranker.presets()["rrt"].source


def _tiny_local(n=24, lq=60, ld=50, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, ld, d, generator=g)
    local = centres[labels] + 0.3 * torch.randn(n, ld, d, generator=g)
    glob = torch.nn.functional.normalize(local.mean(1), dim=1)
    qlocal = torch.cat([local, torch.randn(n, lq - ld, d, generator=g)], dim=1)
    return glob, local, qlocal


def test_the_ames_preset_takes_a_model_and_states_its_bytes():
    from graphrerank.models import matcher_preset

    glob, local, qlocal = _tiny_local()
    torch.manual_seed(0)
    model = matcher_preset("ames", 16).eval()
    for name, storage, nbytes in [
        ("ames", "float32", 50 * 16 * 4),
        ("ames_binary", "binary", 50 * 2),
    ]:
        r = LocalDescriptorReranker.preset(name, model=model, top_m=6)
        assert r.model is model and r.db_storage == storage and r.top_m == 6
        r.fit(glob, local=local)
        assert r.bytes_per_image_ == nbytes  # 50 descriptors, 16 dims: float32 / sign bits
        assert r.local_.data.shape[1] == 50
        out = r.rerank(glob[:3], k=8, local=qlocal[:3])
        assert out.indices.shape == (3, 8)
        # only the top-6 are re-ranked: the rest keep the global order
        first = r.index_.search(glob[:3], 8)[1]
        assert torch.equal(out.indices[:, 6:], first[:, 6:])
        assert torch.equal(out.indices[:, :6].sort(1).values, first[:, :6].sort(1).values)


def test_the_ames_binary_preset_with_itq_codes_saves_and_loads(tmp_path):
    from graphrerank.models import itq_whitening, matcher_preset

    glob, local, qlocal = _tiny_local()
    itq = itq_whitening(local, bits=8, iterations=10)  # 16-d descriptors -> 8-bit codes
    torch.manual_seed(0)
    model = matcher_preset("ames", 16, whitening=itq).eval()
    assert (model.input_dim, model.in_dim) == (16, 8)
    r = LocalDescriptorReranker.preset("ames_binary", model=model, top_m=6).fit(glob, local=local)
    assert r.bytes_per_image_ == 50  # 50 descriptors of 8 bits
    # the stored bits are the signs of the ITQ-rotated projections
    expect = (itq(local[:, :50]) >= 0).numpy()
    import numpy as np

    np.testing.assert_array_equal(
        r.local_.data[..., 0].numpy(), np.packbits(expect, axis=-1)[..., 0]
    )
    out = r.rerank(glob[:3], k=8, local=qlocal[:3])
    back = LocalDescriptorReranker.load(r.save(tmp_path / "ames_binary"))
    again = back.rerank(glob[:3], k=8, local=qlocal[:3])
    assert torch.equal(again.indices, out.indices)
    torch.testing.assert_close(again.scores, out.scores)


def test_the_locore_preset_reranks_list_wise():
    from graphrerank.models import matcher_preset

    glob, local, qlocal = _tiny_local(ld=48, lq=48)
    torch.manual_seed(0)
    model = matcher_preset("locore_base", 16, num_layers=1, hidden=48, heads=12, ffn=96).eval()
    r = LocalDescriptorReranker.preset("locore", model=model, window=10, stride=5)
    assert r._resolved_mode() == "listwise"
    r.fit(glob, local=local)
    assert r.bytes_per_image_ == 48 * 16 * 4
    out = r.rerank(glob[:2], k=24, local=qlocal[:2])  # top_m=400 > 24 images: all re-ranked
    assert out.indices.shape == (2, 24)
    assert all(sorted(row) == list(range(24)) for row in out.indices.tolist())


def test_the_rrt_preset_needs_its_descriptors():
    glob, local, _ = _tiny_local()
    with pytest.raises(ValueError, match="db_descriptors=500 but local holds 50"):
        LocalDescriptorReranker.preset("rrt").fit(glob, local=local)
    r = LocalDescriptorReranker.preset("rrt", db_descriptors=None).fit(glob, local=local)
    assert r.bytes_per_image_ == 50 * 16 * 4
