"""Cases that once crashed the process (SIGSEGV / abort from unchecked sparse indices) or gave
silently wrong results, run by ``python -m tests.hardening._crash_cases`` in a child process
(see ``test_lower_layers.test_crash_prone_case``). Prints one JSON line: case -> ``"ok"`` or
the failure."""

from __future__ import annotations

import json
import sys
import traceback
import warnings

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch_geometric.data import Data

from graphrerank import diffusion as gd
from graphrerank import graph as gg
from graphrerank import nn as gnn
from graphrerank.graph import sparse as gs

from . import conftest  # noqa: F401  (registers and loads the hypothesis profile)
from .strategies import CSR_CORRUPTIONS, Refused, corrupt, csr_matrices, outcome

warnings.filterwarnings("ignore", message="Sparse CSR tensor support")


def _raw_csr(crow, col, val, shape):
    return torch.sparse_csr_tensor(
        torch.tensor(crow), torch.tensor(col), torch.tensor(val), shape, check_invariants=False
    )


def _refused(fn, *args, names, **kwargs) -> str:
    try:
        outcome(fn, *args, names=names, **kwargs)
    except Refused as err:
        return str(err)
    raise AssertionError(f"{fn.__qualname__} accepted a bad input")


# ----------------------------------------------------------------------------- the cases
def offline_scores_offline_matrix_smaller_than_knn():
    C = torch.eye(3).to_sparse_csr()
    msg = _refused(
        gd.offline_diffusion_scores,
        C,
        (torch.ones(1, 2), torch.tensor([[1, 7]])),
        1.0,
        names=["knn"],
    )
    assert "7" in msg


def gnn_conv_corrupt_crow():
    a = _raw_csr([0, 5, 2, 3], [0, 1, 2], [1.0, 1.0, 1.0], (3, 3))
    _refused(gnn.GNNRerankConv(), a, torch.eye(3).to_sparse_csr(), names=["x"])
    _refused(gnn.GNNRerankConv(), torch.eye(3).to_sparse_csr(), a, names=["adj_t"])


def cg_corrupt_crow():
    a = _raw_csr([0, 500, 2, 3], [0, 1, 2], [1.0, 1.0, 1.0], (3, 3))
    _refused(gd.conjugate_gradient, a, torch.ones(3, 2), names=["A"])


def diffuse_corrupt_crow():
    a = _raw_csr([0, 1, 2, 9], [0, 1, 2], [1.0, 1.0, 1.0], (3, 3))
    _refused(gd.diffuse, a, torch.ones(3, 1), names=["operator"])


def diffusion_operator_minus_one_edge():
    g = Data(edge_index=torch.tensor([[-1, 0], [0, 1]]), edge_weight=torch.ones(2), num_nodes=2)
    msg = _refused(gd.diffusion_operator, g, 0.5, names=["graph.edge_index"])
    assert "-1" in msg


def to_torch_csr_out_of_range_columns():
    g = Data(edge_index=torch.tensor([[5, 0], [0, 1]]), edge_weight=torch.ones(2), num_nodes=2)
    _refused(gg.to_torch_csr, g, names=["graph.edge_index"])
    _refused(gg.to_scipy, g, names=["graph.edge_index"])


def adjacency_out_of_range_columns():
    g = Data(edge_index=torch.tensor([[0, 0], [0, 7]]), edge_weight=torch.ones(2), num_nodes=2)
    _refused(gnn.adjacency, g, names=["graph.edge_index"])
    _refused(gnn.adjacency, _raw_csr([0, 1, 2], [0, 9], [1.0, 1.0], (2, 2)), names=["graph"])


def gnn_rerank_graph_drops_padding():
    a, p = gnn.gnn_rerank_graph(torch.tensor([[0, -1], [1, 0]]), torch.ones(2, 2), 2, 2)
    assert torch.equal(a.to_dense(), torch.tensor([[1.0, 0.0], [1.0, 1.0]])), a.to_dense()
    assert torch.equal(p.to_dense(), torch.tensor([[1.0, 0.0], [1.0, 1.0]])), p.to_dense()
    assert int(a.col_indices().min()) >= 0


def symmetrize_out_of_range_edges():
    for how in ("union", "max", "mutual", "min"):
        _refused(
            gg.symmetrize,
            torch.tensor([[0, 5], [5, 0]]),
            torch.ones(2),
            3,
            how,
            names=["edge_index"],
        )


