import numpy as np
import pytest
import torch

from graphrerank._checks import (
    as_tensor,
    check_features,
    check_in,
    check_int,
    check_k,
    check_normalized,
    check_real,
)
from graphrerank._io import CorruptFileError, load_arrays, save_arrays


def test_as_tensor_is_zero_copy_for_numpy():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = as_tensor(a, "x")
    a[0, 0] = 42
    assert t[0, 0] == 42
    with pytest.raises(TypeError, match="x must be a torch.Tensor or a numpy.ndarray, got str"):
        as_tensor("abc", "x")
    with pytest.raises(TypeError, match="Python objects"):
        as_tensor(np.array([{}], dtype=object), "x")


def test_check_features_messages():
    with pytest.raises(ValueError, match=r"db has descriptors of dimension 3, expected 4"):
        check_features(np.zeros((2, 3), np.float32), "db", dim=4)
    with pytest.raises(
        ValueError, match=r"db contains NaN or infinite values in 1 row\(s\), first row 1"
    ):
        check_features(np.array([[0.0, 1.0], [np.inf, 0.0]]), "db")
    with pytest.raises(ValueError, match="zero-length descriptors"):
        check_features(np.zeros((3, 0), np.float32), "db")
    with pytest.raises(TypeError, match="dense tensor"):
        check_features(torch.eye(3).to_sparse(), "db")
    assert check_features(np.zeros((0, 2), np.float32), "db", allow_empty=True).shape == (0, 2)
    assert check_features(torch.zeros(2, 2, dtype=torch.bfloat16), "db").dtype == torch.float32


def test_check_normalized():
    x = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    assert check_normalized(x, "x") is x
    x[2] *= 2
    with pytest.raises(ValueError, match="x must be L2-normalised.*row 2 has norm 2"):
        check_normalized(x, "x")


def test_check_features_whose_sum_overflows_are_checked_entry_by_entry():
    # the sum of these finite float32 values is inf: the check looks at every entry
    big = torch.full((4, 3), 3e38)
    assert check_features(big, "db") is big
    big[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 row\(s\), first row 3"):
        check_features(big, "db")
    x = torch.zeros(3, 2)
    x[1, 0], x[1, 1] = float("inf"), float("-inf")  # inf - inf: a NaN sum
    with pytest.raises(ValueError, match="first row 1"):
        check_features(x, "db")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_check_normalized_at_the_tolerance(dtype):
    # float32 norms decide the rows clearly inside atol; the rest are decided in float64,
    # and the row named is the row of x
    x = torch.nn.functional.normalize(torch.randn(50, 64, dtype=torch.float64), dim=1)
    x[7] *= 1 + 0.9e-3  # inside atol = 1e-3
    x[11] *= 1 - 0.7e-3
    x = x.to(dtype)
    assert check_normalized(x, "x") is x
    x[31] *= 1 + 1.2e-3  # outside (1.0012, and float32 rounding is ~1e-7)
    with pytest.raises(ValueError, match="row 31 has norm 1.0012"):
        check_normalized(x, "x")
    y = x.clone()
    y[31] /= 1 + 1.2e-3
    y[40] *= 3.0
    with pytest.raises(ValueError, match="row 40 has norm 3"):
        check_normalized(y, "y")


def test_scalar_checks():
    assert check_int(np.int64(3), "k", low=1) == 3
    with pytest.raises(TypeError, match="k must be an integer, got 2.5"):
        check_int(2.5, "k")
    with pytest.raises(TypeError, match="k must be an integer, got True"):
        check_int(True, "k")
    with pytest.raises(ValueError, match="alpha must be < 1"):
        check_real(1.0, "alpha", low=0, high=1, high_open=True)
    with pytest.raises(ValueError, match="alpha must not be NaN"):
        check_real(float("nan"), "alpha")
    with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\], got 'c'"):
        check_in("c", "mode", ("a", "b"))
    with pytest.raises(ValueError, match="k=5 is larger than the gallery, which holds 4 item"):
        check_k(5, 4, what="the gallery")


def test_save_load_arrays(tmp_path):
    arrays = {"a": np.arange(5), "b": np.ones((2, 2), np.float32)}
    path = save_arrays(tmp_path / "x", arrays, {"format": "f", "version": 1, "n": 5})
    assert path.name == "x.npz"
    got, meta = load_arrays(path, format="f", version=1)
    assert meta["n"] == 5
    np.testing.assert_array_equal(got["a"], arrays["a"])
    with pytest.raises(CorruptFileError, match="holds a 'f', not a 'g'"):
        load_arrays(path, format="g", version=1)
    save_arrays(tmp_path / "y.npz", arrays, {"format": "f", "version": 3})
    with pytest.raises(CorruptFileError, match="reads versions up to 1"):
        load_arrays(tmp_path / "y.npz", format="f", version=1)
    with pytest.raises(TypeError, match="array 'o' must be a numeric numpy array"):
        save_arrays(tmp_path / "z.npz", {"o": np.array([None], dtype=object)}, {"format": "f"})


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = save_arrays(tmp_path / "x.npz", {"a": np.arange(3)}, {"format": "f", "version": 1})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_arrays(path, {"a": np.arange(4)}, {"format": "f", "version": 1})
    assert path.read_bytes() == before, "the old file survives a failed write"
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"], "no temporary file left"


