"""Match graphs: nodes, the three edge kinds, exact kNN correspondences, positions."""

import pytest
import torch

from graphrerank.models import EDGE_C2Q, EDGE_GLOBAL, EDGE_INTRA, EDGE_Q2C, match_graph


def _data(b=2, lq=5, w=3, lc=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, lq, d, generator=g), torch.randn(b, w, lc, d, generator=g)


def _cos(a, b):
    a = a.double() / a.double().norm(dim=-1, keepdim=True)
    b = b.double() / b.double().norm(dim=-1, keepdim=True)
    return a @ b.T


def test_nodes_roles_and_batch(device):
    q, c = _data()
    graph = match_graph(q.to(device), c.to(device), k_intra=2, k_cross=2)
    per = 5 + 3 * 4
    assert graph.num_nodes == 2 * per and graph.num_pairs == 6
    assert graph.x.device.type == device
    x = graph.x.view(2, per, 6).cpu()
    torch.testing.assert_close(x[:, :5], q)
    torch.testing.assert_close(x[:, 5:], c.reshape(2, 12, 6))
    assert graph.role.view(2, per)[:, :5].eq(0).all() and graph.role.view(2, per)[:, 5:].eq(1).all()
    assert graph.batch.tolist() == [0] * per + [1] * per


def test_edges_are_exact_knn_by_cosine():
    q, c = _data(b=2, lq=5, w=3, lc=4)
    k_intra, k_cross = 2, 3
    graph = match_graph(q, c, k_intra=k_intra, k_cross=k_cross)
    x = graph.x
    per = 17
    src, dst = graph.edge_index
    image = torch.cat([torch.zeros(5, dtype=torch.long), 1 + torch.arange(12) // 4])
    image = torch.cat([image, image + 4])  # image id of each node, 4 images per graph
    for node in range(graph.num_nodes):
        gb, local = divmod(node, per)
        base = gb * per
        incoming = dst == node
        # intra: the k most similar other descriptors of the same image
        intra = incoming & (graph.edge_type == EDGE_INTRA)
        same = [j for j in range(base, base + per) if image[j] == image[node] and j != node]
        sims = _cos(x[node : node + 1], x[same])[0]
        expected = {same[i] for i in sims.topk(k_intra).indices.tolist()}
        assert set(src[intra].tolist()) == expected
        # cross: from the other side of the same graph
        cross = incoming & (graph.edge_type != EDGE_INTRA)
        if local < 5:  # a query node: its best candidate nodes among all candidates
            assert graph.edge_type[cross].eq(EDGE_C2Q).all()
            others = list(range(base + 5, base + per))
        else:
            assert graph.edge_type[cross].eq(EDGE_Q2C).all()
            others = list(range(base, base + 5))
        sims = _cos(x[node : node + 1], x[others])[0]
        expected = {others[i] for i in sims.topk(k_cross).indices.tolist()}
        assert set(src[cross].tolist()) == expected
    # edge_sim is the cosine of the two descriptors
    ref = (_cos(x, x)[src, dst]).float()
    torch.testing.assert_close(graph.edge_sim, ref, rtol=1e-5, atol=1e-6)


def test_cross_edges_name_their_pair():
    q, c = _data(b=2, lq=3, w=3, lc=2)
    graph = match_graph(q, c, k_intra=1, k_cross=2)
    per = 3 + 6
    src, dst = graph.edge_index
    cross = graph.edge_type != EDGE_INTRA
    assert graph.edge_pair[~cross].eq(-1).all()
    cand_node = torch.where(graph.edge_type == EDGE_Q2C, dst, src)[cross]
    gb, local = cand_node // per, cand_node % per
    assert graph.edge_pair[cross].tolist() == (gb * 3 + (local - 3) // 2).tolist()


def test_edge_counts_grow_with_k_not_with_pairs():
    q, c = _data(b=1, lq=32, w=10, lc=32, d=8)
    graph = match_graph(q, c, k_intra=4, k_cross=3)
    nodes = 32 + 320
    assert graph.edge_index.shape[1] == nodes * 4 + 320 * 3 + 32 * 3
    assert graph.edge_index.shape[1] < 32 * 320  # fewer than all query-candidate pairs


def test_k_is_capped_by_set_sizes():
    q, c = _data(b=1, lq=2, w=1, lc=1)
    graph = match_graph(q, c, k_intra=8, k_cross=8)
    # query: 1 intra neighbour each; candidate: no intra edge; cross: 2 into the candidate node,
    # 1 into each query node
    assert graph.edge_type.tolist().count(EDGE_INTRA) == 2
    assert graph.edge_type.tolist().count(EDGE_Q2C) == 2
    assert graph.edge_type.tolist().count(EDGE_C2Q) == 2


def test_positions_give_normalised_displacements():
    q = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]])
    c = q.clone().unsqueeze(1)
    pos = torch.tensor([[[0.0, 0.0], [0.0, 3.0], [4.0, 0.0]]])
    graph = match_graph(q, c, k_intra=1, k_cross=1, query_positions=pos,
                        candidate_positions=pos.unsqueeze(1))  # fmt: skip
    # RMS distance of the positions to their centroid (4/3, 1)
    p = pos[0] - pos[0].mean(0)
    spread = p.pow(2).sum(1).mean().sqrt()
    intra = graph.edge_type == EDGE_INTRA
    src, dst = graph.edge_index[:, intra]
    expected = (pos[0][src % 3] - pos[0][dst % 3]) / spread
    torch.testing.assert_close(graph.edge_pos[intra], expected)
    assert graph.edge_pos[~intra].eq(0).all()


