"""Declared setting constraints (``graphrerank._params``) and the settings machinery of
``Reranker``: validation, defaults, ``clone`` and deprecated spellings."""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from graphrerank._params import AnyOf, Bool, Function, InstanceOf, Int, OneOf, Real, check_params
from graphrerank.rerankers import (
    KNN,
    RERANKERS,
    RERANKERS_WITH_LOCAL,
    AlphaQueryExpansion,
    DatabaseAugmentation,
    Diffusion,
    FastSpectralRanking,
    KReciprocal,
    Pipeline,
    RDiP,
    Reranker,
    diffusion_rerank,
)

ALL = RERANKERS + RERANKERS_WITH_LOCAL


def raises(constraint, value, exc, name="kd", params=None, match=None):
    """``constraint.check`` raises ``exc`` (exactly that class) with the setting's name in
    the message (and ``match`` when given)."""
    with pytest.raises((TypeError, ValueError)) as info:
        constraint.check(value, name, params or {})
    assert type(info.value) is exc, info.value
    msg = str(info.value)
    assert name in msg, msg
    if match is not None:
        assert match in msg, msg
    return msg


def accepts(constraint, value, name="kd", params=None):
    constraint.check(value, name, params or {})  # no exception


# ----------------------------------------------------------------------------- Int
@pytest.mark.parametrize("value", [0, 1, 5, -3, 10**12, np.int64(4), np.int32(2)])
def test_int_accepts_integers(value):
    accepts(Int(), value)


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", None, Fraction(1, 1), np.float64(3)])
def test_int_rejects_non_integers_with_type_error(value):
    msg = raises(Int(1), value, TypeError)
    assert repr(value) in msg  # the value is named


@pytest.mark.parametrize(
    ("constraint", "value", "ok"),
    [
        (Int(1), 1, True),
        (Int(1), 0, False),
        (Int(1), -5, False),
        (Int(0, 3), 3, True),
        (Int(0, 3), 4, False),
        (Int(high=-1), -1, True),
        (Int(high=-1), 0, False),
    ],
)
def test_int_bounds_are_closed(constraint, value, ok):
    if ok:
        accepts(constraint, value)
    else:
        msg = raises(constraint, value, ValueError)
        assert str(value) in msg


def test_int_bound_naming_another_setting():
    c = Int(low="kd")
    accepts(c, 10, "km", {"km": 10, "kd": 10})
    accepts(c, 11, "km", {"km": 11, "kd": 10})
    msg = raises(c, 5, ValueError, "km", {"km": 5, "kd": 10})
    assert ">= 10" in msg and "5" in msg
    raises(Int(high="kd"), 11, ValueError, "kq", {"kq": 11, "kd": 10}, match="<= 10")
    accepts(Int(high="kd"), 3, "kq", {"kq": 3, "kd": 10})
    # the other setting missing or itself invalid: no bound from it (its own check reports it)
    accepts(c, 5, "km", {"km": 5})
    accepts(c, 5, "km", {"km": 5, "kd": "ten"})
    accepts(c, 5, "km", {"km": 5, "kd": True})
    # the type is still checked
    raises(c, 5.0, TypeError, "km", {"km": 5.0, "kd": 1})


def test_int_describe():
    assert Int().describe() == "an integer"
    assert Int(1).describe() == "an integer >= 1"
    assert Int(0, 3).describe() == "an integer >= 0 <= 3"
    assert Int(low="kd").describe() == "an integer >= kd"
    assert repr(Int(1)) == "<an integer >= 1>"


# ----------------------------------------------------------------------------- Real
@pytest.mark.parametrize("value", [0, 0.5, 1, np.float32(0.25), np.float64(0.75), Fraction(1, 2)])
def test_real_accepts_numbers(value):
    accepts(Real(0, 1), value, "alpha")


@pytest.mark.parametrize("value", [True, False, "0.5", None, [0.5], 1j])
def test_real_rejects_non_numbers_with_type_error(value):
    msg = raises(Real(0, 1), value, TypeError, "alpha")
    assert repr(value) in msg


def test_real_rejects_nan():
    raises(Real(), math.nan, ValueError, "alpha", match="NaN")
    raises(Real(0, 1), float("nan"), ValueError, "alpha", match="NaN")


