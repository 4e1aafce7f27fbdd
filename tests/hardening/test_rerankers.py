"""Every re-ranker the package lists, fed generated edge and bad inputs: a valid result
(shape ``(Q, k)``, finite scores sorted best first, indices in range or ``-1`` padding, no
repeats), or a ``ValueError`` / ``TypeError`` naming the argument or the setting. Plus the
regressions of the estimator defects (SuperGlobal ``K >= M`` and ``beta = inf``, infinite
real settings, KReciprocal on ``requires_grad`` and 1e30 features).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.functional import normalize

import graphrerank.rerankers as R
from graphrerank._params import Int, Real
from graphrerank.rerankers import KReciprocal, Reranker, SuperGlobal

from .strategies import features, variant

# Per class a fifth of the profile's examples: ``ci`` (25) runs 5 per class and test, the
# ``long`` profile 200.
_SETTINGS = settings(
    deadline=None,
    max_examples=max(3, settings.default.max_examples // 5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: Every public re-ranker class (``graphrerank.rerankers.__all__``).
CLASSES = sorted(
    (
        c
        for c in (getattr(R, name) for name in R.__all__)
        if isinstance(c, type) and issubclass(c, Reranker) and c is not Reranker
    ),
    key=lambda c: c.__name__,
)


def _unit(n, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


# ----------------------------------------------------------------------------- SuperGlobal
def _ref_superglobal(q, x, m, k_nb, beta):
    """MDescAug then RerankwMDA for one query as the official code computes them (float64,
    no overflow for the betas used here); returns the shortlist order and scores."""
    sl = torch.argsort(x @ q, descending=True)[:m]
    xm = x[sl]
    g = xm @ xm.T
    order = torch.argsort(g, dim=1, descending=True)[:, : k_nb + 1]
    w = g.gather(1, order) * beta
    w[:, 0] = 1.0
    xt = (w[:, :, None] * xm[order]).sum(1) / w.sum(1, keepdim=True)
    a = xt @ q
    qt = xt[torch.argsort(a, descending=True)[: k_nb + 1]].max(0).values
    f = (a + xt @ qt) / 2
    new = torch.argsort(f, descending=True)
    return sl[new], f[new]


@pytest.mark.parametrize(("M", "K"), [(5, 5), (5, 9), (1, 1), (3, 400)])
def test_superglobal_refuses_K_not_below_M(M, K):
    """``K >= M`` was accepted and gave NaN / -1e36 scores: K counts neighbours of an item
    within its shortlist of M items, itself excluded, so at most M - 1."""
    x = _unit(30, 4)
    with pytest.raises(ValueError, match=rf"K must be smaller than M .* K={K} and M={M}"):
        SuperGlobal(M=M, K=K, backend="torch").fit(x)


def test_superglobal_K_of_M_minus_one_and_a_short_database():
    x = _unit(30, 4)
    out = SuperGlobal(M=5, K=4, backend="torch").fit(x).rerank(x[:3], k=8)
    assert torch.isfinite(out.scores).all()
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    # M beyond the database: the shortlist is the database, K <= N - 1 neighbours
    small = SuperGlobal(M=50, K=9, backend="torch").fit(x[:6]).rerank(x[:2], k=6)
    assert torch.isfinite(small.scores).all() and small.indices.shape == (2, 6)


def test_superglobal_weights_that_sum_to_zero_are_not_divided_by():
    """Antipodal neighbours with beta = 1: weights [1, 0, -1] sum to 0 (the reference divides
    by it: inf/NaN); those neighbours weigh 0. Hand-worked: the refined descriptors are the
    items themselves, a = [1, -1, 0], q~ = max(x) = [1, 1], b = [1, -1, 1], final =
    [1, -1, 0.5]."""
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for beta in (1.0, 10.0):
        out = SuperGlobal(M=3, K=2, beta=beta, backend="torch").fit(x).rerank(x[:1], k=3)
        assert out.indices.tolist() == [[0, 2, 1]]
        torch.testing.assert_close(out.scores, torch.tensor([[1.0, 0.5, -1.0]], dtype=x.dtype))


@pytest.mark.parametrize("beta", [0.0, 0.15, 1.0, 7.5, 1e6, 1e30])
def test_superglobal_large_beta_equals_the_reference(beta):
    """beta > 1 is computed with the weights divided by beta (no overflow): same result."""
    g = torch.Generator().manual_seed(3)
    c = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x = normalize(c[torch.arange(40) % 4] + 0.4 * torch.randn(40, 6, generator=g, dtype=c.dtype))
    q = normalize(c + 0.4 * torch.randn(4, 6, generator=g, dtype=c.dtype))
    out = SuperGlobal(M=12, K=3, beta=beta, backend="torch").fit(x).rerank(q, k=12)
    for i in range(q.shape[0]):
        idx, f = _ref_superglobal(q[i], x, 12, 3, beta)
        assert torch.equal(out.indices[i], idx)
        torch.testing.assert_close(out.scores[i], f)
    assert torch.isfinite(out.scores).all()


@pytest.mark.parametrize("beta", [math.inf, -math.inf, math.nan])
def test_superglobal_refuses_infinite_beta(beta):
    """``beta=inf`` gave all-NaN scores."""
    with pytest.raises(ValueError, match="beta"):
        SuperGlobal(M=5, K=2, beta=beta, backend="torch").fit(_unit(10, 3))


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (R.FastSpectralRanking, "gamma"),
        (R.RDiP, "gamma"),
        (R.OfflineDiffusion, "gamma"),
        (R.Diffusion, "gamma"),
        (R.Diffusion, "tol"),
        (R.AlphaQueryExpansion, "alpha"),
        (R.DatabaseAugmentation, "alpha"),
    ],
)
def test_real_settings_refuse_infinity(cls, name):
    """The real checker accepted +-inf everywhere (FSR and R-DiP ``gamma`` too)."""
    x = _unit(40, 4)
    for value in (math.inf, -math.inf):
        with pytest.raises(ValueError, match=rf"{name} must be"):
            cls(**{**cls._test_params(), name: value}).fit(x)


# ----------------------------------------------------------------------------- KReciprocal
def _kr(x, q=None, **kw):
    est = KReciprocal(k1=6, k2=3, **kw).fit(x)
    return est.rerank(q, k=8)


def test_kreciprocal_takes_requires_grad_tensors():
    """``requires_grad`` tensors were an autograd error; re-ranking needs no gradients."""
    x = _unit(30, 4)
    ref = _kr(x, x[:3])
    xr = x.clone().requires_grad_(True)
    out = _kr(xr, xr[:3])
    assert torch.equal(out.indices, ref.indices) and torch.equal(out.scores, ref.scores)
    assert not out.scores.requires_grad
    assert torch.equal(_kr(xr).indices, _kr(x).indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e18, 2.0**-60])
def test_kreciprocal_ranks_features_of_any_finite_magnitude(scale, dtype):
    """Finite features of 1e30 were a shape error or NaN scores: the distances are
    normalised per row, so a global scale changes nothing; the result equals the float64
    result at scale 1."""
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _kr(x, x[:3])
    ref_all = _kr(x)
    xs = (x * scale).to(dtype)
    out = _kr(xs, xs[:3])
    assert torch.isfinite(out.scores).all()
    assert torch.equal(out.indices, ref.indices)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out.scores.double(), ref.scores, atol=tol, rtol=tol)
    assert torch.equal(_kr(xs).indices, ref_all.indices)


def test_kreciprocal_float64_beyond_float64_squares():
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = _kr(x, x[:4])
    out = _kr(x * 1e200, x[:4] * 1e200)
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.scores, ref.scores)


def test_kreciprocal_queries_of_another_magnitude_than_the_database():
    """Queries of another magnitude than the fitted database: one scale for both (the
    database lists are recomputed): equal to the float64 result when both are scaled alike,
    finite and sorted when the queries are 1e25 times larger (their distances to the
    database then agree to 25 digits: ties in any precision)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    q = 3 * x[:3] + 0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    ref = _kr(x, q)
    out = _kr(x.float() * 1e-25, q.float() * 1e-25)
    assert torch.equal(out.indices, ref.indices)
    big_q = _kr(x.float(), (q * 1e25).float())
    assert torch.isfinite(big_q.scores).all()
    assert (big_q.scores[:, :-1] >= big_q.scores[:, 1:]).all()


