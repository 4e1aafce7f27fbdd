"""Input validation shared by every public entry point.

Each check raises a ``ValueError`` or ``TypeError`` whose message names the argument and the
offending value, so that a user sees at once which input is wrong.
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral
from numbers import Real as _Real
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CSR",
    "Array",
    "Check",
    "Edges",
    "Features",
    "Graph",
    "Index",
    "Int",
    "OneOf",
    "Real",
    "Ref",
    "as_tensor",
    "check_allocation",
    "check_csr",
    "check_csr_parts",
    "check_edge_index",
    "check_features",
    "check_graph",
    "check_in",
    "check_index",
    "check_int",
    "check_k",
    "check_normalized",
    "check_real",
    "check_same_device",
    "check_tensor",
    "checked",
    "trust_csr",
]

_HALF = (torch.float16, torch.bfloat16)
F = TypeVar("F", bound=Callable[..., Any])


def as_tensor(x: Any, name: str, *, detach: bool = False) -> Tensor:
    """Return ``x`` as a tensor without copying where possible (numpy on CPU is zero-copy;
    negative or odd strides are copied). ``meta`` tensors, which hold no data, are refused;
    ``detach=True`` drops the autograd history."""
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind not in "biufc":
            raise TypeError(
                f"{name} must be a numeric array, got an array of dtype {x.dtype}"
                + (" (Python objects)" if x.dtype == object else "")
            )
        try:
            t = torch.from_numpy(np.ascontiguousarray(x))
        except TypeError as err:
            raise TypeError(f"{name} has a numpy dtype torch cannot read: {err}") from None
    elif isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} could not be read as a numeric array: {err}") from None
        return as_tensor(arr, name, detach=detach)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")
    if t.device.type == "meta":
        raise ValueError(
            f"{name} is on the meta device, which holds no data; pass a CPU or CUDA tensor"
        )
    if detach and t.requires_grad:
        t = t.detach()
    return t


def check_features(
    x: Any,
    name: str,
    *,
    dim: int | None = None,
    allow_empty: bool = False,
    finite: bool = True,
    detach: bool = False,
    dim_of: str = "the dimension of the fitted database",
) -> Tensor:
    """Validate a ``(num_items, dim)`` floating point descriptor matrix.

    Half precision inputs are upcast to ``float32`` (sparse and solver kernels need it);
    ``float32`` and ``float64`` are kept. Integer and boolean inputs are refused;
    ``detach=True`` drops the autograd history (where gradients are not meaningful).
    ``dim_of`` says where the expected ``dim`` comes from (named in the message, e.g.
    ``"the dimension of queries"``).
    """
    t = as_tensor(x, name, detach=detach)
    if t.is_sparse or t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} must hold floating point descriptors, got dtype {t.dtype}; "
            f"cast it, e.g. {name}.float()"
        )
    if t.dtype in _HALF:
        t = t.float()
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (num_items, dim) array, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)} has no rows")
    if t.shape[1] == 0:
        raise ValueError(f"{name} has zero-length descriptors: shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(
            f"{name} has descriptors of dimension {t.shape[1]}, expected {dim} ({dim_of})"
        )
    # a finite sum has only finite terms (NaN and inf propagate), so one reduction clears
    # the common case; a sum that overflows is checked entry by entry
    if finite and t.numel() and not bool(torch.isfinite(t.sum())):
        if not bool(torch.isfinite(t).all()):
            bad = (~torch.isfinite(t)).any(dim=1).nonzero().flatten()
            raise ValueError(
                f"{name} contains NaN or infinite values in {bad.numel()} row(s), "
                f"first row {int(bad[0])}"
            )
    return t


def check_normalized(
    x: Tensor, name: str, *, atol: float = 1e-3, offer_option: bool = True
) -> Tensor:
    """Check that every row of ``x`` has unit L2 norm (within ``atol``).

    Norms are computed in the input's precision; the rows of a float32 input whose norm is
    not clearly within ``atol`` (its rounding error, at most about ``dim * 6e-8``, is well
    under half of it) are computed again in float64, a block of rows at a time (no float64
    copy of ``x``). ``offer_option=False`` leaves out the hint "or pass normalize=True" for
    callers without such an option.
    """
    if x.shape[0] == 0:
        return x
    if x.dtype == torch.float32 and x.shape[1] * 6e-8 < atol / 4:
        norms = torch.linalg.vector_norm(x, dim=1)
        near = ((norms - 1).abs() > atol / 2).nonzero().flatten()
        if not near.numel():
            return x
        x64 = x.index_select(0, near)
    else:
        near, x64 = None, x
    rows = max(1, (64 * 2**20) // (8 * max(1, x.shape[1])))
    norms = torch.cat(
        [
            torch.linalg.vector_norm(x64[s : s + rows].double(), dim=1)
            for s in range(0, x64.shape[0], rows)
        ]
    )
    dev = (norms - 1).abs()
    worst = int(dev.argmax())
    if float(dev[worst]) > atol:
        row = worst if near is None else int(near[worst])  # its row in x
        raise ValueError(
            f"{name} must be L2-normalised (this method uses cosine similarities), but row "
            f"{row} has norm {float(norms[worst]):.6g}; normalise with "
            f"torch.nn.functional.normalize({name}, dim=1)"
            + (" or pass normalize=True" if offer_option else "")
        )
    return x


def check_int(
    value: Any,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    low_of: str | None = None,
    high_of: str | None = None,
) -> int:
    """Check that ``value`` is an integer in ``[low, high]`` (numpy integers are returned as
    ``int``). ``low_of`` / ``high_of`` say where a bound comes from (named in the message, e.g.
    ``high_of="the number of rows of x"``)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(
            f"{name} must be >= {low}" + (f" ({low_of})" if low_of else "") + f", got {value}"
        )
    if high is not None and value > high:
        raise ValueError(
            f"{name} must be <= {high}" + (f" ({high_of})" if high_of else "") + f", got {value}"
        )
    return value


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = False,
) -> float:
    """Check that ``value`` is a real number in the given (open or closed) interval;
    ``finite=True`` also refuses infinite values (the default of the declared :func:`Real`)."""
    if isinstance(value, bool) or not isinstance(value, _Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name} must not be NaN")
    if finite and value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_in(value: Any, name: str, options: Sequence[Any]) -> Any:
    """Check that ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)!r}, got {value!r}")
    return value


def check_k(k: Any, num_items: int, *, name: str = "k", what: str = "the database") -> int:
    """Check ``1 <= k <= num_items``."""
    k = check_int(k, name, low=1)
    if k > num_items:
        raise ValueError(f"{name}={k} is larger than {what}, which holds {num_items} item(s)")
    return k


def _memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device`` in bytes (physical memory for the CPU), ``None`` if unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[1])
        if device.type == "cpu":
            import os

            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, RuntimeError, ValueError):
        return None
    return None


def check_allocation(
    numel: int, dtype: torch.dtype, device: torch.device | str, name: str, what: str
) -> int:
    """Refuse, before allocating it, an array of ``numel`` elements of ``dtype`` larger than
    the memory of ``device`` (the whole physical memory on the CPU): a ``ValueError`` naming
    the argument ``name`` that sized it and ``what`` it is, instead of an allocator error or
    the out-of-memory killer. Returns ``numel``."""
    device = torch.device(device)
    numel = int(numel)
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    total = _memory_bytes(device)
    if total is not None and nbytes > total:
        raise ValueError(
            f"{name} asks for {what} of {numel:,} entries ({nbytes / 2**30:,.1f} GiB), more "
            f"than the {total / 2**30:,.1f} GiB of memory of {device.type}"
        )
    return numel


def check_same_device(**tensors: Tensor) -> torch.device:
    """Check that all named tensors live on one device and return it."""
    items = [(n, t) for n, t in tensors.items() if t is not None]
    device = items[0][1].device
    for n, t in items[1:]:
        if t.device != device:
            first = items[0][0]
            raise ValueError(
                f"{n} is on {t.device} but {first} is on {device}; move them to one device "
                f"(e.g. {n}.to({first}.device)) - graphrerank never moves data between devices silently"
            )
    return device


# ----------------------------------------------------------------------------- arrays
_KINDS = ("float", "int", "bool", "number", None)


def _shape_str(shape: Sequence[int | None]) -> str:
    return (
        "("
        + ", ".join("*" if s is None else str(s) for s in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def check_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    kind: str | None = "float",
    shape: Sequence[int | None] | None = None,
    allow_empty: bool = True,
    finite: bool = False,
    nan: bool = True,
    detach: bool = False,
    posinf: bool = True,
) -> Tensor:
    """Validate a dense array: numpy input converted, ``meta`` tensors refused, ``ndim`` (one
    or several allowed), ``kind`` of dtype (``"float"``: half precision upcast to ``float32``;
    ``"int"``: converted to int64; ``"bool"``; ``"number"``: int or float; ``None``: any),
    ``shape`` (``None`` entries match any size), emptiness, finiteness (``finite=True``) or NaN alone (``nan=False``; infinite values
    allowed, e.g. ``-inf`` for padding; ``posinf=False`` refuses ``+inf`` as well, leaving
    ``-inf`` alone). ``detach=True`` drops the autograd history (where gradients are not
    meaningful)."""
    t = as_tensor(x, name, detach=detach)
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if kind == "float":
        if not t.is_floating_point():
            raise TypeError(f"{name} must hold floating point values, got dtype {t.dtype}")
        if t.dtype in _HALF:
            t = t.float()
    elif kind == "int":
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer ids, got dtype {t.dtype}")
        t = t.long()
    elif kind == "bool":
        if t.dtype != torch.bool:
            raise TypeError(f"{name} must be a boolean tensor, got dtype {t.dtype}")
    elif kind == "number":
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
        if t.dtype in _HALF:
            t = t.float()
    elif kind is not None:
        raise ValueError(f"kind must be one of {list(_KINDS)!r}, got {kind!r}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
        if not ok:
            raise ValueError(f"{name} must have shape {_shape_str(shape)}, got {tuple(t.shape)}")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if finite and t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if not nan and t.is_floating_point() and t.numel() and bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")
    if not posinf and t.is_floating_point() and t.numel() and bool(torch.isposinf(t).any()):
        raise ValueError(f"{name} contains +inf (only -inf, for padding, is allowed)")
    return t


def check_index(
    x: Any,
    name: str,
    *,
    high: int,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    padding: bool = False,
    unique: bool = False,
    of: str | None = None,
) -> Tensor:
    """Validate integer ids in ``[0, high)`` (``padding=True``: ``-1`` also allowed) and return
    them as int64; ``unique=True``: no id repeated within a row (the last dimension; padding
    may repeat). ``of`` names where ``high`` comes from in the message, a format string with
    ``{high}`` (e.g. ``"num_nodes={high}"`` or ``"x with {high} row(s)"``)."""
    high = check_int(high, "high", low=0)
    t = check_tensor(x, name, ndim=ndim, shape=shape, kind="int")
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        floor = -1 if padding else 0
        if lo < floor or hi >= high:
            bad = lo if lo < floor else hi
            what = f"[0, {high - 1}]" if high > 0 else "an empty range (no items)"
            where = f" for {of.format(high=high)}" if of else ""
            raise ValueError(
                f"{name} holds the id {bad}, out of range{where}: ids must lie in {what}"
                + (" or be -1 (padding)" if padding else "")
            )
    if unique and t.dim() and t.shape[-1] > 1:
        srt = t.sort(dim=-1).values
        rep = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
        if bool(rep.any()):
            where = rep.reshape(-1, rep.shape[-1]).any(-1).nonzero()[0]
            raise ValueError(f"{name} repeats an id within row {int(where)}; ids must be unique")
    return t


def check_edge_index(edge_index: Any, name: str, num_nodes: int, of: str | None = None) -> Tensor:
    """Validate a ``(2, E)`` edge index of a graph of ``num_nodes`` nodes (int64 returned);
    ``of`` as in :func:`check_index` (what fixes the number of nodes, named in the message)."""
    t = check_tensor(edge_index, name, kind="int")
    if t.dim() != 2 or t.shape[0] != 2:
        raise ValueError(f"{name} must have shape (2, E), got {tuple(t.shape)}")
    return check_index(t, name, high=num_nodes, of=of)


# ----------------------------------------------------------------------------- sparse
#: CSR tensors known valid (bounds, row pointers, finite values), and those also known to
#: have sorted unique columns within rows; keyed by ``id``, weakly held.
_CSR_OK: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()
_CSR_SORTED: weakref.WeakValueDictionary[int, Tensor] = weakref.WeakValueDictionary()


def trust_csr(a: Tensor, *, sorted: bool = False) -> Tensor:
    """Mark a CSR tensor built by the library itself as valid (``sorted``: with sorted unique
    columns within rows), so that :func:`check_csr` does not check it again."""
    _CSR_OK[id(a)] = a
    if sorted:
        _CSR_SORTED[id(a)] = a
    return a


def check_csr_parts(
    crow: Tensor, col: Tensor, val: Tensor, shape: Sequence[int], name: str, *, sorted: bool = True
) -> None:
    """Check the invariants of CSR parts: index dtypes, ``crow`` of length ``rows + 1`` from 0,
    non-decreasing, ending at the number of entries; columns in range and (``sorted``) strictly
    increasing within each row. Raises ``ValueError`` / ``TypeError`` naming ``name``."""
    for part, t in (("crow_indices", crow), ("col_indices", col), ("values", val)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {part} must be a tensor, got {type(t).__name__}")
        if t.device.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no data")
    if len(shape) != 2 or any(int(s) < 0 for s in shape):
        raise ValueError(f"{name} must be a 2-D sparse matrix, got shape {tuple(shape)}")
    rows, cols = int(shape[0]), int(shape[1])
    for part, t in (("crow_indices", crow), ("col_indices", col)):
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise TypeError(
                f"{name}: {part} must be a 1-D int32 or int64 tensor, got {t.dtype} "
                f"of shape {tuple(t.shape)}"
            )
    nnz = col.numel()
    if crow.numel() != rows + 1:
        raise ValueError(
            f"{name} is not a valid CSR matrix: crow_indices has {crow.numel()} entries, "
            f"expected rows + 1 = {rows + 1}"
        )
    if val.shape[:1] != (nnz,):
        raise ValueError(
            f"{name} is not a valid CSR matrix: {tuple(val.shape)} values for {nnz} column indices"
        )
    c = crow.long()
    if int(c[0]) != 0 or int(c[-1]) != nnz:
        raise ValueError(
            f"{name} is not a valid CSR matrix: crow_indices must run from 0 to the number of "
            f"entries {nnz}, got {int(c[0])} to {int(c[-1])}"
        )
    counts = c.diff()
    if counts.numel() and int(counts.min()) < 0:
        row = int((counts < 0).nonzero()[0])
        raise ValueError(f"{name} is not a valid CSR matrix: crow_indices decrease at row {row}")
    if nnz:
        lo, hi = int(col.min()), int(col.max())
        if lo < 0 or hi >= cols:
            raise ValueError(
                f"{name} is not a valid CSR matrix: column index {lo if lo < 0 else hi} is out "
                f"of range for {cols} column(s)"
            )
    if sorted and nnz > 1:
        cl = col.long()
        bad = cl[1:] <= cl[:-1]
        starts = c[1:-1]
        starts = starts[(starts > 0) & (starts < nnz)]
        bad[starts - 1] = False  # a new row may start lower
        if bool(bad.any()):
            pos = int(bad.nonzero()[0]) + 1
            row = int(torch.searchsorted(c, torch.tensor(pos, device=c.device), right=True)) - 1
            raise ValueError(
                f"{name} is not a valid CSR matrix: the column indices of row {row} are not "
                "sorted and unique"
            )


def check_csr(
    a: Any,
    name: str,
    *,
    shape: Sequence[int | None] | None = None,
    square: bool = False,
    convert: bool = False,
    sorted: bool = False,
    finite: bool = True,
) -> Tensor:
    """Validate a ``torch.sparse_csr`` matrix before any kernel reads it (index bounds,
    ``crow_indices`` consistency, shape, floating values, finiteness; ``sorted=True``: also
    sorted unique columns within each row, for the code that searches them). ``convert=True`` also accepts a sparse COO or dense 2-D tensor (or numpy array), converted
    to CSR. A valid tensor is remembered and not checked again."""
    known = _CSR_SORTED if sorted else _CSR_OK
    if isinstance(a, Tensor) and known.get(id(a)) is a and (finite or not sorted):
        out = a
    else:
        if isinstance(a, np.ndarray) or (isinstance(a, Tensor) and a.layout == torch.strided):
            if not convert:
                raise TypeError(f"{name} must be a torch.sparse_csr tensor, got a dense array")
            t = check_tensor(a, name, ndim=2, kind="float")
            with _quiet():
                a = t.to_sparse_csr()
        if not isinstance(a, Tensor):
            raise TypeError(f"{name} must be a torch.sparse_csr tensor, got {type(a).__name__}")
        if a.device.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no data")
        if a.layout == torch.sparse_coo:
            if not convert:
                raise TypeError(f"{name} must be a torch.sparse_csr tensor, got layout {a.layout}")
            if a.dim() != 2:
                raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(a.shape)}")
            idx = a._indices()
            if idx.numel() and (
                int(idx.min()) < 0
                or bool((idx.max(1).values >= torch.tensor(a.shape[:2], device=idx.device)).any())
            ):
                raise ValueError(f"{name} is not a valid sparse matrix: indices out of range")
            with _quiet():
                a = a.coalesce().to_sparse_csr()
        if a.layout != torch.sparse_csr:
            raise TypeError(f"{name} must be a torch.sparse_csr tensor, got layout {a.layout}")
        if a.dim() != 2:
            raise ValueError(f"{name} must be a 2-D CSR matrix, got shape {tuple(a.shape)}")
        val = a.values()
        if not val.is_floating_point():
            raise TypeError(f"{name} must hold floating point values, got dtype {val.dtype}")
        check_csr_parts(a.crow_indices(), a.col_indices(), val, a.shape, name, sorted=sorted)
        if finite and val.numel() and not bool(torch.isfinite(val).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        out = trust_csr(a, sorted=sorted) if finite else a
    if square and out.shape[0] != out.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {tuple(out.shape)}")
    if shape is not None and not all(s is None or s == d for s, d in zip(shape, out.shape)):
        raise ValueError(f"{name} must have shape {_shape_str(shape)}, got {tuple(out.shape)}")
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        yield


def check_graph(
    graph: Any, name: str = "graph", *, weights: bool = False
) -> tuple[Tensor, Tensor | None, int]:
    """Validate a PyG ``Data`` graph: ``num_nodes`` set, ``edge_index`` ``(2, E)`` in range,
    ``edge_weight`` (required with ``weights=True``) ``(E,)`` finite floats. Returns
    ``(edge_index, edge_weight or None, num_nodes)``."""
    from torch_geometric.data import Data

    if not isinstance(graph, Data):
        raise TypeError(f"{name} must be a torch_geometric Data, got {type(graph).__name__}")
    ei = getattr(graph, "edge_index", None)
    if ei is None:
        raise ValueError(f"{name} has no edge_index")
    n = graph.num_nodes
    if n is None:
        raise ValueError(f"{name} has no num_nodes")
    n = check_int(n, f"{name}.num_nodes", low=0)
    ei = check_edge_index(ei, f"{name}.edge_index", n)
    w = getattr(graph, "edge_weight", None)
    if w is None:
        if weights:
            raise ValueError(f"{name} has no edge_weight")
        return ei, None, n
    w = check_tensor(w, f"{name}.edge_weight", shape=(ei.shape[1],), kind="float", finite=True)
    check_same_device(**{f"{name}.edge_index": ei, f"{name}.edge_weight": w})
    return ei, w, n


# ----------------------------------------------------------------------------- declared checks
class Ref:
    """A value taken from another (already checked) argument of the same call: the argument
    itself, its size along ``dim``, or ``fn`` of it."""

    def __init__(self, arg: str, dim: int | None = None, fn: Callable[[Any], Any] | None = None):
        self.arg, self.dim, self.fn = arg, dim, fn

    def resolve(self, args: dict[str, Any]) -> Any:
        v = args[self.arg]
        if self.dim is not None:
            v = int(v.shape[self.dim])
        return self.fn(v) if self.fn is not None else v


def _resolve(v: Any, args: dict[str, Any]) -> Any:
    if isinstance(v, Ref):
        return v.resolve(args)
    if isinstance(v, tuple):
        return tuple(_resolve(e, args) for e in v)
    return v


class Check:
    """One declared check: ``Check(fn, **options)`` calls ``fn(value, name, **options)`` with
    :class:`Ref` options resolved against the call's other arguments; ``optional=True`` lets
    ``None`` through."""

    def __init__(self, fn: Callable[..., Any], *, optional: bool = False, **options: Any):
        self.fn, self.optional, self.options = fn, optional, options

    def __call__(self, value: Any, name: str, args: dict[str, Any]) -> Any:
        if value is None and self.optional:
            return None
        return self.fn(value, name, **{k: _resolve(v, args) for k, v in self.options.items()})


def Array(**options: Any) -> Check:
    """:func:`check_tensor` as a declared check."""
    return Check(check_tensor, **options)


def Features(**options: Any) -> Check:
    """:func:`check_features` as a declared check."""
    return Check(check_features, **options)


def Index(**options: Any) -> Check:
    """:func:`check_index` as a declared check."""
    return Check(check_index, **options)


def Edges(num_nodes: Any, **options: Any) -> Check:
    """:func:`check_edge_index` as a declared check."""
    return Check(check_edge_index, num_nodes=num_nodes, **options)


def CSR(**options: Any) -> Check:
    """:func:`check_csr` as a declared check."""
    return Check(check_csr, **options)


def Int(**options: Any) -> Check:
    """:func:`check_int` as a declared check."""
    return Check(check_int, **options)


def Real(**options: Any) -> Check:
    """:func:`check_real` as a declared check (finite unless ``finite=False``)."""
    options.setdefault("finite", True)
    return Check(check_real, **options)


def OneOf(options: Sequence[Any], **kw: Any) -> Check:
    """:func:`check_in` as a declared check."""
    return Check(check_in, options=options, **kw)


def Graph(**options: Any) -> Check:
    """:func:`check_graph` as a declared check (the ``Data`` itself is passed on)."""

    def fn(value: Any, name: str, **kw: Any) -> Any:
        check_graph(value, name, **kw)
        return value

    return Check(fn, **options)


def checked(**checks: Check) -> Callable[[F], F]:
    """Declare the checks of a function's arguments: ``@checked(x=Features(), k=Int(low=1))``.

    Each named argument is passed through its check (in the order given, so that a
    :class:`Ref` may name an argument checked before it) and the function receives the checked
    values (numpy converted, half precision upcast, ids as int64).
    """

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)
        unknown = set(checks) - set(sig.parameters)
        if unknown:
            raise TypeError(f"checks for unknown arguments of {fn.__qualname__}: {sorted(unknown)}")

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            for name, check in checks.items():
                values[name] = check(values[name], name, values)
            return fn(*bound.args, **bound.kwargs)

        inner.__wrapped_checks__ = checks  # type: ignore[attr-defined]
        return inner  # type: ignore[return-value]

    return wrap
