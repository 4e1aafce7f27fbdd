"""The late design of LocalMatcher: the dense batched pass equals PyG on the match graph."""

import pytest
import torch

from graphrerank._io import load_arrays, save_arrays
from graphrerank.models import (
    EncodedLocal,
    LocalMatcher,
    rerank_shortlist,
    score_shortlist,
    tune_fusion,
)


def _inputs(b, w, lq, lc, d, pos, glob, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, d, generator=g, dtype=torch.float64)
    c = torch.randn(b, w, lc, d, generator=g, dtype=torch.float64)
    qp = cp = qg = cg = None
    if pos:
        qp = torch.rand(b, lq, 2, generator=g, dtype=torch.float64)
        cp = torch.rand(b, w, lc, 2, generator=g, dtype=torch.float64)
    if glob:
        qg = torch.randn(b, glob, generator=g, dtype=torch.float64)
        cg = torch.randn(b, w, glob, generator=g, dtype=torch.float64)
    return q, c, qp, cp, qg, cg


@pytest.mark.parametrize("glob", [None, 6])
@pytest.mark.parametrize("pos", [False, True])
@pytest.mark.parametrize(("w", "lq", "lc"), [(1, 7, 5), (3, 7, 5), (2, 1, 1), (1, 3, 9)])
def test_dense_pass_equals_transformerconv_on_the_match_graph(glob, pos, w, lq, lc):
    torch.manual_seed(0)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=2, ffn=24, global_dim=glob,
                         use_positions=pos, k_intra=3, k_cross=2).double().eval()  # fmt: skip
    assert model.config["design"] == "late"
    args = _inputs(4, w, lq, lc, 8, pos, glob)
    dense = model.score(*args)
    graph = model(model.graph(*args)).view(4, w)
    torch.testing.assert_close(dense, graph, rtol=1e-12, atol=1e-12)


def test_gradients_of_the_dense_pass_equal_the_graph_ones():
    torch.manual_seed(1)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=16, global_dim=5).double()
    args = _inputs(3, 2, 6, 4, 8, False, 5, seed=1)
    model.score(*args).sum().backward()
    dense = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model(model.graph(*args)).sum().backward()
    for a, p in zip(dense, model.parameters(), strict=True):
        if a is None:  # TransformerConv's unused lin_skip (root_weight=False)
            assert p.grad is None
            continue
        torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["pairwise", "listwise"])
def test_shortlist_with_an_encoded_database_equals_per_pair_scores(mode):
    torch.manual_seed(2)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=2, ffn=16, global_dim=5).double()
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    db = torch.randn(9, 5, 8, generator=g, dtype=torch.float64)
    qg = torch.randn(3, 5, generator=g, dtype=torch.float64)
    dg = torch.randn(9, 5, generator=g, dtype=torch.float64)
    short = torch.tensor([[0, 4, 2, 7], [8, 1, -1, 3], [5, 6, 0, 2]])
    kw = dict(mode=mode, window=3, stride=2, query_global=qg, database_global=dg)
    with torch.no_grad():
        enc = model.eval().encode(db, role=1, global_=dg)
    assert isinstance(enc, EncodedLocal) and enc.num_images == 9
    a = score_shortlist(model, q, db, short, **kw)
    b = score_shortlist(model, q, db, short, database_encoded=enc, **kw)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if mode == "pairwise":
        with torch.no_grad():
            for r in range(3):
                for c in range(4):
                    i = int(short[r, c])
                    if i < 0:
                        assert a[r, c] == float("-inf")
                        continue
                    ref = model.score(q[r : r + 1], db[i].view(1, 1, 5, 8), None, None,
                                      qg[r : r + 1], dg[i].view(1, 1, 5))  # fmt: skip
                    assert float(a[r, c]) == pytest.approx(float(ref), abs=1e-6)
    with pytest.raises(ValueError, match="database_encoded holds 9"):
        score_shortlist(model, q, db[:8], short.clamp(max=7), database_encoded=enc, **kw)


def test_files_of_format_version_1_load_as_the_joint_design(tmp_path):
    torch.manual_seed(4)
    old = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=16, design="joint").eval()
    config = {k: v for k, v in old.config.items() if k != "design"}  # as version 1 wrote it
    arrays = {k: v.detach().numpy() for k, v in old.state_dict().items()}
    path = save_arrays(
        tmp_path / "v1.npz",
        arrays,
        {"format": "graphrerank.LocalMatcher", "version": 1, "config": config, "metadata": {}},
    )
    model = LocalMatcher.load(path)
    assert model.config["design"] == "joint"
    q, c = torch.randn(2, 5, 8), torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.score(q, c), old.score(q, c))


def test_late_model_saves_and_reloads_with_its_design(tmp_path):
    torch.manual_seed(5)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=16).eval()
    path = model.save(tmp_path / "late")
    _, info = load_arrays(path, format="graphrerank.LocalMatcher", version=2)
    assert info["version"] == 2 and info["config"]["design"] == "late"
    back = LocalMatcher.load(path)
    q, c = torch.randn(2, 5, 8), torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(back.score(q, c), model.score(q, c))


