"""LocalDescriptorReranker: training-free similarities, input conversion, ``initial`` checks."""

import numpy as np
import pytest
import torch

from graphrerank._io import load_arrays, save_arrays
from graphrerank.metrics import class_map
from graphrerank.models import SIMILARITIES, LocalMatcher, local_similarity
from graphrerank.rerankers import LocalDescriptorReranker
from graphrerank.rerankers.learned import _VERSION, FORMAT


def _data(n=12, length=5, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=1)
    return x, torch.randn(n, length, dim, generator=g)


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_similarity_setting_ranks_the_shortlist_by_that_similarity(kind):
    x, local = _data()
    r = LocalDescriptorReranker(similarity=kind, top_m=12, lambda_value=0.0).fit(x, local=local)
    sl = r.shortlist_logits(x[:3], 12, local=local[:3])
    for q in range(3):
        cand = local[sl.indices[q]].unsqueeze(0)
        ref = local_similarity(local[q : q + 1].double(), cand.double(), kind)[0]
        torch.testing.assert_close(sl.logits[q].double(), ref, atol=1e-6, rtol=0)
    out = r.rerank(x[:3], 12, local=local[:3])
    fused = torch.sigmoid(sl.logits).gather(
        1, sl.logits.argsort(dim=1, descending=True, stable=True)
    )
    torch.testing.assert_close(out.scores, fused)


def test_symmetric_chamfer_beats_one_sided_on_clutter():
    # images = own class parts + shared clutter: the one-sided chamfer of a cluttered query
    # rewards any image with clutter, the database->query direction does not
    g = torch.Generator().manual_seed(1)
    protos, clutter = torch.randn(4, 6, 16, generator=g), torch.randn(3, 16, generator=g)
    labels = torch.arange(4).repeat_interleave(8)
    n = labels.numel()
    few = protos[labels, :2] + 0.3 * torch.randn(n, 2, 16, generator=g)
    noise = clutter[torch.randint(3, (n, 6), generator=g)] + 0.05 * torch.randn(
        n, 6, 16, generator=g
    )
    local = torch.cat([few, noise], 1)
    x = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)  # useless global
    maps = {}
    for kind in ("chamfer", "chamfer_sym"):
        r = LocalDescriptorReranker(similarity=kind, top_m=n, lambda_value=0.0).fit(x, local=local)
        maps[kind] = class_map(r.rerank(None, n).indices, labels, leave_one_out=True)
    assert maps["chamfer_sym"] > maps["chamfer"]


@pytest.mark.parametrize("convert", ["float64", "float16", "list", "numpy64"])
def test_any_float_local_descriptors_are_used_as_float32(convert):
    x, local = _data()
    model = LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8).eval()

    def conv(t):
        return {
            "float64": lambda: t.double(),
            "float16": lambda: t.half(),
            "list": lambda: t.tolist(),
            "numpy64": lambda: t.double().numpy(),
        }[convert]()

    for m in (None, model):
        ref = LocalDescriptorReranker(model=m, top_m=6).fit(x, local=local)
        r = LocalDescriptorReranker(model=m, top_m=6).fit(x, local=conv(local))
        a = ref.rerank(x[:3], 6, local=local[:3])
        b = r.rerank(x[:3], 6, local=conv(local[:3]))
        tol = 1e-2 if convert == "float16" else 1e-6
        torch.testing.assert_close(a.scores, b.scores, atol=tol, rtol=0)
        if convert != "float16":
            assert torch.equal(a.indices, b.indices)


def test_non_float_local_descriptors_are_refused():
    x, local = _data()
    with pytest.raises(TypeError, match="local must hold floating point"):
        LocalDescriptorReranker().fit(x, local=local.long())
    with pytest.raises(TypeError, match="local"):
        LocalDescriptorReranker().fit(x, local=[["a"]])
    with pytest.raises(ValueError, match="too large for float32"):
        LocalDescriptorReranker().fit(x, local=local.double() * 1e300)