@pytest.mark.parametrize(
    ("q", "c", "kwargs", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 1, 3, 3), {}, "query must be"),
        (torch.ones(2, 3, 4), torch.ones(3, 1, 3, 4), {}, "must match query"),
        (torch.ones(2, 3, 4), torch.ones(2, 1, 3, 5), {}, "must match query"),
        (torch.ones(2, 0, 4), torch.ones(2, 1, 3, 4), {}, "empty match graph"),
        (torch.ones(2, 3, 4), torch.ones(2, 1, 3, 4), {"k_cross": 0}, "k_cross must be >= 1"),
        (torch.ones(2, 3, 4), torch.ones(2, 1, 3, 4), {"query_positions": torch.zeros(2, 3, 2)},
         "give both"),
    ],
)  # fmt: skip
def test_bad_inputs(q, c, kwargs, match):
    with pytest.raises(ValueError, match=match):
        match_graph(q, c, **kwargs)


def test_global_nodes_and_edges():
    q, c = _data(b=2, lq=3, w=2, lc=2, d=4)
    g = torch.Generator().manual_seed(4)
    qg, cg = torch.randn(2, 5, generator=g), torch.randn(2, 2, 5, generator=g)
    graph = match_graph(q, c, k_intra=1, k_cross=1, query_global=qg, candidate_global=cg)
    per = 3 + 4
    n_local = 2 * per
    assert graph.num_nodes == n_local + 2 * 3
    assert graph.is_global.tolist() == [False] * n_local + [True] * 6
    torch.testing.assert_close(graph.x_global, torch.cat([qg.unsqueeze(1), cg], 1).reshape(6, 5))
    assert graph.role[n_local:].tolist() == [0, 1, 1, 0, 1, 1]
    assert graph.batch[n_local:].tolist() == [0, 0, 0, 1, 1, 1]
    src, dst = graph.edge_index
    ge = graph.edge_type == EDGE_GLOBAL
    # each global node <-> exactly the local nodes of its image
    images = [list(range(0, 3)), [3, 4], [5, 6], list(range(7, 10)), [10, 11], [12, 13]]
    for gnode, nodes in zip(range(n_local, n_local + 6), images):
        assert sorted(src[ge & (dst == gnode)].tolist()) == nodes
        assert sorted(dst[ge & (src == gnode)].tolist()) == nodes
    # query global <-> candidate globals, with the global cosine and the pair id
    gg = ~ge & graph.is_global[src] & graph.is_global[dst]
    assert gg.sum() == 8
    for e in gg.nonzero().flatten().tolist():
        a, b = int(src[e]), int(dst[e])
        qnode, cnode = (a, b) if graph.role[a] == 0 else (b, a)
        bq, cw = (qnode - n_local) // 3, (cnode - n_local) % 3 - 1
        assert graph.edge_pair[e] == bq * 2 + cw
        ref = _cos(qg[bq : bq + 1], cg[bq, cw : cw + 1])[0, 0]
        assert float(graph.edge_sim[e]) == pytest.approx(float(ref), abs=1e-6)
    with pytest.raises(ValueError, match="give both query_global"):
        match_graph(q, c, query_global=qg)
    with pytest.raises(ValueError, match="query_global must be"):
        match_graph(q, c, query_global=qg, candidate_global=cg[:, :1])
