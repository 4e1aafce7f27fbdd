"""Bad input to the public functions of ``graphrerank.models`` gets a clear error naming the
argument; numpy arrays and lists are read as tensors, with the tensors' results."""

import functools

import numpy as np
import pytest
import torch

from graphrerank.models import (
    LocalMatcher,
    chamfer_similarity,
    compress_local,
    fuse_scores,
    match_graph,
    mine_shortlists,
    rerank_shortlist,
    score_shortlist,
    sliding_windows,
    tune_fusion,
)

NAN, INF = float("nan"), float("inf")


def _q(b=2, lq=3, d=4):
    return torch.randn(b, lq, d, generator=torch.Generator().manual_seed(0))


def _c(b=2, w=2, lc=3, d=4):
    return torch.randn(b, w, lc, d, generator=torch.Generator().manual_seed(1))


def _with(t, value):
    t = t.clone()
    t.view(-1)[1] = value
    return t


def _ranking():
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])
    indices = torch.tensor([[0, 1, 2], [2, 0, 1]])
    logits = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    return scores, indices, logits


_S, _I, _L = _ranking()
_G = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
_LABELS = torch.tensor([0, 0, 1])
_QLABELS = torch.tensor([0, 1])

CASES = [
    # model of the wrong type
    ("score_shortlist model str", lambda: score_shortlist("model", _q(), _q(b=3), _I), TypeError,
     r"model must be a graphrerank\.models\.LocalMatcher"),
    # wrong number of dimensions
    ("chamfer query 2-D", lambda: chamfer_similarity(_q()[0], _c()), ValueError,
     r"query must be 3-D, got shape \(3, 4\)"),
    ("chamfer candidates 3-D", lambda: chamfer_similarity(_q(), _c()[0]), ValueError,
     r"candidates must be 4-D, got shape \(2, 3, 4\)"),
    ("chamfer dims disagree", lambda: chamfer_similarity(_q(d=4), _c(d=5)), ValueError,
     r"candidates \(2, 2, 3, 5\) must match query"),
    ("match_graph query 2-D", lambda: match_graph(_q()[0], _c()), ValueError, r"query must be 3-D"),
    ("compress_local 2-D", lambda: compress_local(_q()[0]), ValueError, r"local must be 3-D"),
    ("rerank scores 1-D", lambda: rerank_shortlist(_S[0], _I, _L), ValueError,
     r"scores must be 2-D"),
    ("mine 1-D", lambda: mine_shortlists(_G[0], torch.tensor([0, 1]), 1), ValueError,
     r"global_descriptors must be a 2-D"),
    ("score_shortlist shortlist 1-D", lambda: score_shortlist(None, _q(), _q(b=3), _I[0]),
     ValueError, r"shortlist must be 2-D"),
    ("score_shortlist rows", lambda: score_shortlist(None, _q(b=3), _q(b=3), _I), ValueError,
     r"shortlist has 2 row\(s\) but query_local holds 3"),
    # wrong kinds of values
    ("chamfer int", lambda: chamfer_similarity(_q().long(), _c()), TypeError,
     r"query must hold floating point"),
    ("match_graph str", lambda: match_graph("q", _c()), TypeError, r"query must be a torch"),
    ("fuse list of str", lambda: fuse_scores(["a"], _L[0, :1]), TypeError, r"global_scores"),
    ("rerank float ids", lambda: rerank_shortlist(_S, _I.float(), _L), TypeError,
     r"indices must hold integer ids"),
    ("rerank ids below -1", lambda: rerank_shortlist(_S, _with(_I, -2), _L), ValueError,
     r"indices holds the id -2"),
    ("rerank repeated id", lambda: rerank_shortlist(_S, _with(_I, 0), _L), ValueError,
     r"indices repeats an id within row 0"),
    ("tune ids beyond labels", lambda: tune_fusion(_S, _I + 1, _L, _LABELS, _QLABELS), ValueError,
     r"indices holds the id 3"),
    ("tune lambdas scalar", lambda: tune_fusion(_S, _I, _L, _LABELS, _QLABELS, lambdas=0.5), TypeError,
     r"lambdas must be a sequence"),
    ("score_shortlist id out of range", lambda: score_shortlist(None, _q(), _q(), _I + 5),
     ValueError, r"shortlist holds the id 7"),
    ("mine repeated index", lambda: mine_shortlists(_G, torch.tensor([0, 0, 1]), 1), ValueError,
     r"index repeats an id"),
    ("mine index out of range", lambda: mine_shortlists(_G, torch.tensor([0, 9]), 1), ValueError,
     r"index holds the id 9"),
    # NaN / infinite values
    *[
        (f"{name} {v}", fn(v), ValueError, rf"{arg} contains NaN")
        for v in (NAN, INF)
        for name, arg, fn in [
            ("rerank", "scores", lambda v: lambda: rerank_shortlist(_with(_S, v), _I, _L)),
            ("score_shortlist", "query_local",
             lambda v: lambda: score_shortlist(None, _with(_q(), v), _q(b=3), _I)),
            ("chamfer", "query", lambda v: lambda: chamfer_similarity(_with(_q(), v), _c())),
            ("chamfer", "candidates", lambda v: lambda: chamfer_similarity(_q(), _with(_c(), v))),
            ("match_graph", "query", lambda v: lambda: match_graph(_with(_q(), v), _c())),
            ("match_graph", "candidates", lambda v: lambda: match_graph(_q(), _with(_c(), v))),
            ("matcher", "query", lambda v: lambda: _matcher().score(_with(_q(), v), _c())),
            ("mine", "global_descriptors",
             lambda v: lambda: mine_shortlists(_with(_G, v), torch.tensor([0, 1, 2]), 1)),
            ("compress", "local", lambda v: lambda: compress_local(_with(_q(), v))),
        ]
    ],
    ("fuse logits NaN", lambda: fuse_scores(_S[:, :2], _with(_L, NAN)), ValueError,
     r"logits contains NaN"),
    ("tune logits NaN", lambda: tune_fusion(_S, _I, _with(_L, NAN), _LABELS, _QLABELS), ValueError,
     r"logits contains NaN"),
    ("score_shortlist database NaN", lambda: score_shortlist(None, _q(), _with(_q(b=3), NAN), _I),
     ValueError, r"database_local contains NaN or infinite values"),
    ("score_shortlist database short", lambda: score_shortlist(None, _q(), _q(b=1), _I),
     ValueError, r"shortlist holds the id 2.*database_local holds 1 image"),
    ("mine index one id", lambda: mine_shortlists(_G, torch.tensor([1]), 1), ValueError,
     r"index must hold at least 2 ids"),
    ("mine descriptors short", lambda: mine_shortlists(_G[:1], torch.tensor([0, 2]), 1),
     ValueError, r"index holds the id 2.*global_descriptors holds 1 row"),
    ("sliding_windows huge", lambda: sliding_windows(10**15, 4, 1), ValueError,
     r"length=1000000000000000.* would make about"),
    # model settings too large (would exhaust memory or never finish)
    ("matcher in_dim huge", lambda: LocalMatcher(10**12), ValueError, r"in_dim must be <= 65536"),
    ("matcher hidden huge", lambda: LocalMatcher(8, hidden=10**12), ValueError,
     r"hidden must be <= 65536"),
    ("matcher num_layers huge", lambda: LocalMatcher(8, num_layers=10**9), ValueError,
     r"num_layers must be <= 64"),
    ("matcher weights", lambda: LocalMatcher(8, hidden=65536, ffn=65536, heads=1), ValueError,
     r"would hold about .* weights"),
]  # fmt: skip


