"""PCAWhitening against scikit-learn's PCA (float64) and hand-worked values."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from graphrerank.nn import PCAWhitening


def _anisotropic(n=200, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -1, d, dtype=torch.float64)
    mix = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ mix.T + 3.0


def _digits():
    return torch.from_numpy(load_digits().data.astype(np.float64))


@pytest.mark.parametrize("data", ["digits", "random"])
def test_matches_sklearn_pca_whiten(data):
    x = _digits() if data == "digits" else _anisotropic()
    dim = 40 if data == "digits" else 8
    ours = PCAWhitening(dim, l2=False).fit(x)
    ref = PCA(n_components=dim, whiten=True, svd_solver="full").fit(x.numpy())
    comps = torch.from_numpy(ref.components_)
    # the same axes up to sign, and the same variances
    cos = (ours.components * comps).sum(1)
    assert torch.allclose(cos.abs(), torch.ones(dim, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(ours.eigenvalues, torch.from_numpy(ref.explained_variance_), rtol=1e-9)
    assert torch.allclose(
        ours.explained_variance_ratio, torch.from_numpy(ref.explained_variance_ratio_), rtol=1e-8
    )
    assert torch.allclose(ours.mean, torch.from_numpy(ref.mean_), atol=1e-12)
    # the same whitened coordinates, up to each component's sign
    y = ours(x)
    y_ref = torch.from_numpy(ref.transform(x.numpy())) * cos.sign()
    assert torch.allclose(y, y_ref, atol=1e-8)
    # plain PCA (no whitening) likewise
    plain = PCAWhitening(dim, whiten=False, l2=False).fit(x)(x)
    ref_plain = PCA(n_components=dim, svd_solver="full").fit(x.numpy()).transform(x.numpy())
    assert torch.allclose(plain, torch.from_numpy(ref_plain) * cos.sign(), atol=1e-8)


def test_whitened_training_covariance_is_identity():
    x = _anisotropic(300, 10)
    y = PCAWhitening(l2=False).fit(x)(x)
    assert torch.allclose(y.mean(0), torch.zeros(10, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(torch.cov(y.T), torch.eye(10, dtype=torch.float64), atol=1e-9)


def test_sign_convention_and_determinism():
    x = _anisotropic()
    a, b = PCAWhitening().fit(x), PCAWhitening().fit(x.flip(0))
    pivot = a.components.abs().argmax(1)
    assert bool((a.components.gather(1, pivot[:, None]) > 0).all())
    # the same data in another order: the same map
    assert torch.allclose(a.components, b.components, atol=1e-10)
    assert torch.equal(PCAWhitening().fit(x).components, a.components)


def _cross(a, b, angle_deg):
    """Four points (+-a, 0), (0, +-b) rotated by ``angle_deg``: covariance eigenvalues
    2a^2/3 and 2b^2/3 along the rotated axes."""
    t = math.radians(angle_deg)
    rot = torch.tensor(
        [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64
    )
    pts = torch.tensor([[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]], dtype=torch.float64)
    return pts @ rot.T, rot


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 1.0])
def test_shrinkage_formula_by_hand(s):
    x, rot = _cross(3.0, 1.0, 30.0)
    pca = PCAWhitening(shrinkage=s, l2=False).fit(x)
    lam = torch.tensor([6.0, 2.0 / 3.0], dtype=torch.float64)  # 2 * 9 / 3 and 2 * 1 / 3
    assert torch.allclose(pca.eigenvalues, lam)
    mean_lam = lam.mean()
    shrunk = (1 - s) * lam + s * mean_lam
    assert torch.allclose(pca.scale, shrunk.rsqrt())
    # the first point lies on the first axis at distance 3, the third on the second at 1
    y = pca(x).abs()
    assert torch.allclose(
        y[0], torch.tensor([3.0 / shrunk[0].sqrt(), 0.0], dtype=torch.float64), atol=1e-12
    )
    assert torch.allclose(
        y[2], torch.tensor([0.0, 1.0 / shrunk[1].sqrt()], dtype=torch.float64), atol=1e-12
    )
    # the axes are the rotated coordinate axes (up to sign)
    assert torch.allclose(pca.components.abs(), rot.T.abs(), atol=1e-12)


def test_power_then_l2():
    x = _anisotropic()
    base = PCAWhitening(6, l2=False).fit(x)
    y = base(x)
    out = PCAWhitening(6, power=0.5).fit(x)(x)
    manual = y.sign() * y.abs().sqrt()
    manual = manual / manual.norm(dim=1, keepdim=True)
    assert torch.allclose(out, manual, atol=1e-12)
    assert torch.allclose(out.norm(dim=1), torch.ones(len(x), dtype=torch.float64))


def test_local_descriptor_shapes_mask_and_list():
    g = torch.Generator().manual_seed(1)
    local = torch.randn(30, 5, 8, generator=g, dtype=torch.float64) * torch.linspace(
        2, 0.5, 8, dtype=torch.float64
    )
    flat = local.reshape(-1, 8)
    pca = PCAWhitening(4).fit(local)
    ref = PCAWhitening(4).fit(flat)
    assert torch.allclose(pca.components, ref.components)
    out = pca(local)
    assert out.shape == (30, 5, 4)
    assert torch.allclose(out.reshape(-1, 4), pca(flat))
    # padded sets: the mask selects the valid vectors; a list of per-image arrays is the same
    mask = torch.arange(5)[None, :] < torch.tensor([5, 3] * 15)[:, None]
    masked = PCAWhitening(4).fit(local, mask=mask)
    listed = PCAWhitening(4).fit([local[i][mask[i]] for i in range(30)])
    direct = PCAWhitening(4).fit(local[mask])
    assert torch.allclose(masked.components, direct.components)
    assert torch.allclose(listed.components, direct.components)
    assert not torch.allclose(masked.components, pca.components)


def test_rank_deficient_training_set():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 20, generator=g, dtype=torch.float64)  # D > N: rank N - 1 = 9
    with pytest.warns(UserWarning, match="span only 9 of 20"):
        full = PCAWhitening().fit(x)
    assert full.out_features == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rot = PCAWhitening(whiten=False, l2=False).fit(x)  # a rotation: all 20 kept
        shrunk = PCAWhitening(shrinkage=0.3).fit(x)
    assert rot.out_features == 20 and shrunk.out_features == 20
    q = torch.randn(3, 20, generator=g, dtype=torch.float64)
    c = q - x.mean(0)
    assert torch.allclose(rot(q) @ rot(q).T, c @ c.T, atol=1e-10)  # distances preserved
    with pytest.raises(ValueError, match="dim=10 is larger than the rank 9"):
        PCAWhitening(10).fit(x)
    with pytest.raises(ValueError, match="dim=21 is larger than the input dimension"):
        PCAWhitening(21).fit(x)
    assert PCAWhitening(10, center=False).fit(x).out_features == 10  # uncentred: rank N


def test_state_dict_round_trip():
    x = _anisotropic()
    pca = PCAWhitening(5, shrinkage=0.2, power=0.7).fit(x)
    buf = io.BytesIO()
    torch.save(pca.state_dict(), buf)
    buf.seek(0)
    fresh = PCAWhitening(5, shrinkage=0.2, power=0.7)
    assert not fresh.is_fitted
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.is_fitted and (fresh.in_features, fresh.out_features) == (12, 5)
    assert torch.equal(fresh(x), pca(x))
    model = torch.nn.Sequential(PCAWhitening(3).fit(x))  # held by a model
    other = torch.nn.Sequential(PCAWhitening(3))
    other.load_state_dict(model.state_dict())
    assert torch.equal(other(x), model(x))


def test_dtypes_and_gradients():
    x = _anisotropic().float()
    pca = PCAWhitening(4).fit(x)
    assert pca(x).dtype == torch.float32
    assert pca(x.double()).dtype == torch.float64
    assert pca(x.half()).dtype == torch.float32
    assert torch.allclose(pca.transform(x.numpy()), pca(x))
    q = x[:3].clone().requires_grad_(True)
    pca(q).sum().backward()
    assert q.grad is not None and q.grad.shape == q.shape


def test_errors():
    x = _anisotropic()
    with pytest.raises(ValueError, match="not fitted"):
        PCAWhitening()(x)
    pca = PCAWhitening(3).fit(x)
    with pytest.raises(ValueError, match="last dimension 12"):
        pca(torch.zeros(2, 11, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating point"):
        pca(torch.zeros(2, 12, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        pca([[0.0] * 12])
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        PCAWhitening().fit(bad)
    with pytest.raises(ValueError, match="at least 2 vectors"):
        PCAWhitening().fit(x[:1])
    with pytest.raises(ValueError, match="shape"):
        PCAWhitening().fit(x[0])
    with pytest.raises(TypeError, match="floating point"):
        PCAWhitening().fit(torch.ones(5, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="no variance"):
        PCAWhitening().fit(torch.ones(5, 3))
    with pytest.raises(TypeError, match="mask must be boolean"):
        PCAWhitening().fit(x, mask=torch.ones(len(x)))
    with pytest.raises(ValueError, match="mask must have shape"):
        PCAWhitening().fit(x, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x\[1\] must be"):
        PCAWhitening().fit([x, x[:, :5]])
    with pytest.raises(ValueError, match="shrinkage"):
        PCAWhitening(shrinkage=1.5)
    with pytest.raises(ValueError, match="power"):
        PCAWhitening(power=0.0)
    with pytest.raises(ValueError, match="dim"):
        PCAWhitening(0)
    with pytest.raises(TypeError, match="whiten must be True or False"):
        PCAWhitening(whiten=1)
