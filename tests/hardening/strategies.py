"""Hypothesis strategies for the hardening suite: the families of bad and edge inputs every
public function must survive (a valid result, or a ``ValueError`` / ``TypeError`` that names
the argument).

Families: wrong ndim and dims, every dtype, NaN / inf, empty, ``N = 1 / 2``, ``k`` of 0, < 0,
> N, float or str, non-contiguous and negative-stride numpy arrays, zero / identical / 1e30
vectors, numpy and torch mixed, ``meta``-device and ``requires_grad`` tensors, ``-1`` padding
and corrupt CSR matrices.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

__all__ = [
    "ALL_DTYPES",
    "FLOAT_DTYPES",
    "Refused",
    "assert_csr",
    "assert_ranking",
    "bad_scalars",
    "corrupt_csr",
    "csr_matrices",
    "dense_square",
    "edge_indices",
    "features",
    "index_lists",
    "junk",
    "ks",
    "node_counts",
    "outcome",
    "reals",
    "valid_or_refused",
    "variant",
    "weights",
]

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ALL_DTYPES = (
    *FLOAT_DTYPES,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
)

#: Sizes that are often edge cases (1 and 2 items) and a few ordinary ones.
node_counts = st.sampled_from([1, 2, 3, 4, 6, 9])


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- variants
VARIANTS = ("torch", "numpy", "numpy_negative_stride", "noncontiguous", "requires_grad", "meta")


def variant(t: torch.Tensor, how: str) -> Any:
    """``t`` presented in another form: a numpy array (plain or with negative strides), a
    non-contiguous tensor, a ``requires_grad`` leaf (floating dtypes only), a ``meta``
    tensor, or unchanged (``"torch"``)."""
    if how == "torch":
        return t
    if how == "numpy":
        if t.dtype == torch.bfloat16:
            return t
        return t.numpy()
    if how == "numpy_negative_stride":
        if t.dtype == torch.bfloat16 or t.dim() == 0:
            return t
        return np.ascontiguousarray(t.numpy()[::-1])[::-1]
    if how == "noncontiguous":
        if t.dim() < 2:
            return t
        return t.T.contiguous().T
    if how == "requires_grad":
        if not t.is_floating_point():
            return t
        return t.clone().requires_grad_(True)
    if how == "meta":
        return t.to("meta")
    raise ValueError(how)


variants = st.sampled_from(VARIANTS)
#: Mostly the plain forms, sometimes the unusual ones.
common_variants = st.sampled_from(
    (
        "torch",
        "torch",
        "torch",
        "numpy",
        "numpy_negative_stride",
        "noncontiguous",
        "requires_grad",
        "meta",
    )
)


# ----------------------------------------------------------------------------- scalars
def ks(n: int) -> st.SearchStrategy[Any]:
    """``k`` values around ``n`` items: valid ``1..n``, and 0, negative, ``> n``, float, str,
    bool, None."""
    good = st.integers(1, max(1, n))
    bad = st.sampled_from([0, -1, -5, n + 1, 10 * n + 3, 1.5, 2.0, "3", True, None, np.int64(1)])
    return st.one_of(good, good, bad)


def reals(low: float = 0.0, high: float = 1.0) -> st.SearchStrategy[Any]:
    """Real settings: valid values in ``[low, high]`` and NaN, +-inf, out of range, str."""
    good = st.floats(low, high, allow_nan=False)
    bad = st.sampled_from(
        [float("nan"), float("inf"), -float("inf"), low - 1.0, high + 1.0, "0.5", None, 1e30]
    )
    return st.one_of(good, good, bad)


bad_scalars = st.sampled_from([0, -1, 1.5, "x", None, float("nan"), float("inf"), True])
junk = st.sampled_from([None, "abc", 3, 2.5, [[1, 2], [3]], {"a": 1}, b"xy", object()])


# ----------------------------------------------------------------------------- dense arrays
FEATURE_KINDS = (
    "normal",
    "normal",
    "normal",
    "normalized",
    "zeros",
    "identical",
    "huge",
    "nan",
    "inf",
    "int",
    "bool",
    "half",
    "complex",
    "empty_rows",
    "empty_dim",
    "ndim1",
    "ndim3",
)


def _feature_tensor(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.from_numpy(_rng(seed).standard_normal((n, d)))
    if kind == "normalized":
        x = torch.nn.functional.normalize(x, dim=1)
    elif kind == "zeros":
        x = torch.zeros(n, d, dtype=torch.float64)
    elif kind == "identical":
        x = x[:1].expand(n, d).clone()
    elif kind == "huge":
        x = x * 1e30
    elif kind == "nan":
        x[n // 2, 0] = float("nan")
    elif kind == "inf":
        x[0, d - 1] = float("inf")
    elif kind == "int":
        x = (x * 3).long()
    elif kind == "bool":
        x = x > 0
    elif kind == "half":
        x = x.half()
    elif kind == "complex":
        x = x.to(torch.complex64)
    elif kind == "empty_rows":
        x = x[:0]
    elif kind == "empty_dim":
        x = x[:, :0]
    elif kind == "ndim1":
        x = x[:, 0]
    elif kind == "ndim3":
        x = x[:, None, :]
    return x


@st.composite
def features(draw, n: int | None = None, d: int | None = None, *, dtype=None, valid=False):
    """``(n, d)`` descriptor matrices of every family (or ``valid=True``: finite float
    ones, unit norm or not), in any variant (numpy, negative strides, meta, ...)."""
    n = draw(node_counts) if n is None else n
    d = draw(st.sampled_from([1, 2, 3, 5])) if d is None else d
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(("normal", "normalized") if valid else FEATURE_KINDS))
    x = _feature_tensor(kind, n, d, seed)
    if x.is_floating_point() and x.dtype == torch.float64:
        x = x.to(dtype or draw(st.sampled_from((torch.float32, torch.float64))))
    if valid:
        return x
    return variant(x, draw(common_variants))


@st.composite
def dense_square(draw, n: int | None = None, *, symmetric: bool = True, valid: bool = False):
    """Dense ``(n, n)`` matrices: non-negative symmetric affinities, or the bad families."""
    n = draw(node_counts) if n is None else n
    seed = draw(st.integers(0, 2**16))
    a = torch.from_numpy(np.abs(_rng(seed).standard_normal((n, n)))).float()
    a = a * (a > 0.7)
    if symmetric:
        a = (a + a.T) / 2
    a.fill_diagonal_(0)
    if valid:
        return a
    kind = draw(st.sampled_from(("ok", "ok", "nan", "rect", "int", "ndim3", "empty")))
    if kind == "nan" and n:
        a[0, 0] = float("nan")
    elif kind == "rect":
        a = a[:, : max(1, n - 1)] if n > 1 else torch.zeros(1, 2)
    elif kind == "int":
        a = a.long()
    elif kind == "ndim3":
        a = a[None]
    elif kind == "empty":
        a = torch.zeros(0, 0)
    return variant(a, draw(common_variants))


@st.composite
def weights(draw, e: int, *, valid: bool = False):
    """``(e,)`` edge weights: positive, with zeros, negative, NaN, wrong length or dtype."""
    seed = draw(st.integers(0, 2**16))
    w = torch.from_numpy(np.abs(_rng(seed).standard_normal(e))).float() + 0.1
    if valid:
        return w
    kind = draw(st.sampled_from(("ok", "ok", "zeros", "negative", "nan", "short", "int", "2d")))
    if kind == "zeros":
        w = torch.zeros(e)
    elif kind == "negative":
        w = -w
    elif kind == "nan" and e:
        w[0] = float("nan")
    elif kind == "short":
        w = w[:-1] if e else torch.ones(1)
    elif kind == "int":
        w = w.long()
    elif kind == "2d":
        w = w[:, None]
    return variant(w, draw(common_variants))


# ----------------------------------------------------------------------------- ids
@st.composite
def index_lists(
    draw,
    n: int,
    m: int | None = None,
    rows: int | None = None,
    *,
    valid=False,
    self_first: bool = False,
):
    """``(rows, m)`` neighbour id lists over ``n`` items: unique per row (``self_first``:
    row ``i`` starts with ``i``), with ``-1`` padding at the end; the bad families add ids
    ``>= n`` or ``< -1``, repeats, floats and wrong shapes."""
    rows = n if rows is None else rows
    m = draw(st.integers(1, max(1, n))) if m is None else m
    seed = draw(st.integers(0, 2**16))
    rng = _rng(seed)
    out = np.full((rows, m), -1, dtype=np.int64)
    for i in range(rows):
        perm = rng.permutation(n)
        if self_first and i < n:
            perm = np.concatenate([[i], perm[perm != i]])
        take = min(m, n)
        out[i, :take] = perm[:take]
    kind = (
        "ok"
        if valid
        else draw(
            st.sampled_from(
                ("ok", "ok", "ok", "pad", "high", "low", "repeat", "float", "1d", "int32")
            )
        )
    )
    t = torch.from_numpy(out)
    if kind == "pad" and m > 1:
        t[:, -1] = -1
    elif kind == "high":
        t[0, 0] = n + draw(st.integers(0, 5))
    elif kind == "low":
        t[0, 0] = -2
    elif kind == "repeat" and m > 1:
        t[0, 1] = t[0, 0]
    elif kind == "float":
        t = t.double()
    elif kind == "1d":
        t = t[:, 0]
    elif kind == "int32":
        t = t.int()
    if valid:
        return t
    return variant(t, draw(common_variants))


@st.composite
def edge_indices(draw, n: int, *, valid: bool = False):
    """``(2, E)`` edge indices over ``n`` nodes without duplicates; the bad families add
    ``-1``, ids ``>= n``, a wrong first dimension, floats."""
    seed = draw(st.integers(0, 2**16))
    rng = _rng(seed)
    pairs = [(s, t) for s in range(n) for t in range(n) if s != t and rng.random() < 0.5]
    ei = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).T.contiguous()
    if valid:
        return ei
    kind = draw(st.sampled_from(("ok", "ok", "ok", "minus1", "high", "shape", "float", "empty")))
    if kind == "minus1" and ei.shape[1]:
        ei[0, 0] = -1
    elif kind == "high" and ei.shape[1]:
        ei[1, -1] = n + 2
    elif kind == "shape":
        ei = ei.T if ei.shape[1] != 2 else ei[:1]
    elif kind == "float":
        ei = ei.float()
    elif kind == "empty":
        ei = torch.zeros(2, 0, dtype=torch.long)
    return variant(ei, draw(common_variants))


# ----------------------------------------------------------------------------- sparse
def _csr(crow, col, val, shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


CSR_CORRUPTIONS = (
    "crow_jump",  # a row pointer beyond the entries
    "crow_decreasing",
    "crow_short",
    "crow_nonzero_start",
    "col_high",
    "col_negative",
    "col_unsorted",
    "col_duplicate",
    "values_nan",
    "values_int",
)


def corrupt(a: torch.Tensor, how: str) -> torch.Tensor:
    """A copy of the CSR matrix ``a`` with one invariant broken (``how`` in
    :data:`CSR_CORRUPTIONS`); a matrix too small to break ``how`` comes back corrupt another
    way (a column index out of range)."""
    crow, col, val = a.crow_indices().clone(), a.col_indices().clone(), a.values().clone()
    n, m = a.shape
    nnz = col.numel()
    if how == "crow_jump" and n:
        crow[1] = nnz + 100
    elif how == "crow_decreasing" and n > 1 and nnz:
        crow[1] = nnz
        crow[2:-1] = 0
    elif how == "crow_short":
        crow = crow[:-1]
    elif how == "crow_nonzero_start":
        crow = crow + 1
    elif how == "col_negative" and nnz:
        col[0] = -1
    elif how in ("col_unsorted", "col_duplicate"):
        counts = crow.diff()
        rows = (counts > 1).nonzero().flatten()
        if rows.numel():
            s = int(crow[rows[0]])
            if how == "col_unsorted":
                col[s], col[s + 1] = col[s + 1].clone(), col[s].clone()
            else:
                col[s + 1] = col[s]
        else:
            return _oob(a)
    elif how == "values_nan" and nnz:
        val[0] = float("nan")
    elif how == "values_int":
        val = val.long()
    else:  # col_high, and the cases too small for the chosen corruption
        return _oob(a)
    return _csr(crow, col, val, (n, m))


def _oob(a: torch.Tensor) -> torch.Tensor:
    crow, col, val = a.crow_indices().clone(), a.col_indices().clone(), a.values().clone()
    n, m = a.shape
    if col.numel():
        col[-1] = m + 3
        return _csr(crow, col, val, (n, m))
    crow = torch.arange(n + 1)
    crow[1:] = 1
    return _csr(crow, torch.tensor([m + 3]), torch.ones(1, dtype=val.dtype), (n, m))


@st.composite
def csr_matrices(
    draw,
    n: int | None = None,
    m: int | None = None,
    *,
    symmetric: bool = False,
    diagonal: float | None = None,
):
    """Valid ``(n, m)`` CSR matrices with non-negative values (``symmetric``: square and
    symmetric; ``diagonal``: that value added on the diagonal)."""
    n = draw(node_counts) if n is None else n
    m = n if m is None else m
    seed = draw(st.integers(0, 2**16))
    a = torch.from_numpy(np.abs(_rng(seed).standard_normal((n, m)))).float()
    a = a * (a > 0.6)
    if symmetric:
        a = (a + a.T) / 2
    if diagonal is not None:
        a = a + diagonal * torch.eye(n, m)
    itype = draw(st.sampled_from((torch.int64, torch.int32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = a.to_sparse_csr()
        if itype == torch.int32:
            s = _csr(s.crow_indices().int(), s.col_indices().int(), s.values(), s.shape)
    return s


@st.composite
def corrupt_csr(draw, n: int | None = None, m: int | None = None, **kw):
    """A CSR matrix of :func:`csr_matrices` with one invariant broken."""
    a = draw(csr_matrices(n, m, **kw))
    return corrupt(a, draw(st.sampled_from(CSR_CORRUPTIONS)))


# ----------------------------------------------------------------------------- outcomes
class Refused(Exception):
    """Raised by :func:`outcome` when the call ended in a clear error (the test stops)."""


def outcome(fn, *args, names: Sequence[str], **kwargs):
    """Call ``fn``; return its result, or raise :class:`Refused` for a ``ValueError`` /
    ``TypeError`` whose message names one of ``names`` (the arguments that may be bad). Any
    other exception, or an error naming none of them, fails the test."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as err:
        msg = str(err)
        if not any(n in msg for n in names):
            raise AssertionError(
                f"{type(err).__name__} from {getattr(fn, '__qualname__', fn)} names none of "
                f"{list(names)}: {msg}"
            ) from err
        raise Refused(msg) from None