# ----------------------------------------------------------------------------- the contract
def _make(cls, n: int, draw) -> Reranker:
    params = dict(cls._test_params())
    if cls is R.Pipeline:
        params["stages"] = [R.KNN(backend="torch"), SuperGlobal(M=20, K=3, backend="torch")]
    # a tiny database: shrink integer settings to the database now and then
    for name, c in cls._constraints().items():
        value = params.get(name, cls.default_params().get(name))
        if isinstance(c, Int) and isinstance(value, int) and value > n and draw(st.booleans()):
            low = c.low if isinstance(c.low, int) else 1  # a bound may name another setting
            params[name] = draw(st.integers(max(1, low), max(1, n)))
    if "backend" in cls.default_params() and draw(st.booleans()):
        params["backend"] = "torch"
    if cls is SuperGlobal and params.get("K", 0) >= params.get("M", 400):
        params["K"] = params["M"] - 1
    return cls(**params)


def _names(cls) -> set[str]:
    return {"database", "queries", "k", "initial", *cls._param_names(), "local"}


def _check_result(out, q: int, k: int, n: int) -> None:
    s, i = out.scores, out.indices
    assert tuple(s.shape) == (q, k) and tuple(i.shape) == (q, k), (s.shape, i.shape)
    assert i.dtype == torch.long
    assert ((i >= -1) & (i < n)).all(), i
    pad = i < 0
    assert torch.isneginf(s[pad]).all()
    assert torch.isfinite(s[~pad]).all(), s
    # best first: -inf padding at the end, and no repeats among real items
    assert (s[:, :-1] >= s[:, 1:]).all() if k > 1 else True
    for row in i.tolist():
        real = [v for v in row if v >= 0]
        assert len(real) == len(set(real)), row