def test_as_tensor_refuses_meta_and_detaches():
    with pytest.raises(ValueError, match="x is on the meta device"):
        as_tensor(torch.ones(2, device="meta"), "x")
    t = torch.ones(2, requires_grad=True)
    assert as_tensor(t, "x") is t
    assert not as_tensor(t, "x", detach=True).requires_grad
    neg = np.arange(6.0).reshape(2, 3)[::-1]  # negative strides are copied, not refused
    assert torch.equal(as_tensor(neg, "x"), torch.tensor([[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]))


def test_check_index_and_edge_index():
    from graphrerank._checks import check_edge_index, check_index

    assert check_index(
        np.array([[0, 2], [1, -1]], np.int32), "ids", high=3, padding=True
    ).dtype == (torch.int64)
    with pytest.raises(
        ValueError, match=r"ids holds the id 3, out of range: ids must lie in \[0, 2\]"
    ):
        check_index(torch.tensor([0, 3]), "ids", high=3)
    with pytest.raises(ValueError, match="ids holds the id -1"):
        check_index(torch.tensor([-1]), "ids", high=3)
    with pytest.raises(TypeError, match="ids must hold integer ids"):
        check_index(torch.tensor([0.0]), "ids", high=3)
    with pytest.raises(ValueError, match="repeats an id within row 1"):
        check_index(torch.tensor([[0, 1], [2, 2]]), "ids", high=3, unique=True)
    with pytest.raises(ValueError, match=r"edge_index must have shape \(2, E\)"):
        check_edge_index(torch.zeros(3, 2, dtype=torch.long), "edge_index", 4)


def _raw(crow, col, val, shape):
    return torch.sparse_csr_tensor(
        torch.tensor(crow), torch.tensor(col), torch.tensor(val), shape, check_invariants=False
    )


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        (([0, 5, 2, 3], [0, 1, 2], [1.0, 1.0, 1.0], (3, 3)), "crow_indices decrease at row 1"),
        (([0, 1, 2, 9], [0, 1, 2], [1.0, 1.0, 1.0], (3, 3)), "run from 0 to the number of entries"),
        (([0, 1, 2], [0, 7], [1.0, 1.0], (2, 2)), "column index 7 is out of range"),
        (([0, 1, 2], [0, -1], [1.0, 1.0], (2, 2)), "column index -1 is out of range"),
        (([0, 1], [0], [float("nan")], (1, 1)), "NaN or infinite"),
    ],
)
def test_check_csr_refuses_corrupt_matrices(parts, match):
    from graphrerank._checks import check_csr

    with pytest.raises(ValueError, match="A .*" + match):
        check_csr(_raw(*parts), "A")


def test_check_csr_sorted_conversion_and_cache():
    from graphrerank._checks import check_csr

    unsorted = _raw([0, 2], [1, 0], [1.0, 2.0], (1, 2))
    assert check_csr(unsorted, "A") is unsorted  # bounds are fine
    with pytest.raises(ValueError, match="row 0 are not sorted and unique"):
        check_csr(unsorted, "A", sorted=True)
    with pytest.raises(TypeError, match="A must be a torch.sparse_csr tensor"):
        check_csr(torch.eye(2), "A")
    a = check_csr(np.eye(2), "A", convert=True)
    assert a.layout == torch.sparse_csr and check_csr(a, "A") is a
    with pytest.raises(ValueError, match=r"A must be a square"):
        check_csr(torch.ones(2, 3).to_sparse_csr(), "A", square=True)


def test_checked_declares_checks_with_references():
    from graphrerank._checks import Array, Index, Int, Real, Ref, checked

    @checked(
        n=Int(low=1),
        ids=Index(high=Ref("n")),
        w=Array(shape=Ref("ids", fn=lambda t: t.shape)),
        gamma=Real(low=0, optional=True),
    )
    def f(ids, w, n, gamma=None):
        return ids, w, n, gamma

    ids, w, n, gamma = f(np.array([0, 1]), np.ones(2), 2)
    assert ids.dtype == torch.int64 and w.dtype == torch.float64 and gamma is None
    with pytest.raises(ValueError, match="ids holds the id 2"):
        f([0, 2], np.ones(2), 2)
    with pytest.raises(ValueError, match=r"w must have shape \(2,\)"):
        f([0, 1], np.ones(3), 2)
    with pytest.raises(ValueError, match="gamma must be finite"):
        f([0, 1], np.ones(2), 2, gamma=float("inf"))
    with pytest.raises(TypeError, match="unknown arguments"):
        checked(x=Int())(lambda y: y)
