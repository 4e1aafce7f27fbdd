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