@pytest.mark.parametrize(
    ("kw", "value", "ok"),
    [
        ({"low": 0, "high": 1}, 0.0, True),
        ({"low": 0, "high": 1}, 1.0, True),
        ({"low": 0, "high": 1}, -1e-9, False),
        ({"low": 0, "high": 1}, 1 + 1e-9, False),
        ({"low": 0, "high": 1, "high_open": True}, 1.0, False),
        ({"low": 0, "high": 1, "high_open": True}, 0.999, True),
        ({"low": 0, "high": 1, "low_open": True}, 0.0, False),
        ({"low": 0, "high": 1, "low_open": True}, 1e-12, True),
        ({"low": 0, "allow_inf": True}, math.inf, True),
        ({"high": 0, "high_open": True, "allow_inf": True}, -math.inf, True),
        ({"low": 0}, math.inf, False),
        ({"high": 0, "high_open": True}, -math.inf, False),
        ({}, math.inf, False),
        ({"high": 0, "high_open": True}, 0, False),
    ],
)
def test_real_bounds_open_and_closed(kw, value, ok):
    c = Real(**kw)
    if ok:
        accepts(c, value, "alpha")
    else:
        msg = raises(c, value, ValueError, "alpha")
        assert str(float(value)) in msg


def test_real_refuses_infinity_unless_allowed():
    """An unbounded side means any finite number: every declared real setting of the package
    is a weight, an exponent or a tolerance, which has no meaning at infinity."""
    msg = raises(Real(0), math.inf, ValueError, "beta", match="finite")
    assert "inf" in msg
    raises(Real(), -math.inf, ValueError, "beta", match="finite")
    raises(Real(0, 1), math.inf, ValueError, "beta")  # out of the interval anyway
    accepts(Real(0, allow_inf=True), math.inf, "beta")
    accepts(Real(0), 1e308, "beta")


def test_every_declared_real_setting_refuses_infinity():
    """No re-ranker declares a real setting that may be infinite (the SuperGlobal ``beta``,
    FSR / R-DiP ``gamma`` cases of the hardening run)."""
    import graphrerank.rerankers as R

    found = 0
    for name in R.__all__:
        cls = getattr(R, name)
        if not (isinstance(cls, type) and issubclass(cls, R.Reranker)) or cls is R.Reranker:
            continue
        for setting_name, c in cls._constraints().items():
            if isinstance(c, Real):
                found += 1
                assert not c.allow_inf, (cls.__name__, setting_name)
                with pytest.raises(ValueError, match=setting_name):
                    c.check(math.inf, setting_name, {})
    assert found >= 8


def test_real_describe():
    assert Real(0, 1, high_open=True).describe() == "a real number in [0, 1)"
    assert Real(0, 1, low_open=True).describe() == "a real number in (0, 1]"
    assert Real(0).describe() == "a real number >= 0"
    assert Real(0, low_open=True).describe() == "a real number > 0"
    assert Real(high=2, high_open=True).describe() == "a real number < 2"
    assert Real().describe() == "a real number"


# ----------------------------------------------------------------------------- OneOf, Bool, ...
def test_one_of():
    c = OneOf(("auto", "faiss", "torch"))
    for v in ("auto", "faiss", "torch"):
        accepts(c, v, "backend")
    msg = raises(c, "cuda", ValueError, "backend")
    assert "'cuda'" in msg and "'faiss'" in msg  # names the value and the options
    raises(c, None, ValueError, "backend", match="None")
    raises(c, "Auto", ValueError, "backend")  # case matters
    assert c.describe() == "one of 'auto', 'faiss', 'torch'"


@pytest.mark.parametrize("value", [True, False])
def test_bool_accepts_bools(value):
    accepts(Bool(), value, "normalize")


@pytest.mark.parametrize("value", [0, 1, "True", None, 1.0])
def test_bool_rejects_the_rest(value):
    msg = raises(Bool(), value, TypeError, "normalize")
    assert repr(value) in msg


def test_function():
    c = Function("a callable (rows, cols) -> scores")
    for v in (len, lambda r: r, KNN, KNN().get_params):
        accepts(c, v, "rescore")
    msg = raises(c, 3, TypeError, "rescore", match="int")
    assert "a callable (rows, cols) -> scores" in msg
    raises(c, "f", TypeError, "rescore", match="str")
    assert Function().describe() == "a callable"


