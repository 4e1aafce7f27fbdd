"""Compact database-side storage: bytes per image, half precision, sign bits."""

import math

import numpy as np
import pytest
import torch

from graphrerank.models import bytes_per_image, compress_local, decode_local


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
