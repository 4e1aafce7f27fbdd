"""Compact database-side storage: bytes per image, half precision, sign bits."""

import math

import numpy as np
import pytest
import torch

from graphrerank.models import (
    bytes_per_image,
    compress_local,
    decode_local,
    itq_rotation,
    itq_whitening,
)


@pytest.mark.parametrize(
    ("n", "d", "storage", "expected"),
    [(64, 128, "float32", 32768), (16, 128, "float16", 4096), (16, 128, "binary", 256),
     (3, 12, "binary", 6), (1, 1, "float32", 4)],
)  # fmt: skip
def test_bytes_per_image(n, d, storage, expected):
    assert bytes_per_image(n, d, storage) == expected


def test_stored_sizes_match_the_stated_bytes(device):
    x = torch.randn(5, 10, 24).to(device)
    for storage in ("float32", "float16", "binary"):
        s = compress_local(x, num_descriptors=7, storage=storage)
        assert s.data.device.type == device
        per_image = s.data[0].numel() * s.data.element_size()
        assert per_image == bytes_per_image(7, 24, storage)


def test_float16_keeps_the_first_descriptors():
    x = torch.randn(3, 6, 8)
    s = compress_local(x, num_descriptors=4, storage="float16")
    assert s.data.dtype == torch.float16
    torch.testing.assert_close(decode_local(s), x[:, :4].half().float())


@pytest.mark.parametrize("dim", [8, 13, 128])
def test_binary_is_numpy_packbits_and_decodes_to_scaled_signs(dim):
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(4, 5, dim, generator=g)
    s = compress_local(x, storage="binary")
    assert s.data.dtype == torch.uint8 and s.data.shape == (4, 5, math.ceil(dim / 8))
    np.testing.assert_array_equal(s.data.numpy(), np.packbits(x.numpy() >= 0, axis=-1))
    expected = torch.where(x >= 0, 1.0, -1.0) / math.sqrt(dim)
    torch.testing.assert_close(decode_local(s), expected)
    assert torch.allclose(decode_local(s).norm(dim=-1), torch.ones(4, 5))


def test_bad_storage_settings():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="storage must be one of"):
        compress_local(x, storage="int8")
    with pytest.raises(ValueError, match="num_descriptors must be <= 3"):
        compress_local(x, num_descriptors=4)
    with pytest.raises(ValueError, match="num_descriptors must be >= 1"):
        bytes_per_image(0, 4)


# ---------------------------------------------------------------------- ITQ (AMES's codes)
def _itq_float64(v, r, iterations):
    """Gong and Lazebnik's iterations transcribed in NumPy float64: B = sign(VR) (+1 at 0),
    R = S Sh^T from the SVD of V^T B = S Omega Sh^T; the loss ||B - VR||^2 after each."""
    vr = v @ r
    b = np.where(vr >= 0, 1.0, -1.0)
    losses = [((b - vr) ** 2).sum()]
    for _ in range(iterations):
        s, _, sh_t = np.linalg.svd(v.T @ b)
        r = s @ sh_t
        vr = v @ r
        b = np.where(vr >= 0, 1.0, -1.0)
        losses.append(((b - vr) ** 2).sum())
    return r, np.array(losses)