def test_instance_of_class_and_lazy_class():
    for c in (InstanceOf(Reranker, "a Reranker"), InstanceOf(lambda: Reranker, "a Reranker")):
        accepts(c, KNN(), "rescorer")
        msg = raises(c, KNN, TypeError, "rescorer", match="a Reranker")  # the class itself
        assert "ABCMeta" in msg  # the type of the value is named
        raises(c, 3, TypeError, "rescorer", match="int")


# ----------------------------------------------------------------------------- AnyOf
def test_any_of_with_none():
    c = Int(1) | None
    assert isinstance(c, AnyOf)
    accepts(c, None, "batch_size")
    accepts(c, 4, "batch_size")
    # one alternative besides None: its own error
    msg = raises(c, 0, ValueError, "batch_size", match=">= 1")
    assert "0" in msg
    raises(c, 2.5, TypeError, "batch_size", match="integer")
    assert c.describe() == "an integer >= 1 or None"
    # without None, None is refused
    raises(AnyOf(Int(1), Bool()), None, TypeError, "batch_size")


def test_any_of_several_alternatives():
    c = AnyOf(None, Bool(), Function())
    for v in (None, True, False, print):
        accepts(c, v, "progress")
    msg = raises(c, 3, TypeError, "progress")
    assert "None or True or False or a callable" in msg and "3" in msg
    msg = raises(c, [1], TypeError, "progress")
    assert "list" in msg  # an odd value is named by its type
    named = AnyOf(None, Bool(), Function(), what="None, True, False or a callable")
    msg = raises(named, "yes", TypeError, "progress", match="None, True, False or a callable")
    assert "'yes'" in msg


def test_any_of_flattens_nested_alternatives():
    c = (Int(1) | None) | Real(-1, 0)
    assert len(c.options) == 3
    accepts(c, None, "x")
    accepts(c, 3, "x")
    accepts(c, -0.5, "x")
    raises(c, 0.5, TypeError, "x")


def test_check_params_skips_undeclared_and_none():
    constraints = {"kd": Int(1), "anything": None, "km": Int(low="kd")}
    check_params({"kd": 3, "anything": object(), "extra": "x", "km": 3}, constraints)
    with pytest.raises(ValueError, match="kd must be >= 1, got 0"):
        check_params({"kd": 0}, constraints)
    with pytest.raises(ValueError, match=r"km must be >= 5 \(the setting kd\), got 4"):
        check_params({"kd": 5, "km": 4}, constraints)


# ----------------------------------------------------------------------------- re-rankers
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_setting_is_declared(cls):
    params = cls.default_params()
    constraints = cls._constraints()
    assert params, cls
    assert set(params) == set(constraints), (
        f"undeclared: {set(params) - set(constraints)}, stale: {set(constraints) - set(params)}"
    )
    cls().validate_params()  # the defaults are valid
    cls(**cls._test_params()).validate_params()
    assert cls().get_params() == params


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_declared_constraint_refuses_an_odd_value(cls):
    for name, c in cls._constraints().items():
        if c is None:
            continue
        r = cls().set_params(**{name: object()})
        with pytest.raises((TypeError, ValueError), match=name):
            r.validate_params()


def test_declared_bounds_of_some_rerankers():
    with pytest.raises(ValueError, match=r"km must be >= 10 \(the setting kd\), got 5"):
        RDiP(km=5, kd=10).validate_params()
    RDiP(km=10, kd=10).validate_params()
    with pytest.raises(ValueError, match="alpha"):
        Diffusion(alpha=1.0).validate_params()
    with pytest.raises(TypeError, match="kd must be an integer, got 5.0"):
        Diffusion(kd=5.0).validate_params()
    with pytest.raises(ValueError, match="'gpu'"):
        KNN(backend="gpu").validate_params()
    with pytest.raises(ValueError, match="k1"):
        KReciprocal(k1=0).fit(torch.eye(3))  # fit validates first


def test_clone_is_an_unfitted_copy():
    x = torch.nn.functional.normalize(
        torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), dim=1
    )
    r = KNN(metric="l2", backend="torch").fit(x)
    c = r.clone()
    assert type(c) is KNN and c is not r
    assert c.get_params() == {"metric": "l2", "backend": "torch"}
    assert not hasattr(c, "database_") and not hasattr(c, "index_")
    assert hasattr(r, "database_")  # the original stays fitted
    d = Diffusion(kd=7, alpha=0.5, truncation=30)
    assert d.clone().get_params() == d.get_params()


