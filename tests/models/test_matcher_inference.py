"""LocalMatcher's inference pass: global nodes, mutual correspondences read once, exp2 rbf."""

import itertools

import pytest
import torch

from graphrerank.models import LocalMatcher, matcher, score_shortlist


def _inputs(b, w, lq, lc, d, glob, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, d, generator=g, dtype=dtype)
    c = torch.randn(b, w, lc, d, generator=g, dtype=dtype)
    qg = torch.randn(b, glob, generator=g, dtype=dtype)
    cg = torch.randn(b, w, glob, generator=g, dtype=dtype)
    return q, c, qg, cg


def _spy_inference(monkeypatch):
    calls = []
    inner = matcher.LocalMatcher._match_inference
    monkeypatch.setattr(
        matcher.LocalMatcher, "_match_inference",
        lambda self, *a: calls.append(1) or inner(self, *a),
    )  # fmt: skip
    return calls


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize(
    ("b", "w", "lq", "lc", "k"),
    [(4, 1, 7, 5, 2), (4, 3, 7, 5, 2), (2, 2, 1, 1, 2), (3, 1, 3, 9, 4), (2, 1, 2, 2, 2)],
)
def test_inference_pass_with_global_nodes_equals_transformerconv(
    monkeypatch, numba, shared, b, w, lq, lc, k
):
    # the global node is matched in the inference pass too (it took the autograd pass before)
    if numba:
        pytest.importorskip("numba")
    monkeypatch.setattr(matcher, "_USE_NUMBA", numba)
    monkeypatch.setattr(matcher, "_READOUT_EDGES", 40)  # several blocks of rows
    calls = _spy_inference(monkeypatch)
    torch.manual_seed(3)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=2, ffn=24, global_dim=6,
                         k_intra=3, k_cross=k).double().eval()  # fmt: skip
    q, c, qg, cg = _inputs(b, w, lq, lc, 8, 6, seed=4)
    if shared:
        q, qg = q[:1].expand(b, -1, -1), qg[:1].expand(b, -1)
    with torch.no_grad():
        graph = model(model.graph(q, c, query_global=qg, candidate_global=cg)).view(b, w)
        nq = 1 if shared else b
        qe = model.encode(q[:nq], role=0, global_=qg[:nq])
        ce = model.encode(c.reshape(b * w, lc, 8), role=1, global_=cg.reshape(b * w, 6))
        fast = model.match(qe, ce, w)
        assert calls
        monkeypatch.setattr(matcher, "_FAST_INFERENCE", False)
        autograd_pass = model.match(qe, ce, w)
    torch.testing.assert_close(fast, graph, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, autograd_pass, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("w", "lq", "lc", "k"), [(1, 6, 5, 2), (3, 4, 3, 2), (1, 2, 2, 2)])
def test_readout_runs_once_per_distinct_correspondence(monkeypatch, w, lq, lc, k):
    # a correspondence in both lists (i among the k best of j and j among the k best of i)
    # goes through the MLP once: count the rows GELU sees against the distinct pairs of the
    # two lists, written out here from full sorts of the cosines
    rows = []
    gelu = torch._C._nn.gelu
    monkeypatch.setattr(
        torch._C._nn, "gelu", lambda x, *a, **kw: rows.append(x.shape[0]) or gelu(x, *a, **kw)
    )
    torch.manual_seed(5)
    model = LocalMatcher(8, hidden=16, heads=2, num_layers=1, ffn=16, k_cross=k).double().eval()
    b = 3
    q, c, _, _ = _inputs(b, w, lq, lc, 8, 1, seed=6)
    with torch.no_grad():
        fast = model.match(
            model.encode(q, role=0), model.encode(c.reshape(b * w, lc, 8), role=1), w
        )
        graph = model(model.graph(q, c)).view(b, w)
    torch.testing.assert_close(fast, graph, rtol=1e-12, atol=1e-12)
    qn = torch.nn.functional.normalize(q, dim=-1)
    cn = torch.nn.functional.normalize(c.reshape(b, w * lc, 8), dim=-1)
    distinct = 0
    for g in range(b):
        sim = (cn[g] @ qn[g].T).tolist()  # (n, Lq)
        n = len(sim)
        pairs = set()
        for j, i in itertools.product(range(n), range(lq)):
            if sorted(range(lq), key=lambda t: -sim[j][t]).index(i) < min(k, lq):
                pairs.add((j, i))
            if sorted(range(n), key=lambda t: -sim[t][i]).index(j) < min(k, n):
                pairs.add((j, i))
        distinct += len(pairs)
    assert sum(rows) == distinct < b * (w * lc * min(k, lq) + lq * min(k, w * lc))


