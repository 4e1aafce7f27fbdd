import numpy as np
import pytest
import torch

from graphrerank.diffusion import gmp_weights, pool_regions

from . import reference as ref


def test_gmp_weights_match_per_image_solves(device):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((23, 6))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = rng.integers(0, 5, 23)
    ids[:5] = np.arange(5)  # every image has a region
    for lam in (1.0, 0.3):
        w = gmp_weights(torch.from_numpy(v).to(device), torch.from_numpy(ids).to(device), lam=lam)
        np.testing.assert_allclose(w.cpu().numpy(), ref.gmp_weights(v, ids, lam), rtol=1e-10)


def test_gmp_makes_the_pooled_descriptor_equally_similar_to_every_region():
    # with lam -> 0 the pooled descriptor V b has inner product 1 with every region
    rng = np.random.default_rng(1)
    v = rng.standard_normal((4, 6))
    w = gmp_weights(torch.from_numpy(v), torch.zeros(4, dtype=torch.long), lam=1e-9)
    pooled = (torch.from_numpy(v) * w[:, None]).sum(0)
    torch.testing.assert_close(
        torch.from_numpy(v) @ pooled, torch.ones(4, dtype=torch.float64), rtol=1e-6, atol=1e-6
    )


def test_gmp_weights_in_small_batches_equal_one_batch():
    rng = np.random.default_rng(2)
    v = torch.from_numpy(rng.standard_normal((40, 5)))
    ids = torch.arange(40) % 9
    torch.testing.assert_close(gmp_weights(v, ids, block_bytes=1), gmp_weights(v, ids))


def test_pool_regions_hand_worked():
    f = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 3.0]])
    ids = torch.tensor([1, 0, 1])
    torch.testing.assert_close(pool_regions(f, ids), torch.tensor([[2.0, 1.0], [5.0, 3.0]]))
    w = torch.tensor([0.5, 2.0, 0.25])
    torch.testing.assert_close(
        pool_regions(f, ids, num_images=3, weights=w),
        torch.tensor([[4.0, 2.0], [1.5, 0.75], [0.0, 0.0]]),
    )


def test_validation():
    with pytest.raises(TypeError, match="image_ids must be an int64 tensor"):
        gmp_weights(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="image_ids must have shape"):
        pool_regions(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="lam must be > 0"):
        gmp_weights(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), lam=0.0)