def valid_or_refused(test):
    """Decorator: a test body that ends in :class:`Refused` passes (the clear error was the
    valid outcome)."""
    import functools

    from hypothesis import event

    @functools.wraps(test)
    def inner(*args, **kwargs):
        try:
            test(*args, **kwargs)
        except Refused:
            event("clear error")
        else:
            event("valid result")

    return inner


def assert_csr(a: torch.Tensor, shape: tuple[int, int] | None = None) -> None:
    """``a`` is a CSR matrix that scipy's full format check accepts, of ``shape``, with
    finite values."""
    import scipy.sparse as sp

    assert a.layout == torch.sparse_csr, a.layout
    if shape is not None:
        assert tuple(a.shape) == tuple(shape), (tuple(a.shape), shape)
    crow = a.crow_indices().cpu().numpy()
    col = a.col_indices().cpu().numpy()
    val = a.values().detach().cpu().double().numpy()
    m = sp.csr_matrix((val, col, crow), shape=tuple(a.shape))
    m.check_format(full_check=True)
    assert np.isfinite(val).all()


def assert_ranking(scores, indices, n: int, rows: int | None = None, k: int | None = None):
    """Ranked lists: ``(rows, k)`` scores and ids, ids in ``[0, n)`` or ``-1`` padding at the
    end, distinct within a row, scores finite where an id is given and non-increasing."""
    scores, indices = torch.as_tensor(scores), torch.as_tensor(indices)
    assert scores.shape == indices.shape and scores.dim() == 2, (scores.shape, indices.shape)
    if rows is not None:
        assert scores.shape[0] == rows
    if k is not None:
        assert scores.shape[1] == k
    valid = indices >= 0
    assert bool((indices >= -1).all()) and bool((indices < n).all())
    assert bool(torch.isfinite(scores[valid]).all()), "non-finite score of a real item"
    # padding only after the real items
    assert bool((valid[:, 1:] <= valid[:, :-1]).all()), "padding before a real item"
    s = scores.double().masked_fill(~valid, float("-inf"))
    assert bool((s[:, 1:] <= s[:, :-1]).all()), "scores not sorted best first"
    for r in range(indices.shape[0]):
        ids = indices[r][valid[r]]
        assert ids.unique().numel() == ids.numel(), f"row {r} repeats an item"
