r"""The diffusion system matrix :math:`I - \alpha S` of ``graphrerank.diffusion.operators``
against dense numpy and SciPy."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.data import Data

from graphrerank.diffusion.operators import diffusion_operator, laplacian_alpha, shifted_identity
from graphrerank.graph.sparse import quiet_sparse_warnings

DTYPES = [torch.float32, torch.float64]
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def random_edges(seed, n, e, self_loops=True, duplicates=True, isolated=()):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, e)
    dst = rng.integers(0, n, e)
    if not self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    if duplicates and len(src) > 2:
        src, dst = np.concatenate([src, src[:2]]), np.concatenate([dst, dst[:2]])
    for v in isolated:
        keep = (src != v) & (dst != v)
        src, dst = src[keep], dst[keep]
    w = rng.uniform(0.1, 1.0, len(src))
    return src, dst, w


def dense_adjacency(src, dst, w, n):
    """:math:`A_{ij}` = summed weight of the edges j -> i."""
    a = np.zeros((n, n))
    np.add.at(a, (dst, src), w)
    return a


def sym_normalized(a):
    deg = a.sum(1)  # edges into i
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    return inv[:, None] * a * inv[None, :]


def check_csr_structure(t, n):
    """int32 parts, columns strictly increasing within rows, the diagonal stored."""
    assert t.layout == torch.sparse_csr and tuple(t.shape) == (n, n)
    assert t.crow_indices().dtype == torch.int32
    assert t.col_indices().dtype == torch.int32
    crow = t.crow_indices().cpu().numpy()
    col = t.col_indices().cpu().numpy()
    for i in range(n):
        c = col[crow[i] : crow[i + 1]]
        assert np.all(np.diff(c) > 0)
        assert i in c


# ----------------------------------------------------------------------------- shifted_identity
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.99])
@pytest.mark.parametrize(("n", "e"), [(1, 1), (1, 0), (5, 12), (9, 30)])
def test_shifted_identity_equals_scipy(n, e, alpha, dtype, device):
    rng = np.random.default_rng(n * 100 + e)
    rows, cols = rng.integers(0, n, e), rng.integers(0, n, e)
    if e > 2:
        rows[-2:], cols[-2:] = rows[0], cols[0]  # duplicates: summed
    vals = rng.uniform(0.1, 1.0, e)
    out = shifted_identity(
        torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device),
        torch.from_numpy(vals).to(device, dtype), n, alpha,
    )  # fmt: skip
    s = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).toarray()  # sums duplicates
    expected = np.eye(n) - alpha * s
    check_csr_structure(out, n)
    assert out.values().dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    np.testing.assert_allclose(out.to_dense().cpu().numpy(), expected, rtol=tol, atol=tol)


def test_shifted_identity_by_hand():
    # a self-loop adds to the diagonal; a duplicate adds to its entry
    out = shifted_identity(
        torch.tensor([0, 1, 1, 2]), torch.tensor([0, 2, 2, 0]),
        torch.tensor([0.5, 0.25, 0.25, 1.0], dtype=torch.float64), 3, 0.5,
    )  # fmt: skip
    np.testing.assert_array_equal(
        out.to_dense().numpy(), [[0.75, 0, 0], [0, 1, -0.25], [-0.5, 0, 1]]
    )


# ----------------------------------------------------------------------------- diffusion_operator
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.99])
@pytest.mark.parametrize("seed", [0, 1])
def test_diffusion_operator_of_data_equals_dense(seed, alpha, dtype, device):
    n = 10
    src, dst, w = random_edges(seed, n, 25, isolated=(4,))
    g = Data(
        edge_index=torch.from_numpy(np.stack([src, dst])).to(device),
        edge_weight=torch.from_numpy(w).to(device, dtype),
        num_nodes=n,
    )
    out = diffusion_operator(g, alpha)
    expected = np.eye(n) - alpha * dense_adjacency(src, dst, w, n)  # S_ij: edge j -> i
    check_csr_structure(out, n)
    assert out.device.type == device
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    np.testing.assert_allclose(out.to_dense().cpu().numpy(), expected, rtol=tol, atol=tol)
    np.testing.assert_array_equal(out.to_dense().cpu().numpy()[4], np.eye(n)[4])


@pytest.mark.parametrize("layout", ["dense", "coo", "csr"])
def test_diffusion_operator_of_tensor_equals_dense(layout, device):
    rng = np.random.default_rng(3)
    n = 8
    s = np.where(rng.random((n, n)) < 0.3, rng.uniform(0.1, 1.0, (n, n)), 0.0)
    t = torch.from_numpy(s).to(device)
    with quiet_sparse_warnings():
        t = {"dense": t, "coo": t.to_sparse_coo(), "csr": t.to_sparse_csr()}[layout]
    out = diffusion_operator(t, 0.7)
    check_csr_structure(out, n)
    np.testing.assert_allclose(
        out.to_dense().cpu().numpy(), np.eye(n) - 0.7 * s, rtol=1e-14, atol=1e-15
    )


def test_diffusion_operator_rejects_bad_inputs():
    g = Data(edge_index=torch.tensor([[0], [1]]), edge_weight=torch.tensor([1.0]), num_nodes=2)
    for alpha in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            diffusion_operator(g, alpha)
    with pytest.raises(TypeError, match="alpha"):
        diffusion_operator(g, "0.5")
    with pytest.raises(ValueError, match="edge_weight"):
        diffusion_operator(Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2))
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        diffusion_operator(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="ndarray"):
        diffusion_operator(np.eye(2))


# ----------------------------------------------------------------------------- laplacian_alpha
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_laplacian_alpha_equals_dense(seed, alpha, weighted, dtype, device):
    n = 11
    src, dst, w = random_edges(seed, n, 30, isolated=(0, 7))
    if not weighted:
        w = np.ones_like(w)
    ei = torch.from_numpy(np.stack([src, dst])).to(device)
    g = Data(edge_index=ei, num_nodes=n)
    if weighted:
        g.edge_weight = torch.from_numpy(w).to(device, dtype)
    out = laplacian_alpha(g, alpha)
    a = dense_adjacency(src, dst, w, n)
    expected = np.eye(n) - alpha * sym_normalized(a)
    check_csr_structure(out, n)
    tol = 1e-6 if (weighted and dtype == torch.float32) or not weighted else 1e-14
    np.testing.assert_allclose(out.to_dense().cpu().numpy(), expected, rtol=tol, atol=tol)
    for v in (0, 7):  # isolated nodes: identity rows
        np.testing.assert_array_equal(out.to_dense().cpu().numpy()[v], np.eye(n)[v])


def test_laplacian_alpha_symmetric_graph_by_hand():
    # path 0 - 1 - 2 with weights 1 and 3: degrees 1, 4, 3
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    g = Data(
        edge_index=ei,
        edge_weight=torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64),
        num_nodes=3,
    )
    out = laplacian_alpha(g, 0.5).to_dense().numpy()
    s01 = 1 / np.sqrt(1 * 4)
    s12 = 3 / np.sqrt(4 * 3)
    expected = np.array([[1, -0.5 * s01, 0], [-0.5 * s01, 1, -0.5 * s12], [0, -0.5 * s12, 1]])
    np.testing.assert_allclose(out, expected, rtol=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_laplacian_alpha_is_diffusion_operator_of_normalized_graph(seed, device):
    n = 9
    src, dst, w = random_edges(seed, n, 24, isolated=(3,))
    ei = torch.from_numpy(np.stack([src, dst])).to(device)
    a = dense_adjacency(src, dst, w, n)
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    s_w = inv[dst] * w * inv[src]  # the weight of edge j -> i in S, by numpy
    lhs = laplacian_alpha(
        Data(edge_index=ei, edge_weight=torch.from_numpy(w).to(device), num_nodes=n), 0.8
    )
    rhs = diffusion_operator(
        Data(edge_index=ei, edge_weight=torch.from_numpy(s_w).to(device), num_nodes=n), 0.8
    )
    np.testing.assert_allclose(
        lhs.to_dense().cpu().numpy(), rhs.to_dense().cpu().numpy(), rtol=1e-14, atol=1e-15
    )
    np.testing.assert_allclose(
        lhs.to_dense().cpu().numpy(), np.eye(n) - 0.8 * sym_normalized(a), rtol=1e-13, atol=1e-15
    )
