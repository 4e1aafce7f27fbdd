"""Local-descriptor preprocessing: PCA-whitening learned on training locals, saved with the
model or the re-ranker, applied at fit and rerank."""

import pytest
import torch

from graphrerank.models import LocalMatcher, train_matcher
from graphrerank.nn import PCAWhitening
from graphrerank.rerankers import LocalDescriptorReranker


def _data(n=12, length=6, raw=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    protos = torch.randn(3, length, raw, generator=g)
    local = protos[labels] + 0.5 * torch.randn(n, length, raw, generator=g)
    glob = torch.nn.functional.normalize(local.mean(1), dim=1)
    return glob, local, labels


def _white(local, dim=8):
    return PCAWhitening(dim, shrinkage=0.5).fit(local)


def _model(white, **kw):
    torch.manual_seed(0)
    return LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8, whitening=white, **kw).eval()


def test_matcher_preprocesses_and_saves_its_whitening(tmp_path):
    glob, local, _ = _data()
    white = _white(local)
    model = _model(white)
    assert (model.input_dim, model.in_dim) == (20, 8)
    torch.testing.assert_close(model.preprocess(local), white(local))
    path = model.save(tmp_path / "m.npz")
    back = LocalMatcher.load(path)
    assert back.whitening is not None and back.whitening.shrinkage == 0.5
    torch.testing.assert_close(back.preprocess(local), model.preprocess(local))
    x = model.preprocess(local)
    torch.testing.assert_close(back.score(x[:2], x[2:6].view(2, 2, 6, 8)),
                               model.score(x[:2], x[2:6].view(2, 2, 6, 8)))  # fmt: skip
    plain = LocalMatcher.load(_model(None).save(tmp_path / "plain.npz"))  # no preprocessing
    assert plain.whitening is None and plain.input_dim == 8


def test_train_matcher_takes_raw_descriptors_through_the_whitening():
    glob, local, labels = _data()
    white = _white(local)
    a, b = _model(white), _model(None)  # the same initial weights
    kw = dict(epochs=2, positives=1, negatives=1, shortlist=4, progress=False)
    ra = train_matcher(a, glob, local, labels, **kw)  # raw descriptors, whitened inside
    rb = train_matcher(b, glob, white(local), labels, **kw)  # whitened by hand
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history])
    with pytest.raises(ValueError, match="local has dimension 8, the model takes 20"):
        train_matcher(a, glob, a.preprocess(local), labels, epochs=1, progress=False)


def test_reranker_whitening_equals_whitening_by_hand(tmp_path):
    glob, local, _ = _data()
    white = _white(local)
    r = LocalDescriptorReranker(similarity="chamfer_sym", whitening=white, top_m=8)
    r.fit(glob, local=local)
    assert r.local_.dim == 8 and r.bytes_per_image_ == 6 * 8 * 4
    by_hand = LocalDescriptorReranker(similarity="chamfer_sym", top_m=8)
    by_hand.fit(glob, local=white(local))
    out = r.rerank(glob[:4], 8, local=local[:4])
    ref = by_hand.rerank(glob[:4], 8, local=white(local[:4]))
    torch.testing.assert_close(out.scores, ref.scores)
    assert torch.equal(out.indices, ref.indices)
    back = LocalDescriptorReranker.load(r.save(tmp_path / "r.npz"))
    assert back.whitening is not None and back.whitening.out_features == 8
    again = back.rerank(glob[:4], 8, local=local[:4])
    torch.testing.assert_close(again.scores, out.scores)
    with pytest.raises(ValueError, match="dimension 8, expected 20"):
        r.rerank(glob[:1], 8, local=white(local[:1]))  # queries must be raw too


def test_reranker_with_a_whitening_model_saves_and_reloads(tmp_path):
    glob, local, _ = _data()
    model = _model(_white(local), global_dim=20)
    r = LocalDescriptorReranker(model=model, top_m=6).fit(glob, local=local)
    out = r.rerank(glob[:3], 6, local=local[:3])
    back = LocalDescriptorReranker.load(r.save(tmp_path / "r.npz"))
    assert back.model.whitening is not None
    torch.testing.assert_close(back.rerank(glob[:3], 6, local=local[:3]).scores, out.scores)
    # all-vs-all with the stored (whitened) descriptors, or raw ones given again
    torch.testing.assert_close(
        back.rerank(None, 6).scores, back.rerank(None, 6, local=local).scores
    )


def test_whitening_errors():
    glob, local, _ = _data()
    with pytest.raises(ValueError, match="must be fitted"):
        LocalMatcher(8, whitening=PCAWhitening(8))
    with pytest.raises(ValueError, match="outputs 8-d descriptors but in_dim is 6"):
        LocalMatcher(6, whitening=_white(local))
    with pytest.raises(TypeError, match="whitening must be"):
        LocalMatcher(8, whitening="pca")
    with pytest.raises(ValueError, match="must be fitted"):
        LocalDescriptorReranker(whitening=PCAWhitening(8)).fit(glob, local=local)
    both = LocalDescriptorReranker(model=_model(_white(local)), whitening=_white(local))
    with pytest.raises(ValueError, match="brings its own whitening"):
        both.fit(glob, local=local)
    with pytest.raises(TypeError, match="whitening must be"):
        LocalDescriptorReranker(whitening="pca").fit(glob, local=local)
