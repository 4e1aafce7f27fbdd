"""Model presets: the papers' sizes as LocalMatcher configurations."""

from __future__ import annotations

import pytest
import torch

from graphrerank.models import (
    MATCHER_PRESETS,
    LocalMatcher,
    MatcherPreset,
    bytes_per_image,
    matcher_preset,
)
from graphrerank.nn import PCAWhitening

# methods.md section 7 (hand-copied): layers, width, heads, feed-forward width
PAPER_SIZES = {
    "rrt": (6, 128, 4, 1024),  # 7.1: 6-layer encoder, d=128, 4 heads, FFN 1024
    "ames": (5, 128, 2, 1024),  # 7.2: 5 layers, 2 heads, d=128, FFN 1024
    # 7.3: Longformer-base (allenai/longformer-base-4096: 12 layers, 768, 12 heads, 3072)
    "locore_base": (12, 768, 12, 3072),
}
INPUT_DIM = {"rrt": 128, "ames": 768, "locore_base": 768}


def test_the_presets_are_the_papers():
    assert set(MATCHER_PRESETS) == set(PAPER_SIZES)
    for name, p in MATCHER_PRESETS.items():
        assert isinstance(p, MatcherPreset)
        assert len(p.source) > 40 and len(p.notes) > 40, name
        assert "in_dim" not in p.settings


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_each_preset_builds_with_the_papers_sizes(name):
    layers, hidden, heads, ffn = PAPER_SIZES[name]
    torch.manual_seed(0)
    model = matcher_preset(name, INPUT_DIM[name])
    assert isinstance(model, LocalMatcher)
    c = model.config
    assert (c["num_layers"], c["hidden"], c["heads"], c["ffn"]) == (layers, hidden, heads, ffn)
    assert c["in_dim"] == INPUT_DIM[name] and c["design"] == "joint"
    assert c["dropout"] == 0.0  # RRT: dropout 0 (the others publish none: the default)
    assert model.metadata == {"preset": name}
    # the layers themselves, not only the recorded configuration
    assert len(model.blocks) == layers
    block = model.blocks[0]
    assert block.intra.heads == heads and block.cross.heads == heads
    assert block.intra.out_channels * heads == hidden
    assert tuple(block.ffn[0].weight.shape) == (ffn, hidden)
    assert tuple(block.ffn[2].weight.shape) == (hidden, ffn)
    assert tuple(model.embed.weight.shape) == (hidden, INPUT_DIM[name])


def test_rrt_has_its_global_tokens():
    # 7.1: DELG global (2048-d) remapped to 128, one global token per image
    m = matcher_preset("rrt", 128)
    assert m.config["global_dim"] == 2048
    assert tuple(m.embed_global.weight.shape) == (128, 2048)
    assert matcher_preset("ames", 128).config["global_dim"] is None
    assert matcher_preset("rrt", 128, global_dim=None).embed_global is None


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_a_forward_pass_on_a_tiny_input(name):
    torch.manual_seed(0)
    d = INPUT_DIM[name]
    model = matcher_preset(name, d).eval()
    g = torch.Generator().manual_seed(1)
    q, c = torch.randn(2, 5, d, generator=g), torch.randn(2, 3, 4, d, generator=g)
    kw = {}
    if model.config["global_dim"] is not None:
        kw = dict(
            query_global=torch.randn(2, 2048, generator=g),
            candidate_global=torch.randn(2, 3, 2048, generator=g),
        )
    with torch.no_grad():
        logits = model.score(q, c, **kw)
        assert logits.shape == (2, 3) and bool(torch.isfinite(logits).all())
        # the sparse graph pass reads the same network
        one = {}
        if kw:
            one = dict(
                query_global=kw["query_global"][:1], candidate_global=kw["candidate_global"][:1]
            )
        graph = model.graph(q[:1], c[:1], **one)
        torch.testing.assert_close(model(graph), logits[0], atol=1e-4, rtol=1e-4)


def test_overrides_and_whitening():
    m = matcher_preset("ames", 64, design="late", k_cross=8)
    assert (m.config["design"], m.config["k_cross"], m.config["num_layers"]) == ("late", 8, 5)
    # AMES's binary codes: 768-d DINOv2 locals reduced to 128 dimensions (128 bits) first
    x = torch.randn(400, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    white = PCAWhitening(8).fit(x.float())
    m = matcher_preset("ames", 24, whitening=white)
    assert (m.in_dim, m.input_dim) == (8, 24)
    with pytest.raises(ValueError, match="whitening takes 24-d descriptors but input_dim is 16"):
        matcher_preset("ames", 16, whitening=white)


def test_bytes_per_image_of_the_papers_settings():
    # AMES: 50 database descriptors; binary 128-bit codes -> 50 * 16 = 800 bytes ("about 1 KB")
    assert bytes_per_image(50, 128, "binary") == 800
    # AMES full precision, 768-d DINOv2: 50 * 768 * 4 and * 2 bytes
    assert bytes_per_image(50, 768, "float32") == 153_600
    assert bytes_per_image(50, 768, "float16") == 76_800
    # RRT: up to 500 DELG locals of 128 dimensions
    assert bytes_per_image(500, 128, "float32") == 256_000
    # LOCORE: 48 DINOv2 locals of 768 dimensions
    assert bytes_per_image(48, 768, "float32") == 147_456


def test_unknown_and_bad_names():
    with pytest.raises(
        ValueError, match="no LocalMatcher preset 'sg'; the presets: 'ames', 'locore_base', 'rrt'"
    ):
        matcher_preset("sg", 128)
    with pytest.raises(TypeError, match="name must be a preset name"):
        matcher_preset(3, 128)
    with pytest.raises(TypeError, match="input_dim, not in_dim"):
        matcher_preset("ames", 128, in_dim=64)
    with pytest.raises(TypeError):
        matcher_preset("ames", 128, layers=3)  # not a LocalMatcher argument
    with pytest.raises(ValueError, match="hidden=128 must be divisible by heads=3"):
        matcher_preset("ames", 128, heads=3)


def test_local_matcher_preset_is_matcher_preset():
    from graphrerank.models import LocalMatcher, matcher_preset

    a, b = LocalMatcher.preset("ames", 32), matcher_preset("ames", 32)
    assert a.config == b.config
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    with pytest.raises(ValueError, match="rrt"):
        LocalMatcher.preset("nope", 32)