def test_itq_on_a_hand_worked_case():
    # four points on the axes at distance sqrt(2); from a 30 degree rotation the codes are
    # (1,-1), (-1,1), (1,1), (-1,-1), V^T B = 2 sqrt(2) [[1, -1], [1, 1]] = 4 x (45 degrees),
    # so R is the 45 degree rotation and V R = B exactly: loss 0 after one iteration. The
    # initial loss: each row (1 - sqrt(2) cos 30)^2 + (1 - sqrt(2) sin 30)^2
    # = 4 - 2 sqrt(2) (cos 30 + sin 30), four rows.
    r2 = math.sqrt(2.0)
    v = torch.tensor([[r2, 0.0], [-r2, 0.0], [0.0, r2], [0.0, -r2]], dtype=torch.float64)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    r30 = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    out = itq_rotation(v, iterations=3, init=r30)
    r45 = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64) / r2
    torch.testing.assert_close(out.rotation, r45)
    first = 4 * (4 - 2 * r2 * (c + s))
    torch.testing.assert_close(
        out.losses, torch.tensor([first, 0.0, 0.0, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        v @ out.rotation, torch.tensor([[1.0, -1], [-1, 1], [1, 1], [-1, -1]], dtype=torch.float64)
    )


def test_itq_matches_a_float64_transcription_and_decreases_the_loss():
    g = np.random.default_rng(0)
    x = g.standard_normal((300, 6)) @ g.standard_normal((6, 6))
    v = x - x.mean(0)
    q, _ = np.linalg.qr(g.standard_normal((6, 6)))
    r_ref, loss_ref = _itq_float64(v, q, 30)
    out = itq_rotation(torch.from_numpy(v), iterations=30, init=torch.from_numpy(q))
    np.testing.assert_allclose(out.rotation.numpy(), r_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out.losses.numpy(), loss_ref, rtol=1e-9)
    assert np.all(np.diff(out.losses.numpy()) <= 1e-9)  # each step minimises exactly
    assert out.losses[-1] < out.losses[0]
    np.testing.assert_allclose(out.rotation.T @ out.rotation, np.eye(6), atol=1e-12)
    # the random start is orthogonal, reproducible from its seed, and differs between seeds
    a, b = itq_rotation(v, iterations=0, seed=1), itq_rotation(v, iterations=0, seed=1)
    torch.testing.assert_close(a.rotation, b.rotation)
    np.testing.assert_allclose(a.rotation.T @ a.rotation, np.eye(6), atol=1e-12)
    assert not torch.allclose(a.rotation, itq_rotation(v, iterations=0, seed=2).rotation)


def test_itq_whitening_folds_pca_and_rotation_into_one_map(tmp_path):
    from graphrerank.models import LocalMatcher
    from graphrerank.nn import PCAWhitening

    g = torch.Generator().manual_seed(0)
    local = torch.randn(40, 10, 12, generator=g) @ torch.randn(12, 12, generator=g)
    itq = itq_whitening(local, bits=8, iterations=20, seed=3)
    assert isinstance(itq, PCAWhitening) and (itq.in_features, itq.out_features) == (12, 8)
    # float64 transcription: PCA (centred, not whitened) to 8 dims, then ITQ from the same seed
    x = local.reshape(-1, 12).double().numpy()
    mu = x.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(x.T))
    u = evecs[:, ::-1][:, :8]
    u = u * np.sign(u[np.abs(u).argmax(0), range(8)])  # PCAWhitening's sign convention
    r0 = itq_rotation(torch.zeros(1, 8), iterations=0, seed=3).rotation.numpy()
    r, _ = _itq_float64((x - mu) @ u, r0, 20)
    y = (x - mu) @ u @ r
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    np.testing.assert_allclose(itq(local.double()).reshape(-1, 8).numpy(), y, atol=1e-8)
    # the codes are the signs of the rotated projections: bits of the binary storage
    codes = compress_local(itq(local), storage="binary")
    np.testing.assert_array_equal(codes.data.reshape(-1, 1).numpy(), np.packbits(y >= 0, axis=1))
    # the rotated components' variances are diag(R^T Lambda R) and sum to the kept variance
    lam = evals[::-1][:8]
    np.testing.assert_allclose(itq.eigenvalues.numpy(), np.einsum("ij,i,ij->j", r, lam, r))
    np.testing.assert_allclose(itq.eigenvalues.sum().item(), lam.sum())
    # saved and loaded with a model as its whitening: the same map
    model = LocalMatcher(8, hidden=8, heads=2, num_layers=1, ffn=8, whitening=itq)
    back = LocalMatcher.load(model.save(tmp_path / "m"))
    torch.testing.assert_close(back.whitening(local), itq(local))


def test_itq_bad_input():
    with pytest.raises(ValueError, match="projected must be"):
        itq_rotation(torch.zeros(3))
    with pytest.raises(ValueError, match="init must be orthogonal"):
        itq_rotation(torch.randn(5, 2), init=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"init must be \(2, 2\)"):
        itq_rotation(torch.randn(5, 2), init=torch.eye(3))
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        itq_rotation(torch.randn(5, 2), iterations=-1)
    with pytest.raises(ValueError, match="NaN"):
        itq_rotation(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="dim=16 is larger than the input dimension"):
        itq_whitening(torch.randn(50, 4), bits=16)
    with pytest.raises(ValueError, match="bits must be >= 1"):
        itq_whitening(torch.randn(50, 4), bits=0)