def test_initial_with_nan_or_duplicates_is_refused():
    x, local = _data()
    r = LocalDescriptorReranker(top_m=3).fit(x, local=local)
    good = (torch.tensor([[0.9, 0.5, float("-inf")]]), torch.tensor([[0, 1, -1]]))
    assert r.rerank(x[:1], 3, local=local[:1], initial=good).indices[0, 2] == -1
    nan = (torch.tensor([[0.9, float("nan"), 0.5]]), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="initial scores contain NaN"):
        r.rerank(x[:1], 3, local=local[:1], initial=nan)
    dup = (torch.tensor([[0.9, 0.8, 0.5], [0.9, 0.8, 0.5]]), torch.tensor([[0, 1, 2], [3, 4, 3]]))
    with pytest.raises(ValueError, match="twice in row 1"):
        r.rerank(x[:2], 3, local=local[:2], initial=dup)
    pad = (torch.tensor([[0.9, float("-inf"), float("-inf")]]), torch.tensor([[0, -1, -1]]))
    r.rerank(x[:1], 3, local=local[:1], initial=pad)  # repeated -1 padding is fine


def test_similarity_is_saved_and_old_files_load(tmp_path):
    x, local = _data()
    r = LocalDescriptorReranker(similarity="mnn", top_m=6).fit(x, local=local)
    path = r.save(tmp_path / "r.npz")
    back = LocalDescriptorReranker.load(path)
    assert back.similarity == "mnn"
    a, b = r.rerank(x[:2], 6, local=local[:2]), back.rerank(x[:2], 6, local=local[:2])
    torch.testing.assert_close(a.scores, b.scores)
    # a file written before the setting existed loads with the default (one-sided chamfer)
    arrays, meta = load_arrays(path, format=FORMAT, version=_VERSION)
    del meta["settings"]["similarity"]
    old = save_arrays(tmp_path / "old.npz", {k: np.asarray(v) for k, v in arrays.items()}, meta)
    assert LocalDescriptorReranker.load(old).similarity == "chamfer"


def test_bad_similarity_setting():
    x, local = _data()
    with pytest.raises(ValueError, match="similarity"):
        LocalDescriptorReranker(similarity="cosine").fit(x, local=local)


def test_late_model_database_encoding_is_cached_and_refreshed_when_weights_change(monkeypatch):
    import graphrerank.rerankers.learned as learned

    x, local = _data(n=10)
    torch.manual_seed(3)
    model = LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8, global_dim=6).eval()
    assert model.config["design"] == "late"
    r = LocalDescriptorReranker(model=model, top_m=6).fit(x, local=local)
    first = r.shortlist_logits(x[:3], 6, local=local[:3])
    enc = r._database_encoded()
    assert enc is r._database_encoded()  # cached
    # every logit is the model's score of that pair
    with torch.no_grad():
        for q in range(3):
            for c in range(6):
                i = int(first.indices[q, c])
                ref = model.score(local[q : q + 1], local[i].view(1, 1, 5, 8), None, None,
                                  x[q : q + 1], x[i].view(1, 1, 6))  # fmt: skip
                assert float(first.logits[q, c]) == pytest.approx(float(ref), abs=1e-5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)  # in place, as an optimiser step
    again = r.shortlist_logits(x[:3], 6, local=local[:3])
    assert r._database_encoded() is not enc
    monkeypatch.setattr(learned, "ENCODE_CACHE_BYTES", 0)  # no cache: shortlists encoded per call
    assert r._database_encoded() is None
    fresh = r.shortlist_logits(x[:3], 6, local=local[:3])
    torch.testing.assert_close(again.logits, fresh.logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(again.logits, first.logits)


def test_late_model_cache_is_refreshed_by_loaded_or_replaced_weights():
    # local descriptors only: the reranker's logits come from match's inference pass
    x, local = _data(n=10)
    torch.manual_seed(4)
    model = LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8).eval()
    other = LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8).eval()
    r = LocalDescriptorReranker(model=model, top_m=6).fit(x, local=local)
    first = r.shortlist_logits(x[:3], 6, local=local[:3])
    enc = r._database_encoded()
    with torch.no_grad():
        for q in range(3):
            for c in range(6):
                i = int(first.indices[q, c])
                ref = model(model.graph(local[q : q + 1], local[i].view(1, 1, 5, 8)))
                assert float(first.logits[q, c]) == pytest.approx(float(ref), abs=1e-5)
    model.load_state_dict(other.state_dict())
    assert r._database_encoded() is not enc
    enc = r._database_encoded()
    model.bias = torch.nn.Parameter(torch.ones(()))  # a replaced parameter
    assert r._database_encoded() is not enc
    again = r.shortlist_logits(x[:3], 6, local=local[:3])
    ref = LocalDescriptorReranker(model=model, top_m=6).fit(x, local=local)
    torch.testing.assert_close(again.logits, ref.shortlist_logits(x[:3], 6, local=local[:3]).logits)
