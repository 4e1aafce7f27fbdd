"""``gnn_propagate`` against a dense float64 transcription of GNN re-ranking's propagation."""

import numpy as np
import pytest
import torch

from graphrerank.nn.gnn_rerank import gnn_propagate

DTYPES = [torch.float32, torch.float64]


def ranked_lists(seed, m, d=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, 1.0)  # exactly: the node first
    order = np.argsort(-s, axis=1, kind="stable")
    assert np.all(order[:, 0] == np.arange(m))
    return order, np.take_along_axis(s, order, 1)


def keep_largest(a, p):
    out = np.zeros_like(a)
    for i, row in enumerate(a):
        cols = np.nonzero(row)[0]
        keep = cols[np.lexsort((cols, -row[cols]))[:p]]
        out[i, keep] = row[keep]
    return out


def propagate_reference(nbr, sim, k1, k2, layers, max_nonzeros=None):
    m = nbr.shape[0]
    n1 = min(k1, m)
    n2 = min(k2, n1)
    a = np.zeros((m, m))
    p = np.zeros((m, m))
    for i in range(m):
        a[i, nbr[i, :n1]] = 1.0  # A0 = [j in R_i^{k1}]
        p[i, nbr[i, :n2]] = sim[i, :n2] ** 2  # P_ij = s_ij^2 [j in R_i^{k2}]
    if k2 == 1:
        return a
    for _ in range(layers):
        a = p @ (a + a.T)
        norms = np.linalg.norm(a, axis=1, keepdims=True)
        a = np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)
        if max_nonzeros is not None:
            a = keep_largest(a, max_nonzeros)
    return a


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("m", "k1", "k2"),
    [(1, 1, 1), (2, 2, 2), (12, 4, 2), (15, 6, 6), (10, 20, 3), (9, 3, 8), (14, 14, 5)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_gnn_propagate_equals_dense(seed, m, k1, k2, layers, device):
    nbr, sim = ranked_lists(seed, m)
    out = gnn_propagate(
        torch.from_numpy(nbr).to(device), torch.from_numpy(sim).to(device), k1, k2, layers
    )
    assert out.layout == torch.sparse_csr and tuple(out.shape) == (m, m)
    expected = propagate_reference(nbr, sim, k1, k2, layers)
    np.testing.assert_allclose(out.to_dense().cpu().numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("layers", [0, 2])
def test_gnn_propagate_k2_one_returns_initial_adjacency(layers, device):
    nbr, sim = ranked_lists(3, 11)
    out = gnn_propagate(
        torch.from_numpy(nbr).to(device), torch.from_numpy(sim).to(device), 4, 1, layers
    )
    expected = np.zeros((11, 11))
    np.put_along_axis(expected, nbr[:, :4], 1.0, 1)
    np.testing.assert_array_equal(out.to_dense().cpu().numpy(), expected)  # binary, unnormalised


@pytest.mark.parametrize("max_nonzeros", [1, 3, 7, 100])
@pytest.mark.parametrize("layers", [1, 2])
def test_gnn_propagate_keeps_largest_entries(layers, max_nonzeros, device):
    nbr, sim = ranked_lists(4, 16)
    out = gnn_propagate(
        torch.from_numpy(nbr).to(device), torch.from_numpy(sim).to(device), 5, 3, layers,
        max_nonzeros,
    )  # fmt: skip
    expected = propagate_reference(nbr, sim, 5, 3, layers, max_nonzeros)
    got = out.to_dense().cpu().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert ((got != 0).sum(1) <= max_nonzeros).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gnn_propagate_dtypes(dtype, device):
    nbr, sim = ranked_lists(5, 13)
    out = gnn_propagate(
        torch.from_numpy(nbr).to(device), torch.from_numpy(sim).to(device, dtype), 5, 3, 2
    )
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    expected = propagate_reference(
        nbr, sim.astype(np.float32 if dtype == torch.float32 else np.float64), 5, 3, 2
    )
    np.testing.assert_allclose(out.to_dense().cpu().numpy(), expected, rtol=tol, atol=1e-6)
    rows = np.linalg.norm(out.to_dense().cpu().numpy(), axis=1)
    np.testing.assert_allclose(rows, 1.0, rtol=tol)


def _dense_form(name):
    # the dense form's two propagations: SciPy CSR layers (the CPU's) and dense torch rows
    # (the other devices'), called directly so that both run on the CPU here
    from graphrerank.nn import gnn_rerank as mod

    if name == "dispatch":
        return mod._gnn_propagate_dense
    f = getattr(mod, name)

    def run(nbr, sim, k1, k2, layers):
        n1 = min(k1, nbr.shape[0])
        return f(nbr, sim, n1, min(k2, n1), layers, k2 == 1)

    return run


DENSE_FORMS = ["dispatch", "_propagate_scipy", "_propagate_torch"]


@pytest.mark.parametrize("form", DENSE_FORMS)
@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize(("m", "k1", "k2"), [(1, 1, 1), (12, 4, 2), (15, 6, 6), (10, 20, 3)])
def test_dense_form_equals_dense_reference(m, k1, k2, layers, form):
    nbr, sim = ranked_lists(5, m)
    out = _dense_form(form)(torch.from_numpy(nbr), torch.from_numpy(sim), k1, k2, layers)
    expected = propagate_reference(nbr, sim, k1, k2, layers)
    assert out.dtype == torch.float64 and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", DENSE_FORMS)
def test_dense_form_float32(form):
    nbr, sim = ranked_lists(3, 14)
    out = _dense_form(form)(torch.from_numpy(nbr), torch.from_numpy(sim).float(), 5, 3, 2)
    assert out.dtype == torch.float32
    expected = propagate_reference(nbr, sim.astype(np.float32), 5, 3, 2)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", DENSE_FORMS)
def test_dense_form_drops_padding(form):
    nbr = torch.tensor([[0, 1, -1], [1, 0, 2], [2, 1, -1]])
    sim = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.5, 0.4], [1.0, 0.2, 0.0]], dtype=torch.float64)
    for layers in (0, 2):
        dense = _dense_form(form)(nbr, sim, 3, 3, layers)
        sparse = gnn_propagate(nbr, sim, 3, 3, layers).to_dense()
        np.testing.assert_allclose(dense.numpy(), sparse.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fn", ["gnn_propagate", "gnn_rerank_graph"])
def test_bad_neighbor_lists_name_the_arguments(fn):
    from graphrerank.nn import gnn_rerank as mod

    f = getattr(mod, fn)
    nbr, sim = (torch.from_numpy(a) for a in ranked_lists(0, 8))
    with pytest.raises(TypeError, match="neighbors"):
        f(None, sim, 3, 2)
    for s in (sim, sim[:0]):
        with pytest.raises(ValueError, match="neighbors must hold at least one node"):
            f(nbr[:0], s, 3, 2)
    longer = torch.cat([nbr, nbr[:1]])
    with pytest.raises(
        ValueError, match=r"similarities must have the shape of neighbors.*\(9, 8\)"
    ):
        f(longer, sim, 3, 2)


def test_layers_bounded_by_max_rounds():
    from graphrerank._params import MAX_ROUNDS

    nbr, sim = (torch.from_numpy(a) for a in ranked_lists(0, 6))
    with pytest.raises(ValueError, match=f"layers must be <= {MAX_ROUNDS}"):
        gnn_propagate(nbr, sim, 3, 2, layers=10**12)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize(("m", "k1", "k2"), [(12, 4, 2), (15, 6, 6), (14, 14, 5)])
def test_pruning_that_prunes_nothing_is_exact(m, k1, k2, layers):
    # max_nonzeros at least the row length keeps every entry: the exact propagation
    nbr, sim = (torch.from_numpy(a) for a in ranked_lists(7, m))
    expected = propagate_reference(nbr.numpy(), sim.numpy(), k1, k2, layers)
    for limit in (None, m):
        out = gnn_propagate(nbr, sim, k1, k2, layers, max_nonzeros=limit)
        assert out.layout == torch.sparse_csr and out.crow_indices().dtype == torch.int64
        np.testing.assert_allclose(out.to_dense().numpy(), expected, rtol=1e-12, atol=1e-14)