def test_inference_pass_with_a_global_node_at_the_default_sizes_in_float32():
    # the default sizes with a global node, one query's shortlist in one batched pass of
    # score_shortlist (database encoded), against PyG's TransformerConv in float64
    torch.manual_seed(7)
    model = LocalMatcher(16, global_dim=12).eval()
    g = torch.Generator().manual_seed(8)
    q, db = torch.randn(1, 20, 16, generator=g), torch.randn(13, 24, 16, generator=g)
    qg, dbg = torch.randn(1, 12, generator=g), torch.randn(13, 12, generator=g)
    short = torch.arange(1, 13).view(1, -1)
    with torch.no_grad():
        enc = model.encode(db, role=1, global_=dbg)
        out = score_shortlist(model, q, db, short, batch_size=12, database_encoded=enc,
                              query_global=qg, database_global=dbg)  # fmt: skip
        m = model.double()
        ref = m(m.graph(q.double().expand(12, -1, -1), db[1:].double().unsqueeze(1),
                        query_global=qg.double().expand(12, -1),
                        candidate_global=dbg[1:].double().unsqueeze(1)))  # fmt: skip
    torch.testing.assert_close(out[0].double(), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rbf_by_exp2_equals_the_exp_formula(dtype):
    model = LocalMatcher(4, num_rbf=8).to(dtype)
    s = torch.linspace(-1, 1, 401, dtype=dtype).view(1, 401)
    centers = model.rbf_centers.double()  # linspace(-1, 1, 8), in the model's dtype
    ref = torch.exp(-(((s.double().unsqueeze(-1) - centers) / (2.0 / 7)) ** 2))
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(model._rbf_(s).double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(model._rbf_(s), model._rbf(s), rtol=tol, atol=tol)


def test_the_blocks_share_their_code_and_keep_their_weight_names():
    from graphrerank.models.matcher import _Block, _EncoderBlock

    assert issubclass(_Block, _EncoderBlock)
    torch.manual_seed(0)
    joint = LocalMatcher(4, hidden=8, heads=2, num_layers=1, ffn=8, design="joint")
    late = LocalMatcher(4, hidden=8, heads=2, num_layers=1, ffn=8)
    conv = ["lin_key", "lin_query", "lin_value", "lin_edge", "lin_skip"]

    def names(prefix, layers):
        out = []
        for layer in layers:
            if layer in ("intra", "cross"):
                for lin in conv:
                    out += [f"{prefix}{layer}.{lin}.weight"]
                    if lin != "lin_edge":
                        out += [f"{prefix}{layer}.{lin}.bias"]
            elif layer == "ffn":
                out += [f"{prefix}ffn.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
            else:
                out += [f"{prefix}{layer}.weight", f"{prefix}{layer}.bias"]
        return out

    block_joint = names("blocks.0.", ["norm_intra", "intra", "norm_cross", "cross", "norm_ffn",
                                      "ffn"])  # fmt: skip
    block_late = names("blocks.0.", ["norm_intra", "intra", "norm_ffn", "ffn"])
    assert [k for k in joint.state_dict() if k.startswith("blocks.")] == block_joint
    assert [k for k in late.state_dict() if k.startswith("blocks.")] == block_late
    assert [k for k in late.state_dict() if k.startswith("cross.")] == names("", ["cross"])


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
def test_linear_equals_addmm(monkeypatch, onednn, gelu):
    # float32 products of the inference pass (oneDNN's linear where torch has it) against a
    # float64 addmm, with a strided weight (a column slice, as the readout's first layer)
    monkeypatch.setattr(matcher, "_USE_ONEDNN", onednn)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(300, 72, generator=g)
    w = torch.randn(32, 73, generator=g)[:, :72] * 0.2
    bias = torch.randn(32, generator=g)
    ref = torch.addmm(bias.double(), x.double(), w.double().T)
    if gelu:
        ref = torch.nn.functional.gelu(ref)
    got = matcher._linear(x, w, bias, gelu=gelu)
    assert got.dtype == torch.float32 and got.shape == (300, 32)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        matcher._linear(x, w.T.contiguous().T), x @ w.T, rtol=1e-5, atol=1e-5
    )


def test_inference_pass_with_and_without_onednn_agree_in_float32(monkeypatch):
    torch.manual_seed(10)
    model = LocalMatcher(16).eval()
    g = torch.Generator().manual_seed(11)
    q, db = torch.randn(1, 20, 16, generator=g), torch.randn(40, 24, 16, generator=g)
    with torch.no_grad():
        enc, qe = model.encode(db, role=1), model.encode(q, role=0)
        fast = model.match(qe, enc, 1)
        monkeypatch.setattr(matcher, "_USE_ONEDNN", False)
        plain = model.match(qe, enc, 1)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_a_failing_onednn_linear_warns_once_and_falls_back(monkeypatch):
    if not matcher._onednn_ok(torch.zeros(1)):
        pytest.skip("torch without oneDNN's linear")

    def broken(*args):
        raise RuntimeError("no primitive")

    monkeypatch.setattr(matcher, "_USE_ONEDNN", True)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    x, w = torch.randn(5, 3), torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="oneDNN's linear failed"):
        out = matcher._linear(x, w, gelu=True)
    assert matcher._USE_ONEDNN is False  # torch.addmm from now on
    torch.testing.assert_close(out, torch.nn.functional.gelu(x @ w.T))


def test_a_onednn_linear_that_computes_something_else_is_not_used(monkeypatch):
    # the op is private to torch: its first use is checked against addmm + GELU
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        pytest.skip("torch without oneDNN's linear")

    def other(x, w, b, attr, scalars, algorithm):  # a linear without its GELU
        return torch.addmm(b, x, w.T)

    monkeypatch.setattr(matcher, "_USE_ONEDNN", True)
    monkeypatch.setattr(matcher, "_ONEDNN_CHECKED", False)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", other)
    x, w = torch.randn(5, 3), torch.randn(4, 3)
    with pytest.warns(RuntimeWarning, match="does not match"):
        out = matcher._linear(x, w, gelu=True)
    assert matcher._USE_ONEDNN is False
    torch.testing.assert_close(out, torch.nn.functional.gelu(x @ w.T))