def meta_and_requires_grad_and_numpy():
    meta = torch.ones(4, 3, device="meta")
    _refused(gg.knn_graph, meta, 2, backend="torch", names=["x"])
    _refused(gd.conjugate_gradient, torch.eye(3), torch.ones(3, device="meta"), names=["B"])
    x = torch.nn.functional.normalize(torch.randn(5, 3), dim=1).requires_grad_(True)
    g = gg.knn_graph(x, 2, backend="torch")
    assert not g.edge_weight.requires_grad
    res = gd.conjugate_gradient(torch.eye(3) * 2, torch.ones(3, requires_grad=True))
    assert torch.allclose(res.solution, torch.full((3,), 0.5))
    ei, w = np.array([[0, 1], [1, 0]]), np.array([1.0, 2.0])
    got = gg.symmetrize(ei, w, 3, "union")
    want = gg.symmetrize(torch.from_numpy(ei), torch.from_numpy(w), 3, "union")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    neg = np.ascontiguousarray(np.random.default_rng(0).standard_normal((4, 3)))[::-1]
    g2 = gg.knn_graph(neg, 2, backend="torch")
    assert g2.num_nodes == 4


# ----------------------------------------------------------------------------- generated
def _entry_points(a: torch.Tensor):
    """(name, call, argument names) of every function that takes a sparse matrix."""
    n = a.shape[0]
    ok = torch.eye(n).to_sparse_csr()
    return [
        ("csr_transpose", lambda: gs.csr_transpose(a), ["a"]),
        ("csr_row_normalize", lambda: gs.csr_row_normalize(a), ["a"]),
        ("csr_padded", lambda: gs.csr_padded(a), ["a"]),
        ("csr_keep_largest", lambda: gs.csr_keep_largest(a, 1), ["a"]),
        ("csr_add_transpose", lambda: gs.csr_add_transpose(a), ["a"]),
        ("compact_csr", lambda: gs.compact_csr(a), ["a"]),
        ("overlap_cost", lambda: gs.overlap_cost(a, ok), ["rows_a", "inv_b"]),
        (
            "pair_products",
            lambda: gs.pair_products(a, torch.tensor([0]), torch.tensor([0]), "mul", 64),
            ["v"],
        ),
        ("GNNRerankConv", lambda: gnn.GNNRerankConv()(a, ok), ["x"]),
        ("GNNRerankConv adj", lambda: gnn.GNNRerankConv()(ok, a), ["adj_t"]),
        (
            "WeightedPropagation",
            lambda: gnn.WeightedPropagation()(torch.ones(n, 2), a),
            ["edge_index"],
        ),
        ("adjacency", lambda: gnn.adjacency(a), ["graph"]),
        ("conjugate_gradient", lambda: gd.conjugate_gradient(a, torch.ones(n, 2)), ["A"]),
        ("diffuse", lambda: gd.diffuse(a, torch.ones(n, 1)), ["operator"]),
        ("diffusion_operator", lambda: gd.diffusion_operator(a, 0.5), ["graph"]),
        ("spectral_embedding", lambda: gd.spectral_embedding(a, 1, eigensolver="dense"), ["graph"]),
        (
            "truncated_operator",
            lambda: gd.truncated_operator(a, torch.arange(n)[None]),
            ["affinity"],
        ),
        ("late_truncation", lambda: gd.late_truncation(a, torch.arange(n)[:, None]), ["laplacian"]),
        (
            "offline_diffusion_scores",
            lambda: gd.offline_diffusion_scores(
                a, (torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long)), 1.0
            ),
            ["C"],
        ),
        ("ScoreMatrix", lambda: gg.ScoreMatrix(a).topk(1), ["scores"]),
        ("rank_csr", lambda: gg.rank_csr(a, 1, None, torch.zeros(n, 1), None, "index"), ["F"]),
    ]


@given(csr_matrices(symmetric=True, diagonal=2.0), st.sampled_from(CSR_CORRUPTIONS))
def corrupt_csr_into_every_sparse_entry_point(a, how):
    bad = corrupt(a, how)
    for name, call, names in _entry_points(bad):
        print("  ", name, how, file=sys.stderr, flush=True)
        try:
            outcome(call, names=names)
        except Refused:
            pass
        except AssertionError:
            raise
        except Exception as err:  # an internal error: report which entry point
            raise AssertionError(
                f"{name} on a CSR with {how}: {type(err).__name__}: {err}"
            ) from err


CASES = {
    f.__name__: f
    for f in (
        offline_scores_offline_matrix_smaller_than_knn,
        gnn_conv_corrupt_crow,
        cg_corrupt_crow,
        diffuse_corrupt_crow,
        diffusion_operator_minus_one_edge,
        to_torch_csr_out_of_range_columns,
        adjacency_out_of_range_columns,
        gnn_rerank_graph_drops_padding,
        symmetrize_out_of_range_edges,
        meta_and_requires_grad_and_numpy,
        corrupt_csr_into_every_sparse_entry_point,
    )
}


def main() -> int:
    report = {}
    for name, fn in CASES.items():
        print("case", name, file=sys.stderr, flush=True)  # the last line names a crash
        try:
            fn()
            report[name] = "ok"
        except BaseException as err:
            report[name] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
