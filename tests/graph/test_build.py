import pytest
import scipy.sparse as sp
import torch

from graphrerank.graph import (
    from_scipy,
    knn_graph,
    knn_search,
    normalize_adjacency,
    symmetrize,
    to_scipy,
    to_torch_csr,
)


def _x(n=60, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _dense_reference(x, k, *, k_includes_self, symmetrize, gamma, normalize, loop=False):
    """Straightforward dense float64 construction of the same graph."""
    n = x.shape[0]
    s = x @ x.T
    order = s.argsort(dim=1, descending=True)
    w = torch.zeros(n, n, dtype=torch.float64)
    m = k - 1 if k_includes_self else k
    for i in range(n):
        others = [j for j in order[i].tolist() if j != i][:m]
        for j in others:
            w[i, j] = max(s[i, j].item(), 0.0) ** gamma
    nb = w != 0
    if symmetrize == "mutual":
        w = w * (nb & nb.T)
    elif symmetrize == "min":
        w = torch.minimum(w, w.T) * (nb & nb.T)
    elif symmetrize == "union":
        w = w + w.T
    elif symmetrize == "max":
        w = torch.maximum(w, w.T)
    if loop:
        w = w + torch.diag(torch.diagonal(s).clamp(min=0) ** gamma)
    if normalize is not None:
        d = w.sum(1)
        if normalize == "sym":
            inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
            w = inv[:, None] * w * inv[None, :]
        else:
            inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
            w = inv[:, None] * w
    return w


@pytest.mark.parametrize("symmetrize", [None, "mutual", "min", "union", "max"])
@pytest.mark.parametrize("normalize", [None, "sym", "row"])
@pytest.mark.parametrize("k_includes_self", [True, False])
def test_matches_dense_reference(symmetrize, normalize, k_includes_self):
    x = _x()
    g = knn_graph(
        x,
        7,
        k_includes_self=k_includes_self,
        symmetrize=symmetrize,
        gamma=3.0,
        normalize=normalize,
        backend="torch",
    )
    ref = _dense_reference(
        x, 7, k_includes_self=k_includes_self, symmetrize=symmetrize, gamma=3.0, normalize=normalize
    )
    torch.testing.assert_close(to_torch_csr(g).to_dense(), ref)
    assert g.num_nodes == 60
    assert not (g.edge_index[0] == g.edge_index[1]).any(), "no self loops unless asked"


def test_loop_and_gamma():
    x = _x()
    g = knn_graph(x, 5, loop=True, gamma=2.0, normalize="sym", backend="torch")
    ref = _dense_reference(
        x, 5, k_includes_self=True, symmetrize=None, gamma=2.0, normalize="sym", loop=True
    )
    torch.testing.assert_close(to_torch_csr(g).to_dense(), ref)


def test_hand_worked_mutual_graph():
    # three points on a line of angles: 0 <-> 1 mutual, 2 -> 1 one-sided
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    g = knn_graph(x, 2, symmetrize="mutual", gamma=3.0, backend="torch")
    assert g.edge_index.tolist() == [[1, 0], [0, 1]]
    torch.testing.assert_close(g.edge_weight, torch.tensor([0.512, 0.512], dtype=torch.float64))
    # node 2 is isolated: the sym normalisation must not produce inf or nan
    g = knn_graph(x, 2, symmetrize="mutual", normalize="sym", backend="torch")
    assert torch.isfinite(g.edge_weight).all()
    torch.testing.assert_close(g.edge_weight, torch.ones(2, dtype=torch.float64))


def test_negative_similarities_are_clamped():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [-0.9, -0.2]], dtype=torch.float64)
    x = torch.nn.functional.normalize(x, dim=1)
    g = knn_graph(x, 3, gamma=1.0, backend="torch")
    w = to_torch_csr(g).to_dense()
    assert w[0, 1] == 0 and w[0, 2] == 0  # cos < 0 -> weight 0
    assert w[1, 2] > 0
    raw = knn_graph(x, 3, gamma=None, backend="torch")
    assert (to_torch_csr(raw).to_dense()[0, 1:] < 0).all()


def test_duplicates_do_not_confuse_self_removal():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    g = knn_graph(x, 2, backend="torch")
    assert not (g.edge_index[0] == g.edge_index[1]).any()
    # each node keeps exactly k - 1 = 1 neighbour
    assert torch.bincount(g.edge_index[1], minlength=4).tolist() == [1, 1, 1, 1]
    assert set(g.edge_index[0, g.edge_index[1] == 0].tolist()) == {1}