def _matcher():
    torch.manual_seed(0)
    return LocalMatcher(4, hidden=8, heads=2, num_layers=1, ffn=16).eval()


@pytest.mark.parametrize(
    ("call", "error", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_naming_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def _flipped(t):
    """A numpy array with negative strides holding the values of ``t``."""
    return np.ascontiguousarray(t.numpy()[::-1])[::-1]


@pytest.mark.parametrize("kind", ["numpy", "negative_stride", "list"])
def test_numpy_and_lists_give_the_tensor_results(kind):
    conv = {
        "numpy": lambda t: t.numpy(),
        "negative_stride": _flipped,
        "list": lambda t: t.tolist(),
    }[kind]
    q, c, db = _q(), _c(), _q(b=3)
    close = functools.partial(torch.testing.assert_close, check_dtype=kind != "list")
    close(chamfer_similarity(conv(q), conv(c)), chamfer_similarity(q, c))
    g, g_ref = match_graph(conv(q), conv(c)), match_graph(q, c)
    assert torch.equal(g.edge_index, g_ref.edge_index)
    close(g.edge_sim, g_ref.edge_sim)
    close(fuse_scores(conv(_S[:, :2]), conv(_L)), fuse_scores(_S[:, :2], _L))
    out, ref = rerank_shortlist(conv(_S), conv(_I), conv(_L)), rerank_shortlist(_S, _I, _L)
    assert torch.equal(out.indices, ref.indices)
    close(out.scores, ref.scores)
    best = tune_fusion(
        conv(_S), conv(_I), conv(_L), conv(_LABELS), conv(_QLABELS), lambdas=[0.0, 1.0]
    )
    ref_best = tune_fusion(_S, _I, _L, _LABELS, _QLABELS, lambdas=[0.0, 1.0])
    assert (best.lambda_value, best.gamma, best.map) == (ref_best[0], ref_best[1], ref_best[2])
    assert torch.equal(compress_local(conv(q), storage="binary").data,
                       compress_local(q, storage="binary").data)  # fmt: skip
    idx = torch.tensor([0, 1, 3])
    assert torch.equal(mine_shortlists(conv(_G), conv(idx), 2, backend="torch"),
                       mine_shortlists(_G, idx, 2, backend="torch"))  # fmt: skip
    close(score_shortlist(None, conv(q), conv(db), conv(_I)), score_shortlist(None, q, db, _I))


def test_padding_may_score_minus_inf():
    # -inf first-stage scores are allowed where the index is padding (-1), and only there
    scores = torch.tensor([[0.9, float("-inf")]])
    out = rerank_shortlist(scores, torch.tensor([[3, -1]]), torch.tensor([[0.0]]))
    assert out.indices.tolist() == [[3, -1]]
    with pytest.raises(ValueError, match="scores contains NaN or infinite values at real"):
        rerank_shortlist(scores, torch.tensor([[3, 4]]), torch.tensor([[0.0]]))


def test_mixed_precision_matches_float64():
    q, c = _q(), _c()
    torch.testing.assert_close(
        chamfer_similarity(q.double(), c), chamfer_similarity(q.double(), c.double())
    )
    g = match_graph(q, c.double())
    assert g.x.dtype == torch.float64
    db = _q(b=3)
    torch.testing.assert_close(
        score_shortlist(None, q.double(), db, _I), score_shortlist(None, q, db, _I)
    )
    # a database row the shortlist does not name is not read
    out = score_shortlist(None, q, _with(db, NAN), torch.tensor([[1, 2], [2, 1]]))
    assert torch.isfinite(out).all()


def test_integer_inputs_keep_their_results():
    # integer descriptors (e.g. uint8 SIFT) and integer logits are read as numbers
    x = torch.randint(0, 255, (2, 3, 16), generator=torch.Generator().manual_seed(2))
    for storage in ("float32", "float16"):
        ref = compress_local(x.float(), storage=storage).data
        assert torch.equal(compress_local(x.to(torch.uint8), storage=storage).data, ref)
    logits = torch.tensor([[-2, 0, 3]])
    torch.testing.assert_close(
        fuse_scores(torch.tensor([[0.5, 0.2, 0.1]]), logits),
        fuse_scores(torch.tensor([[0.5, 0.2, 0.1]]), logits.float()),
    )