def test_design_is_checked():
    with pytest.raises(ValueError, match="design must be one of"):
        LocalMatcher(8, design="fast")
    joint = LocalMatcher(8, design="joint")
    with pytest.raises(ValueError, match='design="late"'):
        joint.encode(torch.randn(1, 3, 8), role=1)
    late = LocalMatcher(8)
    with pytest.raises(ValueError, match="role must be 0"):
        late.encode(torch.randn(1, 3, 8), role=2)


# ---------------------------------------------------------------- hardening (fuzz findings)
def test_rerank_shortlist_refuses_ids_out_of_range():
    s = torch.tensor([[0.9, 0.8, 0.7]])
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"indices holds the id 5, out of range"):
        rerank_shortlist(s, torch.tensor([[0, 1, 5]]), z, num_items=3)
    with pytest.raises(ValueError, match=r"indices holds the id 1099511627776"):
        rerank_shortlist(s, torch.tensor([[0, 1, 2**40]]), z)
    out = rerank_shortlist(s, torch.tensor([[0, 1, 2]]), z, num_items=3)
    assert sorted(out.indices[0].tolist()) == [0, 1, 2]


def test_tune_fusion_refuses_labels_of_the_wrong_length():
    s = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 0.5]])
    i = torch.tensor([[0, 1], [1, 2], [2, 0]])
    z = torch.zeros(3, 2)
    labels = torch.tensor([0, 0, 1])
    tune_fusion(s, i, z, labels, lambdas=[0.5], gammas=[1.0])  # all-vs-all: fine
    with pytest.raises(ValueError, match="database_labels has 4 entries but the ranking 3"):
        tune_fusion(s, i, z, torch.tensor([0, 0, 1, 1]), lambdas=[0.5], gammas=[1.0])
    with pytest.raises(ValueError, match="query_labels has 2 entries"):
        tune_fusion(s, i, z, labels, torch.tensor([0, 1]), lambdas=[0.5], gammas=[1.0])


def test_one_query_shortlist_in_one_pass_equals_its_pairs():
    # one query's whole shortlist takes the shared-query path (one product for all cosines)
    torch.manual_seed(6)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=2, ffn=16).double().eval()
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 6, 8, generator=g, dtype=torch.float64)
    db = torch.randn(7, 5, 8, generator=g, dtype=torch.float64)
    short = torch.tensor([[3, 0, 6, 1, 5]])
    out = score_shortlist(model, q, db, short, batch_size=5)
    with torch.no_grad():
        ref = model(model.graph(q.expand(5, -1, -1), db[short[0]].unsqueeze(1)))
    torch.testing.assert_close(out[0].double(), ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the inference pass of match
def _encoded(model, q, c, qp, cp, shared):
    b, w = c.shape[:2]
    qe = model.encode(q[:1] if shared else q, role=0,
                      positions=None if qp is None else (qp[:1] if shared else qp))  # fmt: skip
    ce = model.encode(
        c.reshape(b * w, *c.shape[2:]),
        role=1,
        positions=None if cp is None else cp.reshape(b * w, *cp.shape[2:]),
    )
    return qe, ce


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("pos", [False, True])
@pytest.mark.parametrize(
    ("b", "w", "lq", "lc", "k"),
    [(4, 1, 7, 5, 2), (4, 3, 7, 5, 2), (2, 2, 1, 1, 2), (3, 1, 3, 9, 4), (5, 1, 6, 6, 3)],
)
def test_inference_pass_equals_transformerconv(monkeypatch, numba, shared, pos, b, w, lq, lc, k):
    # no autograd: match takes the inference pass (one topk pass, block products, readout in
    # blocks of rows: 40 correspondences per block here, so that several blocks run)
    from graphrerank.models import matcher

    if numba:
        pytest.importorskip("numba")
    monkeypatch.setattr(matcher, "_USE_NUMBA", numba)
    monkeypatch.setattr(matcher, "_READOUT_EDGES", 40)
    calls = []
    inner = matcher.LocalMatcher._match_inference
    monkeypatch.setattr(
        matcher.LocalMatcher, "_match_inference",
        lambda self, *a: calls.append(1) or inner(self, *a),
    )  # fmt: skip
    torch.manual_seed(7)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=2, ffn=24, use_positions=pos,
                         k_intra=3, k_cross=k).double().eval()  # fmt: skip
    q, c, qp, cp, _, _ = _inputs(b, w, lq, lc, 8, pos, None, seed=8)
    if shared:
        q = q[:1].expand(b, -1, -1)
        qp = None if qp is None else qp[:1].expand(b, -1, -1)
    with torch.no_grad():
        graph = model(model.graph(q, c, qp, cp)).view(b, w)
        qe, ce = _encoded(model, q, c, qp, cp, shared)
        fast = model.match(qe, ce, w)
        assert calls
        monkeypatch.setattr(matcher, "_FAST_INFERENCE", False)
        autograd_pass = model.match(qe, ce, w)
    torch.testing.assert_close(fast, graph, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, autograd_pass, rtol=1e-12, atol=1e-12)