def test_rescore_hook_changes_edge_selection():
    x = _x(30)
    calls = []

    def reverse(rows, cand, scores):
        calls.append(rows.numel())
        return -scores  # prefer the farthest candidates

    g = knn_graph(
        x, 3, num_candidates=10, rescore=reverse, rescore_batch_size=8, gamma=None, backend="torch"
    )
    assert sum(calls) == 30 and max(calls) == 8
    cand = knn_search(x, x, 10, backend="torch")
    for i in range(30):
        others = [j for j in cand.indices[i].tolist() if j != i]
        expected = set(others[-2:])  # two worst of the ten candidates after dropping self
        assert set(g.edge_index[0, g.edge_index[1] == i].tolist()) == expected
    w = to_torch_csr(g).to_dense()
    s = x @ x.T
    nz = w != 0
    torch.testing.assert_close(w[nz], -s[nz])


def test_rescore_bad_output():
    x = _x(20)
    with pytest.raises(ValueError, match="rescore must return a tensor of shape"):
        knn_graph(x, 3, rescore=lambda r, c, s: s[:, :1], backend="torch")
    with pytest.raises(ValueError, match="NaN"):
        knn_graph(x, 3, rescore=lambda r, c, s: s * float("nan"), backend="torch")


def test_precomputed_candidates():
    x = _x(40)
    cand = knn_search(x, x, 6, backend="torch")
    a = knn_graph(x, 6, candidates=cand, symmetrize="mutual")
    b = knn_graph(x, 6, symmetrize="mutual", backend="torch")
    assert torch.equal(a.edge_index, b.edge_index)
    with pytest.raises(ValueError, match="candidates must be"):
        knn_graph(x, 6, candidates=(cand.scores[:5], cand.indices[:5]))


def test_symmetrize_and_normalize_functions_hand_values():
    ei = torch.tensor([[1, 2, 0], [0, 0, 2]])  # 1->0 (0.5), 2->0 (0.2), 0->2 (0.4)
    w = torch.tensor([0.5, 0.2, 0.4])
    ei_u, w_u = symmetrize(ei, w, 3, "union")
    dense = torch.zeros(3, 3)
    dense[ei_u[1], ei_u[0]] = w_u
    torch.testing.assert_close(dense, torch.tensor([[0, 0.5, 0.6], [0.5, 0, 0], [0.6, 0, 0]]))
    ei_m, w_m = symmetrize(ei, w, 3, "mutual")
    assert ei_m.tolist() == [[2, 0], [0, 2]] and w_m.tolist() == pytest.approx([0.2, 0.4])
    _, w_min = symmetrize(ei, w, 3, "min")
    assert w_min.tolist() == pytest.approx([0.2, 0.2])
    _, w_max = symmetrize(ei, w, 3, "max")
    assert sorted(w_max.tolist()) == pytest.approx([0.4, 0.4, 0.5, 0.5])
    # row normalisation of node 0's incoming edges 0.5 and 0.2
    rn = normalize_adjacency(ei, w, 3, "row")
    assert rn.tolist() == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 1.0])


def test_scipy_round_trip():
    x = _x(25)
    g = knn_graph(x, 4, symmetrize="union", backend="torch")
    m = to_scipy(g)
    assert isinstance(m, sp.csr_matrix)
    torch.testing.assert_close(torch.from_numpy(m.toarray()), to_torch_csr(g).to_dense())
    back = from_scipy(m)
    torch.testing.assert_close(to_torch_csr(back).to_dense(), to_torch_csr(g).to_dense())


def test_csr_product_aggregates_incoming_neighbours():
    ei = torch.tensor([[1, 2], [0, 0]])  # 1->0, 2->0
    from torch_geometric.data import Data

    g = Data(edge_index=ei, edge_weight=torch.tensor([2.0, 3.0]), num_nodes=3)
    feats = torch.tensor([[1.0], [10.0], [100.0]])
    assert (to_torch_csr(g) @ feats).flatten().tolist() == [320.0, 0.0, 0.0]


def test_device(device):
    x = _x(30).float().to(device)
    g = knn_graph(x, 4, symmetrize="mutual", normalize="sym", backend="torch")
    assert g.edge_index.device.type == device and g.edge_weight.device.type == device


def test_bad_arguments():
    x = _x(10)
    with pytest.raises(ValueError, match="k=11 is too large for x with 10 row"):
        knn_graph(x, 11)
    with pytest.raises(ValueError, match="k=10 is too large"):
        knn_graph(x, 10, k_includes_self=False)
    with pytest.raises(ValueError, match="symmetrize must be one of"):
        knn_graph(x, 3, symmetrize="both")
    with pytest.raises(ValueError, match="normalize must be one of"):
        knn_graph(x, 3, normalize="col")
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        knn_graph(x, 3, gamma=-1)


def test_knn_rescorer_is_identity():
    from graphrerank import KNN

    x = _x(50)
    plain = knn_graph(x, 5, symmetrize="mutual", gamma=3.0, backend="torch")
    hooked = knn_graph(
        x, 5, symmetrize="mutual", gamma=3.0, rescore=KNN().fit(x).as_rescorer(), backend="torch"
    )
    assert torch.equal(plain.edge_index, hooked.edge_index)
    torch.testing.assert_close(plain.edge_weight, hooked.edge_weight)