def _outcome(f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return f(), None
        except (ValueError, TypeError) as err:
            return None, err


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
@_SETTINGS
@given(data=st.data())
def test_every_reranker_gives_a_valid_result_or_a_named_error(cls, data):
    draw = data.draw
    n = draw(st.sampled_from([1, 2, 3, 5, 12]))
    d = draw(st.sampled_from([1, 3, 4]))
    good = draw(st.booleans())
    if good:
        db = normalize(
            torch.from_numpy(
                np.random.default_rng(draw(st.integers(0, 99))).standard_normal((n, d))
            ),
            dim=1,
        )
        db = variant(
            db.to(draw(st.sampled_from([torch.float32, torch.float64]))),
            draw(
                st.sampled_from(
                    ["torch", "numpy", "numpy_negative_stride", "noncontiguous", "requires_grad"]
                )
            ),
        )
    else:
        db = draw(features(n, d))
    est = _make(cls, n, draw)
    fitted, err = _outcome(lambda: est.fit(db))
    if err is not None:
        assert any(name in str(err) for name in _names(cls)), (type(err), err)
        return
    assert fitted is est
    qkind = draw(st.sampled_from(["none", "good", "bad", "other_dim"]))
    if qkind == "none":
        q, nq = None, n
    elif qkind == "good":
        nq = draw(st.integers(1, 3))
        raw = torch.from_numpy(np.random.default_rng(7).standard_normal((nq, d)))
        q = variant(
            normalize(raw, dim=1).to(
                est.database_.dtype if hasattr(est.database_, "dtype") else torch.float32
            ),
            draw(st.sampled_from(["torch", "numpy", "requires_grad", "meta"])),
        )
    elif qkind == "bad":
        q = draw(features(None, d))
        nq = None
    else:
        q = draw(features(2, d + 1, valid=True))
        nq = 2
    k = draw(st.one_of(st.integers(1, n), st.sampled_from([0, -1, n + 1, 1.5, "2", None, True])))
    out, err = _outcome(lambda: est.rerank(q, k))
    if err is not None:
        assert any(name in str(err) for name in _names(cls)), (type(err), err)
        return
    assert isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= n
    if nq is None:
        nq = out.scores.shape[0]
    _check_result(out, nq, k, n)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@_SETTINGS
@given(data=st.data())
def test_bad_settings_are_errors_naming_the_setting(cls, data):
    """Each declared int / real setting set to 0, -1, a float, a string, NaN or +-inf: refused
    by a ValueError / TypeError naming it, or accepted and then a valid fit."""
    cons = {n: c for n, c in cls._constraints().items() if isinstance(c, (Int, Real))}
    if not cons:
        return
    name = data.draw(st.sampled_from(sorted(cons)))
    value = data.draw(st.sampled_from([0, -1, 2.5, "3", math.nan, math.inf, -math.inf, None]))
    params = dict(cls._test_params(), **{name: value})
    if cls is R.Pipeline:
        return
    x = _unit(40, 4, dtype=torch.float32)
    est, err = _outcome(lambda: cls(**params))
    if err is not None:
        assert name in str(err)
        return
    out, err = _outcome(lambda: est.fit(x).rerank(x[:2], k=5))
    if err is not None:
        assert any(n in str(err) for n in _names(cls)), err
        return
    assert not (isinstance(value, float) and not math.isfinite(value)), (name, value)
    _check_result(out, 2, 5, 40)