def test_inference_pass_at_the_default_sizes_in_float32():
    # the default model (k_cross = 4, d = 32, 2 heads, 2 layers) on one query's shortlist of
    # 12 in one batched pass against PyG's TransformerConv on the match graph, in float64
    torch.manual_seed(9)
    model = LocalMatcher(16).eval()
    g = torch.Generator().manual_seed(10)
    q = torch.randn(1, 20, 16, generator=g)
    db = torch.randn(13, 24, 16, generator=g)
    short = torch.arange(1, 13).view(1, -1)
    with torch.no_grad():
        enc = model.encode(db, role=1)
        out = score_shortlist(model, q, db, short, batch_size=12, database_encoded=enc)
        ref = model.double()(
            model.graph(q.double().expand(12, -1, -1), db[1:].double().unsqueeze(1))
        )
    torch.testing.assert_close(out[0].double(), ref, rtol=0, atol=2e-5)


def _topk_reference(x, k, dim):
    # sorted, largest first, from a full descending sort (no ties in random data)
    order = torch.from_numpy((-x.numpy()).argsort(axis=dim, kind="stable"))
    idx = order.narrow(dim, 0, k)
    return x.gather(dim, idx), idx


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("shape", "k1", "k2"),
    [((3, 5, 7), 2, 5), ((2, 1, 1), 1, 1), ((1, 9, 3), 3, 4), ((4, 64, 64), 4, 4)],
)
def test_topk_along_both_axes(numba, dtype, shape, k1, k2):
    from graphrerank.models.matcher import _topk_both

    if numba:
        pytest.importorskip("numba")
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(11), dtype=dtype)
    s1, i1, s2, i2 = _topk_both(x, k1, k2, use_numba=numba)
    r1, j1 = _topk_reference(x, k1, 2)
    r2, j2 = _topk_reference(x, k2, 1)
    assert i1.dtype == i2.dtype == torch.long and s1.dtype == s2.dtype == dtype
    assert torch.equal(i1, j1) and torch.equal(s1, r1)
    assert torch.equal(i2, j2) and torch.equal(s2, r2)


def test_topk_kernel_keeps_the_first_of_tied_values():
    pytest.importorskip("numba")
    from graphrerank.models.matcher import _topk_both

    x = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [3.0, 2.0, 3.0, 3.0]]])
    s1, i1, s2, i2 = _topk_both(x, 2, 1, use_numba=True)
    assert i1.tolist() == [[[1, 2], [0, 2]]] and s1.tolist() == [[[3.0, 3.0], [3.0, 3.0]]]
    assert i2.tolist() == [[[1, 0, 0, 1]]] and s2.tolist() == [[[3.0, 3.0, 3.0, 3.0]]]


def test_encoded_rows_by_index_select_equal_advanced_indexing():
    torch.manual_seed(12)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=16, global_dim=5).eval()
    with torch.no_grad():
        enc = model.encode(torch.randn(6, 4, 8), role=1, global_=torch.randn(6, 5))
    for index in (
        torch.tensor([4, 0, 4, 2]),
        torch.tensor([-1, 1]),
        torch.tensor([], dtype=torch.long),
    ):
        rows = enc[index]
        for got, full in zip(rows, enc, strict=True):
            assert torch.equal(got, full[index])


def test_topk_falls_back_to_torch_without_numba(monkeypatch):
    import sys

    from graphrerank.models import matcher

    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.setattr(matcher, "_TOPK_KERNEL", None)
    assert matcher._topk_kernel() is False
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(13))
    s1, i1, s2, i2 = matcher._topk_both(x, 3, 2)
    assert torch.equal(i1, _topk_reference(x, 3, 2)[1]) and torch.equal(
        s2, _topk_reference(x, 2, 1)[0]
    )


def test_topk_along_both_axes_refuses_k_beyond_the_axis():
    from graphrerank.models.matcher import _topk_both

    with pytest.raises(ValueError, match="out of range"):
        _topk_both(torch.randn(1, 3, 2), 3, 1)
    with pytest.raises(ValueError, match="out of range"):
        _topk_both(torch.randn(1, 3, 2), 1, 4)


def test_a_kernel_that_fails_warns_once_and_falls_back_to_torch(monkeypatch):
    from graphrerank.models import matcher

    def broken(*args):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(matcher, "_TOPK_KERNEL", broken)
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(14))
    with pytest.warns(RuntimeWarning, match="numba top-k kernel failed"):
        s1, i1, s2, i2 = matcher._topk_both(x, 3, 2, use_numba=True)
    assert matcher._TOPK_KERNEL is False  # torch.topk from now on, without a new warning
    r1, j1 = _topk_reference(x, 3, 2)
    r2, j2 = _topk_reference(x, 2, 1)
    assert torch.equal(i1, j1) and torch.equal(s1, r1)
    assert torch.equal(i2, j2) and torch.equal(s2, r2)