@pytest.mark.parametrize("container", [list, tuple])
def test_clone_copies_pipeline_stages(container):
    stages = container([DatabaseAugmentation(k=3), AlphaQueryExpansion(k=4)])
    p = Pipeline(stages, depth=5)
    c = p.clone()
    assert type(c.stages) is container
    assert len(c.stages) == 2
    for old, new in zip(p.stages, c.stages):
        assert new is not old and type(new) is type(old)
        assert new.get_params() == old.get_params()
    assert c.depth == 5
    c.stages[0].set_params(k=9)
    assert p.stages[0].k == 3  # not shared


def test_clone_copies_rdip_rescorer_but_shares_callables():
    r = RDiP(rescorer=KReciprocal(k1=7, k2=2), km=12, kd=8)
    c = r.clone()
    assert c.rescorer is not r.rescorer
    assert isinstance(c.rescorer, KReciprocal)
    assert c.rescorer.get_params() == {"k1": 7, "k2": 2, "lambda_value": 0.3, "progress": None}
    assert (c.km, c.kd) == (12, 8)

    def fn(rows, cand, scores):
        return scores

    assert RDiP(rescorer=fn).clone().rescorer is fn  # other values are shared


# ----------------------------------------------------------------------------- renamed settings
def test_diffusion_k_is_kd():
    with pytest.warns(DeprecationWarning, match=r"k=.*kd=") as rec:
        d = Diffusion(k=5)
    assert d.kd == 5
    assert d.get_params()["kd"] == 5
    assert "k" not in d.get_params()
    assert len(rec) == 1
    with pytest.warns(DeprecationWarning, match="num_neighbors"):
        assert Diffusion(num_neighbors=4).kd == 4


def test_deprecation_points_at_the_caller():
    with pytest.warns(DeprecationWarning, match="Diffusion") as rec:
        Diffusion(k=5)  # called right here, not through a helper: this line is the caller
    with pytest.warns(DeprecationWarning, match="RDiP") as rec_rdip:
        RDiP(k_m=20, k_d=10)
    with pytest.warns(DeprecationWarning, match="num_neighbors") as rec_twin:
        # through a one-call function: still this file's line, not the library's
        diffusion_rerank(None, torch.eye(3), k=2, num_neighbors=2, kq=1, backend="torch")
    records = [*rec, *rec_rdip, *rec_twin]
    files = {w.filename for w in records if issubclass(w.category, DeprecationWarning)}
    assert files == {__file__}


def test_fast_spectral_ranking_num_neighbors_is_kd():
    with pytest.warns(DeprecationWarning, match="num_neighbors"):
        f = FastSpectralRanking(num_neighbors=5)
    assert f.kd == 5
    with pytest.warns(DeprecationWarning, match=r"\bk="):
        assert FastSpectralRanking(k=6).kd == 6


def test_rdip_k_m_k_d_are_km_kd():
    with pytest.warns(DeprecationWarning, match=r"RDiP\(k_") as rec:
        r = RDiP(k_m=20, k_d=10)
    assert (r.km, r.kd) == (20, 10)
    messages = " ".join(str(w.message) for w in rec if issubclass(w.category, DeprecationWarning))
    assert "k_m" in messages and "k_d" in messages
    r.validate_params()


def test_set_params_old_spelling():
    d = Diffusion()
    with pytest.warns(DeprecationWarning, match="kd") as rec:
        assert d.set_params(k=3) is d
    assert d.kd == 3
    assert rec[0].filename == __file__
    r = RDiP()
    with pytest.warns(DeprecationWarning, match="k_m"):
        r.set_params(k_m=40)
    assert r.km == 40


def test_both_spellings_is_a_type_error():
    with pytest.raises(TypeError, match=r"kd=.*k="):
        Diffusion(k=5, kd=6)
    with pytest.raises(TypeError, match="num_neighbors"):
        FastSpectralRanking(num_neighbors=5, kd=5)
    with pytest.raises(TypeError, match="km"):
        RDiP(k_m=20, km=20)
    with pytest.raises(TypeError, match="kd"):
        Diffusion().set_params(k=3, kd=4)


def test_new_spellings_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert Diffusion(kd=5).kd == 5
        assert RDiP(km=20, kd=10).km == 20
        Diffusion().set_params(kd=2)
    with pytest.raises(ValueError, match="no setting 'k'"):
        KNN().set_params(k=3)  # no old spelling there: an unknown setting
