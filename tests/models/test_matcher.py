"""LocalMatcher: shapes, invariances, asymmetric sets, persistence, bad inputs."""

import numpy as np
import pytest
import torch

from graphrerank._io import CorruptFileError, save_arrays
from graphrerank.models import LocalMatcher


def _model(d=6, **kw):
    torch.manual_seed(0)
    cfg = dict(hidden=16, heads=2, num_layers=2, ffn=16, k_intra=2, k_cross=2)
    cfg.update(kw)
    return LocalMatcher(d, **cfg).eval()


def _sets(b=3, lq=5, w=4, lc=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, lq, d, generator=g), torch.randn(b, w, lc, d, generator=g)


def test_shapes_and_device(device):
    model = _model().to(device)
    q, c = _sets()
    out = model.score(q.to(device), c.to(device))
    assert out.shape == (3, 4) and out.device.type == device and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    graph = model.graph(q.to(device), c.to(device))
    torch.testing.assert_close(model(graph).view(3, 4), out)


def test_asymmetric_descriptor_counts():
    model = _model()
    q, c = _sets(lq=9, lc=2)
    assert model.score(q, c).shape == (3, 4)


def test_logits_do_not_depend_on_the_order_of_descriptors():
    model = _model()
    q, c = _sets(b=2, lq=6, w=3, lc=5)
    g = torch.Generator().manual_seed(1)
    qp = q[:, torch.randperm(6, generator=g)]
    cp = c[:, :, torch.randperm(5, generator=g)]
    torch.testing.assert_close(model.score(qp, cp), model.score(q, c), rtol=1e-5, atol=1e-5)


def test_list_logits_do_not_depend_on_the_order_of_candidates():
    model = _model()
    q, c = _sets(b=2, lq=6, w=4, lc=5)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        model.score(q, c[:, perm]), model.score(q, c)[:, perm], rtol=1e-5, atol=1e-5
    )


def test_logits_are_scale_invariant():
    model = _model()
    q, c = _sets()
    torch.testing.assert_close(model.score(3 * q, 0.5 * c), model.score(q, c), rtol=1e-5, atol=1e-5)


def test_positions_are_used_when_asked():
    model = _model(use_positions=True)
    q, c = _sets(b=1, w=1)
    g = torch.Generator().manual_seed(2)
    qp, cp = torch.rand(1, 5, 2, generator=g), torch.rand(1, 1, 4, 2, generator=g)
    a = model.score(q, c, qp, cp)
    b = model.score(q, c, qp.flip(1), cp)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="use_positions=True"):
        model.score(q, c)


def test_save_load_round_trip(tmp_path):
    model = _model(use_positions=False)
    model.metadata["mode"] = "listwise"
    path = model.save(tmp_path / "m", epoch=3)
    assert path.name == "m.npz"
    loaded = LocalMatcher.load(path)
    assert loaded.config == model.config
    assert loaded.metadata == {"mode": "listwise", "epoch": 3}
    q, c = _sets()
    torch.testing.assert_close(loaded.eval().score(q, c), model.score(q, c), rtol=0, atol=0)


def test_load_refuses_corrupt_or_foreign_files(tmp_path):
    model = _model()
    path = model.save(tmp_path / "m.npz")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError):
        LocalMatcher.load(bad)
    other = save_arrays(tmp_path / "other.npz", {"a": np.zeros(2)}, {"format": "x", "version": 1})
    with pytest.raises(CorruptFileError, match="not a 'graphrerank.LocalMatcher'"):
        LocalMatcher.load(other)
    meta = {"format": "graphrerank.LocalMatcher", "version": 1, "config": model.config}
    wrong = save_arrays(
        tmp_path / "wrong.npz", {"embed.weight": np.zeros((2, 2), np.float32)}, meta
    )
    with pytest.raises(CorruptFileError, match="does not match the model"):
        LocalMatcher.load(wrong)
    with pytest.raises(FileNotFoundError):
        LocalMatcher.load(tmp_path / "missing.npz")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"hidden": 10, "heads": 4}, ValueError, "divisible by heads"),
        ({"k_cross": 0}, ValueError, "k_cross must be >= 1"),
        ({"dropout": 1.0}, ValueError, "dropout must be < 1"),
        ({"use_positions": 1}, TypeError, "use_positions must be True or False"),
        ({"num_rbf": 1}, ValueError, "num_rbf must be >= 2"),
    ],
)
def test_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        LocalMatcher(6, **kwargs)


def test_wrong_dimension_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="dimension 5, the model takes 6"):
        model.score(torch.randn(1, 3, 5), torch.randn(1, 1, 3, 5))


def test_global_nodes_change_the_logits_and_are_required():
    model = _model(global_dim=5)
    q, c = _sets(b=2, w=3)
    g = torch.Generator().manual_seed(7)
    qg, cg = torch.randn(2, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    a = model.score(q, c, None, None, qg, cg)
    assert a.shape == (2, 3)
    assert not torch.allclose(a, model.score(q, c, None, None, qg, cg.flip(1)))
    # permuting candidates with their globals permutes the logits
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(
        model.score(q, c[:, perm], None, None, qg, cg[:, perm]), a[:, perm], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="pass global descriptors"):
        model.score(q, c)
    with pytest.raises(ValueError, match="dimension 4, the model takes 5"):
        model.score(q, c, None, None, qg[:, :4], cg[..., :4])
    # a model without global_dim ignores them
    plain = _model()
    torch.testing.assert_close(plain.score(q, c, None, None, qg, cg), plain.score(q, c))
