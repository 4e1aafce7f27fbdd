"""Feed every public function generated bad and edge inputs and classify each call.

Each target (a public function, a class's methods, an estimator's ``fit`` / ``rerank``) has a
small valid baseline call; every argument of it is then replaced, one at a time, by the values of
the input families of its kind (wrong ndim and dims, every dtype, NaN / inf, empty, N = 1 / 2,
k = 0 / < 0 / > N / float / str, non-contiguous and negative strides, zero, identical and 1e30
vectors, numpy / torch mixed, ``meta``-device and ``requires_grad`` tensors, wrong label lengths,
-1 padding, junk-only ground truth, corrupt files). Each call is classified:

- **valid result**: it returned, and the output invariants hold (shapes, finite scores sorted
  best first, indices in range or -1);
- **clear error**: ``ValueError`` / ``TypeError`` (or a documented ``CorruptFileError``,
  ``NotFittedError``, ``FileNotFoundError``) whose message names the argument;
- **unclear error**: one of those types, but the message names no argument;
- **internal error**: any other exception (``RuntimeError`` from torch, ``IndexError``, ...);
- **silently wrong**: a result that violates the invariants, or a result for an input that
  must be refused (NaN, out-of-range indices, ...);
- **crash / hang**: the worker process died or ran past the timeout.

Calls run in long-lived worker processes (a fresh one replaces a worker that crashed or hung),
each call seeded from ``--seed`` and its name, so a run is reproducible and a single case can be
replayed with ``--case``.

Usage::

    python benchmarks/fuzz_public_api.py --quick --out /tmp/fuzz.json
    python benchmarks/fuzz_public_api.py --layer metrics --case "metrics.revisited_map|gnd|junk_only"
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = {
    "rerankers": "re-rankers (fit / rerank, one-call functions)",
    "knn": "kNN search, `KNNIndex`, `knn_graph`",
    "metrics": "metrics",
    "datasets": "datasets / loaders",
    "plot": "plot",
    "lower": "public lower layers (graph utilities, nn layers, solvers, models)",
}
OUTCOMES = ["valid", "clear", "unclear", "internal", "silent", "crash"]
HEADERS = [
    "valid result",
    "clear error",
    "unclear error",
    "internal error",
    "silently wrong",
    "crash / hang",
]

N, D, Q = 24, 8, 4  # database size, dimension, number of queries of the baselines


class Skip(Exception):
    """The family does not apply to this value."""


# ----------------------------------------------------------------------------- values


def _feat(rng, n, d=D, dtype=None):
    import torch

    x = torch.from_numpy(rng.standard_normal((n, d)).astype("float32"))
    return torch.nn.functional.normalize(x, dim=1).to(dtype or torch.float32)


def _ranking(rng, q, k, n=N):
    import torch

    return torch.from_numpy(
        rng.permuted(np.tile(np.arange(n), (q, 1)), axis=1)[:, :k].astype("int64")
    )


def _labels(rng, n, classes=4):
    import torch

    lab = np.arange(n) % classes
    rng.shuffle(lab)
    return torch.from_numpy(lab.astype("int64"))


import numpy as np  # noqa: E402  (used by the helpers above at call time)

# ----------------------------------------------------------------------------- families


@dataclass
class Family:
    name: str
    invalid: bool  # True: the call must refuse it (a result is "silently wrong")
    make: Callable[[Any, dict], Any]


def _fam(name, invalid=False):
    def deco(fn):
        return Family(name, invalid, fn)

    return deco


def _tensor_families():
    import torch

    def cast(dt):
        return lambda v, c: v.to(dt)

    def numpy_neg(v, c):
        if v.dim() == 0 or v.shape[0] < 2:
            raise Skip
        a = np.ascontiguousarray(v.numpy()[::-1])[::-1]  # same values, negative stride
        return a

    def noncontig(v, c):
        if v.dim() < 2:
            return torch.stack([v, v], dim=-1)[..., 0]
        return (
            v.t().contiguous().t()
            if v.dim() == 2
            else v.transpose(0, 1).contiguous().transpose(0, 1)
        )

    def nan(v, c):
        if not v.is_floating_point() or v.numel() == 0:
            raise Skip
        v = v.clone()
        v.view(-1)[0] = float("nan")
        return v

    def inf(v, c):
        if not v.is_floating_point() or v.numel() == 0:
            raise Skip
        v = v.clone()
        v.view(-1)[-1] = float("inf")
        return v

    common = [
        Family(
            "ndim-1", True, lambda v, c: v.reshape(-1)[:1].reshape(()) if v.dim() == 1 else v[0]
        ),
        Family("ndim+1", True, lambda v, c: v[None]),
        Family("empty", False, lambda v, c: v[:0]),
        Family("one_row", False, lambda v, c: v[:1]),
        Family("two_rows", False, lambda v, c: v[:2]),
        Family("noncontiguous", False, noncontig),
        Family("negative_stride", False, numpy_neg),
        Family("numpy", False, lambda v, c: v.numpy()),
        Family("list", False, lambda v, c: v.tolist()),
        Family("meta", False, lambda v, c: v.to("meta")),
        Family("sparse", False, lambda v, c: v.to_sparse() if v.dim() else v),
        Family("string", True, lambda v, c: "abc"),
        Family("strings_array", True, lambda v, c: np.full(tuple(v.shape), "x")),
        Family("none", False, lambda v, c: None),
        Family("dtype_bool", False, cast(torch.bool)),
        Family("dtype_uint8", False, cast(torch.uint8)),
        Family("dtype_int32", False, cast(torch.int32)),
    ]
    floats = [
        Family("dtype_int64", False, cast(torch.int64)),
        Family("dtype_float16", False, cast(torch.float16)),
        Family("dtype_bfloat16", False, cast(torch.bfloat16)),
        Family("dtype_float64", False, cast(torch.float64)),
        Family("dtype_complex64", False, cast(torch.complex64)),
        Family("nan", True, nan),
        Family("inf", True, inf),
        Family("zeros", False, lambda v, c: torch.zeros_like(v)),
        Family("identical", False, lambda v, c: v[:1].expand_as(v).clone() if v.dim() else v),
        Family("huge_1e30", False, lambda v, c: v * 1e30),
        Family("requires_grad", False, lambda v, c: v.clone().requires_grad_(True)),
        Family(
            "wrong_dim",
            False,
            lambda v, c: torch.cat([v, v[..., :1]], dim=-1) if v.dim() >= 1 else v,
        ),
    ]

    def outrange(v, c):
        v = v.clone()
        v.view(-1)[0] = c.get("num_items", N) + 3
        return v

    def below(v, c):
        v = v.clone()
        v.view(-1)[0] = -5
        return v

    def pad(v, c):
        if v.dim() != 2 or v.shape[1] < 2:
            raise Skip
        v = v.clone()
        v[:, -1] = -1
        return v

    def dup(v, c):
        if v.dim() != 2 or v.shape[1] < 2:
            raise Skip
        v = v.clone()
        v[:, 1] = v[:, 0]
        return v

    def longer(v, c):
        return torch.cat([v, v[:1]])

    ints = [
        Family("dtype_float32", False, cast(torch.float32)),
        Family("dtype_float_fraction", True, lambda v, c: v.to(torch.float32) + 0.5),
        Family("out_of_range", True, outrange),
        Family("below_-1", True, below),
        Family("padding_-1", False, pad),
        Family("duplicates", False, dup),
        Family("length+1", True, longer),
        Family("length-1", True, lambda v, c: v[1:] if v.shape[0] > 1 else v[:0]),
    ]
    return common, floats, ints


#: Arguments holding scores, where +-inf is a legitimate value.
SCORE_KEYS = {"scores", "global_scores", "logits", "similarities", "distances", "cand_val"}
#: Arguments holding labels: every integer is a valid label, and (1, n) is flattened.
LABEL_KEYS = {
    "labels",
    "database_labels",
    "query_labels",
    "query_ids",
    "query_cams",
    "gallery_ids",
    "gallery_cams",
}
_VALUE_FAMILIES = {"out_of_range", "below_-1", "dtype_float_fraction"}
_LABEL_EDGE = {"out_of_range", "below_-1", "ndim+1"}


def families_for(key: str, value: Any, role: str | None) -> list[Family]:
    import torch

    if role == "path":
        return PATH_FAMILIES
    if role == "gnd":
        return GND_FAMILIES
    if role == "csr":
        return CSR_FAMILIES
    if role == "graph":
        return GRAPH_FAMILIES
    if isinstance(value, torch.Tensor):
        common, floats, ints = _tensor_families()
        if value.is_floating_point():
            fams = common + floats
            if key in SCORE_KEYS:  # +-inf is a legitimate score (padding, masked entries)
                fams = [Family(f.name, False, f.make) if f.name == "inf" else f for f in fams]
            return fams
        if value.dtype == torch.bool:  # value families would be no-ops on booleans
            return common + [f for f in ints if f.name not in _VALUE_FAMILIES]
        if key in LABEL_KEYS or role == "labels":  # any integer is a label; (1, n) is accepted
            return [
                Family(f.name, False, f.make) if f.name in _LABEL_EDGE else f for f in common + ints
            ]
        if role == "counts":
            return common + [
                Family(f.name, False, f.make) if f.name == "out_of_range" else f for f in ints
            ]
        return common + ints
    if isinstance(value, bool):
        return [
            Family("str", False, lambda v, c: "yes"),
            Family("int2", False, lambda v, c: 2),
            Family("none", False, lambda v, c: None),
        ]
    if isinstance(value, int):
        return [
            Family("zero", False, lambda v, c: 0),
            Family("negative", False, lambda v, c: -1),
            Family("above_N", False, lambda v, c: c.get("num_items", N) + 5),
            Family("huge", False, lambda v, c: 10**12),
            Family("float_fraction", True, lambda v, c: v + 0.5),
            Family("float_integral", False, lambda v, c: float(v)),
            Family("str", True, lambda v, c: str(v)),
            Family("none", False, lambda v, c: None),
            Family("bool", False, lambda v, c: True),
            Family("numpy_int", False, lambda v, c: np.int64(v)),
            Family("tensor_int", False, lambda v, c: torch.tensor(v)),
        ]
    if isinstance(value, float):
        return [
            Family("nan", True, lambda v, c: float("nan")),
            Family("inf", False, lambda v, c: float("inf")),
            Family("-inf", False, lambda v, c: float("-inf")),
            Family("negative", False, lambda v, c: -1.0),
            Family("zero", False, lambda v, c: 0.0),
            Family("huge_1e30", False, lambda v, c: 1e30),
            Family("str", True, lambda v, c: "0.5"),
            Family("none", False, lambda v, c: None),
            Family("complex", True, lambda v, c: 1j),
            Family("numpy_float", False, lambda v, c: np.float32(v)),
        ]
    if isinstance(value, str):
        return [
            Family("bogus", False, lambda v, c: "bogus"),
            Family("empty", False, lambda v, c: ""),
            Family("int", False, lambda v, c: 3),
            Family("none", False, lambda v, c: None),
        ]
    if value is None:
        return [
            Family("string", True, lambda v, c: "junk"),
            Family("int", False, lambda v, c: 3),
            Family("tensor_3d", False, lambda v, c: torch.zeros(2, 2, 2)),
        ]
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(x, (int, float)) for x in value)
    ):
        return [
            Family("empty", False, lambda v, c: type(v)()),
            Family("zero_entry", False, lambda v, c: type(v)([0, *v[1:]])),
            Family("negative_entry", False, lambda v, c: type(v)([-1, *v[1:]])),
            Family("str_entry", True, lambda v, c: type(v)(["a", *v[1:]])),
            Family("nan_entry", True, lambda v, c: type(v)([float("nan"), *v[1:]])),
            Family("scalar", False, lambda v, c: v[0]),
            Family("string", True, lambda v, c: "abc"),
            Family("none", False, lambda v, c: None),
        ]
    return [
        Family("none", False, lambda v, c: None),
        Family("string", True, lambda v, c: "junk"),
        Family("int", False, lambda v, c: 3),
    ]


def _path_family(name, invalid, content):
    def make(v, c):
        p = Path(c["tmp"]) / f"bad_{name}{Path(str(v)).suffix}"
        data = content(Path(v))
        if data is None:
            return p
        p.write_bytes(data)
        return p

    return Family(name, invalid, make)


def _npy_bomb(_):
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 100000), }"
    header += b" " * (118 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


PATH_FAMILIES = [
    Family("missing", True, lambda v, c: Path(c["tmp"]) / "does_not_exist" / Path(str(v)).name),
    Family("directory", True, lambda v, c: Path(c["tmp"])),
    Family("none", True, lambda v, c: None),
    Family("int", True, lambda v, c: 3),
    Family("bytes", False, lambda v, c: os.fsencode(str(v))),
    Family("str", False, lambda v, c: str(v)),
    _path_family("empty_file", True, lambda p: b""),
    _path_family("random_bytes", True, lambda p: np.random.default_rng(0).bytes(4096)),
    _path_family("truncated", True, lambda p: p.read_bytes()[: max(1, p.stat().st_size // 2)]),
    _path_family("flipped_byte", True, lambda p: _flip(p.read_bytes())),
    _path_family("npy_header_bomb", True, _npy_bomb),
    _path_family("text", True, lambda p: b"hello world\n" * 50),
]


def _flip(b: bytes) -> bytes:
    b = bytearray(b)
    b[len(b) // 3] ^= 0xFF
    b[len(b) // 2] ^= 0x55
    return bytes(b)


def _gnd_mut(fn):
    def make(v, c):
        import copy

        g = copy.deepcopy(v)
        return fn(g, c)

    return make


def _set_all(key, value):
    def fn(g, c):
        for q in g:
            q[key] = value(q) if callable(value) else value
        return g

    return fn


GND_FAMILIES = [
    Family("empty_list", False, lambda v, c: []),
    Family(
        "junk_only",
        False,
        _gnd_mut(
            lambda g, c: [
                {
                    "easy": np.array([], dtype=np.int64),
                    "hard": np.array([], dtype=np.int64),
                    "junk": np.arange(c.get("num_items", N)),
                }
                for _ in g
            ]
        ),
    ),
    Family(
        "no_positive_one_query",
        False,
        _gnd_mut(
            lambda g, c: (
                [
                    dict(
                        g[0], easy=np.array([], dtype=np.int64), hard=np.array([], dtype=np.int64)
                    ),
                    *g[1:],
                ]
            )
        ),
    ),
    Family("missing_key", True, _gnd_mut(lambda g, c: [{"junk": q["junk"]} for q in g])),
    Family("out_of_range", True, _gnd_mut(_set_all("easy", lambda q: np.array([10**6])))),
    Family("negative_index", True, _gnd_mut(_set_all("easy", lambda q: np.array([-3])))),
    Family(
        "float_index",
        False,
        _gnd_mut(_set_all("easy", lambda q: np.asarray(q["easy"], dtype=float))),
    ),
    Family(
        "fraction_index",
        True,
        _gnd_mut(_set_all("easy", lambda q: np.asarray(q["easy"], dtype=float) + 0.5)),
    ),
    Family("string_index", True, _gnd_mut(_set_all("easy", lambda q: np.array(["a", "b"])))),
    Family("none_entry", True, _gnd_mut(lambda g, c: [None, *g[1:]])),
    Family("not_a_list", True, lambda v, c: 3),
    Family("none", True, lambda v, c: None),
    Family("nested_2d", False, _gnd_mut(_set_all("easy", lambda q: np.asarray(q["easy"])[None]))),
    Family("one_query", False, lambda v, c: v[:1]),
]


def _graph_mut(fn):
    def make(v, c):
        g = v.clone()
        return fn(g, c)

    return make


def _ei_set(value):
    def fn(g, c):
        g.edge_index = g.edge_index.clone()
        g.edge_index[0, 0] = value if not callable(value) else value(g)
        return g

    return fn


GRAPH_FAMILIES = [
    Family("edge_-1", True, _graph_mut(_ei_set(-1))),
    Family("edge_out_of_range", True, _graph_mut(_ei_set(lambda g: g.num_nodes + 2))),
    Family(
        "edge_float",
        False,
        _graph_mut(lambda g, c: setattr(g, "edge_index", g.edge_index.float()) or g),
    ),
    Family(
        "edge_3rows",
        True,
        _graph_mut(lambda g, c: setattr(g, "edge_index", g.edge_index.repeat(2, 1)[:3]) or g),
    ),
    Family(
        "weight_nan",
        True,
        _graph_mut(
            lambda g, c: setattr(g, "edge_weight", g.edge_weight.clone().fill_(float("nan"))) or g
        ),
    ),
    Family("weight_missing", False, _graph_mut(lambda g, c: setattr(g, "edge_weight", None) or g)),
    Family(
        "weight_short",
        True,
        _graph_mut(lambda g, c: setattr(g, "edge_weight", g.edge_weight[:-1]) or g),
    ),
    Family(
        "no_edges",
        False,
        _graph_mut(
            lambda g, c: (
                setattr(g, "edge_index", g.edge_index[:, :0])
                or setattr(g, "edge_weight", g.edge_weight[:0])
                or g
            )
        ),
    ),
    Family("meta", False, lambda v, c: v.to("meta")),
    Family("tensor", False, lambda v, c: v.edge_index),
    Family("none", True, lambda v, c: None),
]


def _LONG0():
    import torch

    return torch.tensor([0])


def _LONG1():
    import torch

    return torch.tensor([1])


def _csr_set(fn):
    def make(v, c):
        import torch

        crow, col, val = v.crow_indices().clone(), v.col_indices().clone(), v.values().clone()
        crow, col, val, shape = fn(crow, col, val, tuple(v.shape))
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)

    return make


CSR_FAMILIES = [
    Family(
        "col_out_of_range",
        True,
        _csr_set(lambda r, c, v, s: (r, c.index_fill_(0, _LONG0(), s[1] + 3), v, s)),
    ),
    Family(
        "col_negative",
        True,
        _csr_set(lambda r, c, v, s: (r, c.index_fill_(0, _LONG0(), -1), v, s)),
    ),
    Family(
        "crow_corrupt",
        True,
        _csr_set(lambda r, c, v, s: (r.index_fill_(0, _LONG1(), 10**6), c, v, s)),
    ),
    Family("crow_decreasing", True, _csr_set(lambda r, c, v, s: (r.flip(0), c, v, s))),
    Family("values_nan", True, _csr_set(lambda r, c, v, s: (r, c, v.fill_(float("nan")), s))),
    Family("non_square", False, lambda v, c: v.to_dense()[:, :-1].to_sparse_csr()),
    Family("dense", False, lambda v, c: v.to_dense()),
    Family("coo", False, lambda v, c: v.to_sparse_coo()),
    Family("float64", False, lambda v, c: v.to(__import__("torch").float64)),
    Family("meta", False, lambda v, c: v.to("meta")),
    Family("none", True, lambda v, c: None),
]

# ----------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    layer: str
    base: Callable[[Any, dict], dict]  # (rng, ctx) -> kwargs of a valid call
    call: Callable[[dict], Any]
    roles: dict[str, str] = field(default_factory=dict)  # argument -> "path" | "gnd" | ...
    check: Callable[[Any, dict, dict], str | None] | None = None  # invariant violation or None
    extra: list[tuple[str, Callable[[dict], Any], bool]] = field(default_factory=list)
    #: "arg|family" cases that are edge cases here although invalid in general
    edge: set[str] = field(default_factory=set)
    #: other names an error message may use for an argument (e.g. the setting being swept)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _arg(key: str) -> str:
    return key.split("@")[0]


_REGIONAL = {"Diffusion", "FastSpectralRanking", "RegionalDiffusion"}
_REGIONAL_FNS = {"diffusion_rerank", "fsr_rerank", "regional_diffusion_rerank"}


def _estimator_targets() -> list[Target]:
    import graphrerank.rerankers as R

    small = {
        "KReciprocal": {"k1": 6, "k2": 3},
        "GNNRerank": {"k1": 6, "k2": 3},
        "SuperGlobal": {"M": 8, "K": 3},
        "Diffusion": {"kd": 6, "kq": 4},
        "RegionalDiffusion": {"kd": 6, "kq": 4},
        "FastSpectralRanking": {"kd": 6, "kq": 4},
        "OfflineDiffusion": {"kd": 6, "kq": 4, "truncation": 12},
        "RDiP": {"kd": 6, "kq": 4, "truncation": 12},
        "AverageQueryExpansion": {"k": 3},
        "AlphaQueryExpansion": {"k": 3},
        "DatabaseAugmentation": {"k": 3},
    }
    out = []
    import dataclasses

    for cls in R.RERANKERS:
        name = cls.__name__
        if name == "Pipeline":
            continue
        settings = {}
        for f in dataclasses.fields(cls):
            if not f.init or f.name in ("progress",):
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            if f.name == "backend":
                default = "torch"
            settings[f.name + "@set"] = default
        for k, v in small.get(name, {}).items():
            settings[k + "@set"] = v

        def base(rng, ctx, settings=settings):
            ctx["num_items"] = N
            return {**settings, "database": _feat(rng, N), "queries": _feat(rng, Q), "k@rerank": 5}

        # (Q, R, D) regional queries are documented input; store is any folder path
        edge = {"queries|ndim+1"} if name in _REGIONAL else set()
        edge |= {"store|string"}

        def call(kw, cls=cls):
            s = {_arg(k): v for k, v in kw.items() if k.endswith("@set")}
            r = cls(**s).fit(kw["database"])
            return r.rerank(kw["queries"], kw["k@rerank"])

        out.append(
            Target(
                f"rerankers.{name}",
                "rerankers",
                base,
                call,
                check=check_ranking_result,
                edge=edge,
                extra=[
                    ("not_fitted", lambda kw, cls=cls: cls().rerank(None, 3), True),
                    ("all_vs_all", lambda kw, call=call: call({**kw, "queries": None}), False),
                ],
            )
        )

    def pipe_base(rng, ctx):
        ctx["num_items"] = N
        return {"database": _feat(rng, N), "queries": _feat(rng, Q), "k": 5, "depth": 8}

    def pipe_call(kw):
        p = R.Pipeline(
            [R.KNN(backend="torch"), R.AlphaQueryExpansion(k=3, backend="torch")], depth=kw["depth"]
        )
        return p.fit(kw["database"]).rerank(kw["queries"], kw["k"])

    out.append(
        Target("rerankers.Pipeline", "rerankers", pipe_base, pipe_call, check=check_ranking_result)
    )

    onecall = {
        "alpha_query_expansion": {"num_neighbors": 3},
        "average_query_expansion": {"num_neighbors": 3},
        "database_augmentation": {"num_neighbors": 3},
        "diffusion_rerank": {"kd": 6, "kq": 4},
        "fsr_rerank": {"kd": 6, "kq": 4},
        "gnn_rerank": {"k1": 6, "k2": 3},
        "kreciprocal_rerank": {"k1": 6, "k2": 3},
        "offline_diffusion_rerank": {"kd": 6, "kq": 4, "truncation": 12},
        "rdip_rerank": {"kd": 6, "kq": 4, "truncation": 12},
        "regional_diffusion_rerank": {"kd": 6, "kq": 4},
        "superglobal_rerank": {"M": 8, "K": 3},
    }
    for fname, extra in onecall.items():
        fn = getattr(R, fname)

        def base(rng, ctx, extra=extra):
            ctx["num_items"] = N
            return {"queries": _feat(rng, Q), "database": _feat(rng, N), "k": 5, **extra}

        out.append(
            Target(
                f"rerankers.{fname}",
                "rerankers",
                base,
                lambda kw, fn=fn: fn(**kw),
                check=check_ranking_result,
                edge={"queries|ndim+1"} if fname in _REGIONAL_FNS else set(),
            )
        )

    def krd_base(rng, ctx):
        import torch

        ctx["num_items"] = N
        db, qu = _feat(rng, N), _feat(rng, Q)
        return {
            "q_g_dist": torch.cdist(qu, db),
            "q_q_dist": torch.cdist(qu, qu),
            "g_g_dist": torch.cdist(db, db),
            "k": 5,
            "k1": 6,
            "k2": 3,
            "lambda_value": 0.3,
        }

    out.append(
        Target(
            "rerankers.kreciprocal_rerank_distances",
            "rerankers",
            krd_base,
            lambda kw: R.kreciprocal_rerank_distances(**kw),
            check=check_ranking_result,
        )
    )
    return out


def _knn_targets() -> list[Target]:
    from graphrerank import graph as G

    def base(rng, ctx):
        ctx["num_items"] = N
        return {
            "queries": _feat(rng, Q),
            "database": _feat(rng, N),
            "k": 5,
            "metric": "ip",
            "backend": "torch",
        }

    def base_faiss(rng, ctx):
        return {**base(rng, ctx), "backend": "faiss"}

    def idx_base(rng, ctx):
        ctx["num_items"] = N
        return {
            "metric": "ip",
            "kind": "flat",
            "backend": "auto",
            "vectors": _feat(rng, N),
            "queries": _feat(rng, Q),
            "k": 5,
        }

    def idx_call(kw):
        s = {k: kw[k] for k in ("metric", "kind", "backend")}
        return G.KNNIndex(**s).add(kw["vectors"]).search(kw["queries"], kw["k"])

    def ivf_base(rng, ctx):
        ctx["num_items"] = 64
        return {
            "kind": "ivfpq",
            "nlist": 2,
            "pq_m": 2,
            "pq_nbits": 4,
            "vectors": _feat(rng, 64),
            "queries": _feat(rng, Q),
            "k": 5,
        }

    def ivf_call(kw):
        s = {k: kw[k] for k in ("kind", "nlist", "pq_m", "pq_nbits")}
        ix = G.KNNIndex(**s)
        ix.train(kw["vectors"])
        return ix.add(kw["vectors"]).search(kw["queries"], kw["k"])

    def save_base(rng, ctx):
        p = Path(ctx["tmp"]) / "index"
        if not (Path(ctx["tmp"]) / "index.saved").exists():
            saved = G.KNNIndex(backend="torch").add(_feat(np.random.default_rng(0), N)).save(p)
            (Path(ctx["tmp"]) / "index.saved").write_text(str(saved))
        p = Path((Path(ctx["tmp"]) / "index.saved").read_text())
        ctx["num_items"] = N
        return {"path": p, "device": "cpu", "queries": _feat(rng, Q), "k": 5}

    def load_call(kw):
        return G.KNNIndex.load(kw["path"], device=kw["device"]).search(kw["queries"], kw["k"])

    def kg_base(rng, ctx):
        ctx["num_items"] = N
        return {"x": _feat(rng, N), "k": 5, "metric": "ip", "symmetrize": None, "gamma": 1.0}

    def mkg_base(rng, ctx):
        ctx["num_items"] = N
        return {"x": _feat(rng, N), "k": 5, "gamma": 3.0, "backend": "torch"}

    def dbi_base(rng, ctx):
        return {"x": _feat(rng, N), "search": "auto", "backend": "auto"}

    return [
        Target(
            "graph.knn_search[torch]",
            "knn",
            base,
            lambda kw: G.knn_search(**kw),
            check=check_knn_result,
        ),
        Target(
            "graph.knn_search[faiss]",
            "knn",
            base_faiss,
            lambda kw: G.knn_search(**kw),
            check=check_knn_result,
        ),
        Target("graph.KNNIndex", "knn", idx_base, idx_call, check=check_knn_result),
        Target("graph.KNNIndex[ivfpq]", "knn", ivf_base, ivf_call, check=check_knn_result),
        Target(
            "graph.KNNIndex.load",
            "knn",
            save_base,
            load_call,
            roles={"path": "path"},
            check=check_knn_result,
        ),
        Target("graph.knn_graph", "knn", kg_base, lambda kw: G.knn_graph(**kw), check=check_graph),
        Target(
            "graph.mutual_knn_graph",
            "knn",
            mkg_base,
            lambda kw: G.mutual_knn_graph(**kw),
            check=check_graph,
        ),
        Target(
            "graph.database_index",
            "knn",
            dbi_base,
            lambda kw: G.database_index(**kw).search(kw["x"][:3], 3),
            check=check_knn_result,
        ),
    ]


def _graph_data(rng, n=N, k=4):
    from graphrerank.graph import knn_graph

    return knn_graph(_feat(rng, n), k, symmetrize="mutual", gamma=3.0)


def _normalized_graph_data(rng, n=N, k=4):
    """The normalised graph S that diffusion operators and spectral embeddings expect (the raw
    weights of :func:`_graph_data` can give eigenvalues above 1: an invalid baseline)."""
    from graphrerank.graph import knn_graph

    return knn_graph(_feat(rng, n), k, symmetrize="mutual", gamma=3.0, normalize="sym")


def _csr(rng, n=N, k=4):
    from graphrerank.graph import to_torch_csr

    return to_torch_csr(_graph_data(rng, n, k))


def _lower_targets() -> list[Target]:
    import torch

    import graphrerank.diffusion as Df
    import graphrerank.graph as G
    import graphrerank.models as Mo
    import graphrerank.nn as Nn

    def knn_lists(rng, n=N, k=5):
        x = _feat(rng, n)
        s = x @ x.t()
        v, i = s.topk(k, dim=1)
        return v, i

    T = []

    def add(name, base, call, roles=None, check=None):
        T.append(Target(name, "lower", base, call, roles or {}, check))

    def ctxn(ctx, n=N):
        ctx["num_items"] = n

    add(
        "graph.to_torch_csr",
        lambda r, c: {"graph": _graph_data(r)},
        lambda kw: G.to_torch_csr(**kw),
        {"graph": "graph"},
        check_csr,
    )
    add(
        "graph.to_scipy",
        lambda r, c: {"graph": _graph_data(r)},
        lambda kw: G.to_scipy(**kw),
        {"graph": "graph"},
    )
    add(
        "graph.from_scipy",
        lambda r, c: {"matrix": G.to_scipy(_graph_data(r))},
        lambda kw: G.from_scipy(**kw),
        None,
        check_graph,
    )

    def sym_base(r, c):
        g = _graph_data(r)
        ctxn(c)
        return {
            "edge_index": g.edge_index,
            "edge_weight": g.edge_weight,
            "num_nodes": N,
            "how": "mutual",
        }

    add("graph.symmetrize", sym_base, lambda kw: G.symmetrize(**kw), None, check_edges)

    def norm_base(r, c):
        return {**sym_base(r, c), "how": "sym"}

    add("graph.normalize_adjacency", norm_base, lambda kw: G.normalize_adjacency(**kw))

    def ew_base(r, c):
        v, _ = knn_lists(r)
        return {"scores": v, "gamma": 3.0}

    add("graph.edge_weights", ew_base, lambda kw: G.edge_weights(**kw))
    # 1-D edge scores (E,) are edge_weights' first use (knn_graph weights its kept edges so):
    # the "ndim-1" family of the (N, k) lists of the base call is a valid input here
    T[-1].edge = {"scores|ndim-1"}

    def tk_base(r, c):
        ctxn(c)
        return {"scores": _feat(r, Q, N), "k": 5, "secondary": None}

    add(
        "graph.top_k_with_ties",
        tk_base,
        lambda kw: G.top_k_with_ties(**kw),
        None,
        check_tuple_ranking,
    )

    def rd_base(r, c):
        ctxn(c)
        return {
            "scores": _feat(r, Q, N),
            "k": 5,
            "queries": _feat(r, Q),
            "database": _feat(r, N),
            "ties": "similarity",
        }

    add("graph.rank_dense", rd_base, lambda kw: G.rank_dense(**kw), None, check_ranking_result)

    def sf_base(r, c):
        ctxn(c)
        _, i = knn_lists(r, N, 8)
        return {"indices": i, "truncation": 6}

    add("graph.self_first", sf_base, lambda kw: G.self_first(**kw))
    # one more row is the list of one more node, which no list names (valid: tied points
    # give such lists)
    T[-1].edge = {"indices|length+1"}

    def sm_base(r, c):
        x = _feat(r, N)
        return {"scores": x @ x.t(), "kind": "similarity"}

    add(
        "graph.ScoreMatrix",
        sm_base,
        lambda kw: G.knn_graph(G.ScoreMatrix(**kw), 4),
        None,
        check_graph,
    )

    # nn
    add(
        "nn.adjacency",
        lambda r, c: {"graph": _graph_data(r)},
        lambda kw: Nn.adjacency(**kw),
        {"graph": "graph"},
        check_csr,
    )

    def bip_base(r, c):
        v, i = knn_lists(r, N, 5)
        return {"indices": i[:Q], "values": v[:Q], "num_sources": N}

    add("nn.bipartite_adjacency", bip_base, lambda kw: Nn.bipartite_adjacency(**kw))

    def gnn_base(r, c):
        ctxn(c)
        v, i = knn_lists(r, N, 6)
        return {"neighbors": i, "similarities": v, "k1": 6, "k2": 3}

    add("nn.gnn_rerank_graph", gnn_base, lambda kw: Nn.gnn_rerank_graph(**kw))
    add(
        "nn.gnn_propagate",
        lambda r, c: {**gnn_base(r, c), "layers": 2},
        lambda kw: Nn.gnn_propagate(**kw),
    )

    def rm_base(r, c):
        _, i = knn_lists(r, N, 5)
        return {"lists": i}

    add("nn.reciprocal_mask", rm_base, lambda kw: Nn.reciprocal_mask(**kw))
    T[-1].edge = {"lists|length+1"}  # as for self_first: a node that no list names

    def prop_base(r, c):
        g = _graph_data(r)
        return {"x": _feat(r, N), "edge_index": g.edge_index, "edge_weight": g.edge_weight}

    add("nn.WeightedPropagation", prop_base, lambda kw: Nn.WeightedPropagation()(**kw))
    add(
        "nn.ExpansionPropagation",
        lambda r, c: {**prop_base(r, c), "alpha@set": 3.0},
        lambda kw: Nn.ExpansionPropagation(alpha=kw["alpha@set"])(
            kw["x"], kw["edge_index"], kw["edge_weight"]
        ),
    )

    def dp_base(r, c):
        g = _graph_data(r)
        return {
            "alpha@set": 0.9,
            "num_iters@set": 5,
            "y": _feat(r, N, 2),
            "edge_index": g.edge_index,
            "edge_weight": g.edge_weight,
        }

    add(
        "nn.DiffusionPropagation",
        dp_base,
        lambda kw: Nn.DiffusionPropagation(alpha=kw["alpha@set"], num_iters=kw["num_iters@set"])(
            kw["y"], kw["edge_index"], kw["edge_weight"]
        ),
    )

    def gconv_base(r, c):
        x = _csr(r)
        return {"x": x.to_dense(), "adj_t": x}

    add(
        "nn.GNNRerankConv",
        gconv_base,
        lambda kw: Nn.GNNRerankConv()(kw["x"], kw["adj_t"]),
        {"adj_t": "csr"},
    )

    # diffusion
    def op_base(r, c):
        return {"graph": _graph_data(r), "alpha": 0.99}

    add(
        "diffusion.diffusion_operator",
        op_base,
        lambda kw: Df.diffusion_operator(**kw),
        {"graph": "graph"},
        check_csr,
    )
    add(
        "diffusion.laplacian_alpha",
        op_base,
        lambda kw: Df.laplacian_alpha(**kw),
        {"graph": "graph"},
        check_csr,
    )

    def cg_base(r, c):
        return {
            "A": Df.diffusion_operator(_normalized_graph_data(r)),
            "B": _feat(r, N, 2),
            "tol": 1e-6,
            "max_iter": 20,
        }

    add(
        "diffusion.conjugate_gradient",
        cg_base,
        lambda kw: Df.conjugate_gradient(**kw).solution,
        {"A": "csr"},
    )

    def diffuse_base(r, c):
        return {
            "operator": Df.diffusion_operator(_normalized_graph_data(r)),
            "y": _feat(r, N, 2),
            "tol": 1e-6,
            "max_iter": 20,
            "iterate": "best",
        }

    add(
        "diffusion.diffuse", diffuse_base, lambda kw: Df.diffuse(**kw).solution, {"operator": "csr"}
    )

    def spec_base(r, c):
        return {
            "graph": _normalized_graph_data(r),
            "rank": 5,
            "alpha": 0.99,
            "eigensolver": "auto",
        }

    add(
        "diffusion.spectral_embedding",
        spec_base,
        lambda kw: Df.spectral_embedding(**kw),
        {"graph": "graph"},
    )
    add(
        "diffusion.spectral_filter",
        lambda r, c: {"eigenvalues": torch.linspace(0.1, 1, 6), "alpha": 0.99},
        lambda kw: Df.spectral_filter(**kw),
    )

    def qv_base(r, c):
        v, i = knn_lists(r, Q, 5)
        ctxn(c)
        return {"scores": v, "indices": i, "num_nodes": N, "kq": 3, "gamma": 3.0}

    def qv_base2(r, c):
        x, db = _feat(r, Q), _feat(r, N)
        v, i = (x @ db.t()).topk(5, dim=1)
        ctxn(c)
        return {"scores": v, "indices": i, "num_nodes": N, "kq": 3, "gamma": 3.0}

    add("diffusion.query_vector", qv_base2, lambda kw: Df.query_vector(**kw))
    add("diffusion.query_entries", qv_base2, lambda kw: Df.query_entries(**kw))

    def pool_base(r, c):
        return {"scores": _feat(r, N, Q), "image_ids": torch.arange(N) // 2, "num_images": N // 2}

    add("diffusion.pool_regions", pool_base, lambda kw: Df.pool_regions(**kw))

    def gmp_base(r, c):
        return {"vectors": _feat(r, N), "image_ids": torch.arange(N) // 3, "lam": 1.0}

    add("diffusion.gmp_weights", gmp_base, lambda kw: Df.gmp_weights(**kw))

    def od_base(r, c):
        ctxn(c)
        return {"x": _feat(r, N), "kd": 5, "truncation": 10, "alpha": 0.99, "gamma": 3.0}

    add("diffusion.offline_diffusion", od_base, lambda kw: Df.offline_diffusion(**kw))

    def ods_base(r, c):
        ctxn(c)
        x = _feat(r, N)
        C = Df.offline_diffusion(x, kd=5, truncation=10)
        v, i = (_feat(r, Q) @ x.t()).topk(5, dim=1)
        return {"C": C, "knn": (v, i), "gamma": 3.0}

    add(
        "diffusion.offline_diffusion_scores",
        ods_base,
        lambda kw: Df.offline_diffusion_scores(**kw),
        {"C": "csr"},
    )

    def trunc_base(r, c):
        x = _feat(r, N)
        A = (x @ x.t()).clamp_min(0) ** 3
        A.fill_diagonal_(0)
        _, sub = (x @ x.t()).topk(6, dim=1)
        return {"affinity": A, "subsets": sub}

    add("diffusion.truncated_normalized", trunc_base, lambda kw: Df.truncated_normalized(**kw))
    # subsets is (B, T): one row per query, B free (the base call happens to use the N database
    # items as queries). One row more or fewer is B + 1 or B - 1 queries, a valid call whose
    # blocks tests/diffusion/test_truncation.py checks against dense sub-graph normalisations.
    T[-1].edge = {"subsets|length+1", "subsets|length-1"}
    add(
        "diffusion.truncated_operator",
        lambda r, c: {**trunc_base(r, c), "alpha": 0.99},
        lambda kw: Df.truncated_operator(**kw),
    )
    T[-1].edge = {"subsets|length+1", "subsets|length-1"}

    # models
    def fuse_base(r, c):
        return {
            "global_scores": _feat(r, Q, 6),
            "logits": _feat(r, Q, 6),
            "lambda_value": 0.5,
            "gamma": 1.0,
        }

    add("models.fuse_scores", fuse_base, lambda kw: Mo.fuse_scores(**kw))

    def rs_base(r, c):
        ctxn(c)
        x, db = _feat(r, Q), _feat(r, N)
        v, i = (x @ db.t()).topk(8, dim=1)
        return {
            "scores": v,
            "indices": i,
            "logits": _feat(r, Q, 4),
            "lambda_value": 0.5,
            "gamma": 1.0,
            "num_items": N,  # without it, any id below 2**32 is a possible database item
        }

    add(
        "models.rerank_shortlist",
        rs_base,
        lambda kw: Mo.rerank_shortlist(**kw),
        None,
        check_ranking_result,
    )

    def ch_base(r, c):
        return {
            "query": torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1)),
            "candidates": torch.randn(2, 3, 4, D, generator=torch.Generator().manual_seed(2)),
        }

    add("models.chamfer_similarity", ch_base, lambda kw: Mo.chamfer_similarity(**kw))

    def cl_base(r, c):
        return {
            "local": torch.randn(N, 5, D, generator=torch.Generator().manual_seed(3)),
            "num_descriptors": 4,
            "storage": "float16",
        }

    add("models.compress_local", cl_base, lambda kw: Mo.decode_local(Mo.compress_local(**kw)))
    add(
        "models.sliding_windows",
        lambda r, c: {"length": 20, "window": 8, "stride": 4},
        lambda kw: Mo.sliding_windows(**kw),
    )
    add(
        "models.bytes_per_image",
        lambda r, c: {"num_descriptors": 10, "dim": 8, "storage": "float32"},
        lambda kw: Mo.bytes_per_image(**kw),
    )

    def ms_base(r, c):
        ctxn(c)
        return {
            "global_descriptors": _feat(r, N),
            "index": torch.arange(6),
            "length": 4,
            "backend": "torch",
        }

    add("models.mine_shortlists", ms_base, lambda kw: Mo.mine_shortlists(**kw))
    T[-1].edge = {"index|length-1"}  # a shorter index list is a valid subset of the images

    def mg_base(r, c):
        return {
            "query": torch.randn(2, 5, D),
            "candidates": torch.randn(2, 3, 5, D),
            "k_intra": 2,
            "k_cross": 2,
        }

    add("models.match_graph", mg_base, lambda kw: Mo.match_graph(**kw))

    def lm_base(r, c):
        return {
            "in_dim@set": D,
            "hidden@set": 8,
            "heads@set": 2,
            "num_layers@set": 1,
            "query": torch.randn(2, 5, D),
            "candidates": torch.randn(2, 3, 5, D),
        }

    def lm_call(kw):
        m = Mo.LocalMatcher(
            kw["in_dim@set"],
            hidden=kw["hidden@set"],
            heads=kw["heads@set"],
            num_layers=kw["num_layers@set"],
            ffn=8,
        )
        return m(Mo.match_graph(kw["query"], kw["candidates"], k_intra=2, k_cross=2))

    add("models.LocalMatcher", lm_base, lm_call)

    def ss_base(r, c):
        return {
            "model": None,
            "query_local": torch.randn(Q, 5, D),
            "database_local": torch.randn(N, 5, D),
            "shortlist": _ranking(r, Q, 6),
            "mode": "pairwise",
        }

    add("models.score_shortlist", ss_base, lambda kw: Mo.score_shortlist(**kw))
    # only the images the shortlist names are read (and checked): a NaN elsewhere in the
    # database does not touch the result (documented; checking all of it per call is O(N L D))
    T[-1].edge = {"database_local|nan", "database_local|inf"}

    def tf_base(r, c):
        x, db = _feat(r, Q), _feat(r, N)
        v, i = (x @ db.t()).topk(8, dim=1)
        return {
            "scores": v,
            "indices": i,
            "logits": _feat(r, Q, 4),
            "database_labels": _labels(r, N),
            "query_labels": _labels(r, Q),
            "lambdas": (0.0, 0.5, 1.0),
            "gammas": (1.0,),
        }

    add("models.tune_fusion", tf_base, lambda kw: Mo.tune_fusion(**kw).map)
    # with query_labels given, a database may hold an image that no ranking retrieves
    T[-1].edge = {"database_labels|length+1"}
    return T


def _metrics_targets() -> list[Target]:
    import torch

    import graphrerank.metrics as M

    T = []

    def add(name, base, call, roles=None, check=None, edge=(), per_query=False):
        def base2(r, c, base=base):
            if per_query:
                c["per_query"] = "ap"
            return base(r, c)

        T.append(
            Target(
                name,
                "metrics",
                base2,
                call,
                roles or {},
                check or check_metric,
                # a longer database than the rankings reach is a truncated evaluation
                edge={
                    "database_labels|length+1",
                    "database_labels|length-1",
                    "gallery_ids|length+1",
                    *edge,
                },
            )
        )

    def cls_base(r, c):
        c["num_items"] = N
        return {
            "indices": _ranking(r, Q, 8),
            "database_labels": _labels(r, N),
            "query_labels": _labels(r, Q),
        }

    def loo_base(r, c):
        c["num_items"] = N
        return {
            "indices": _ranking(r, N, 8),
            "database_labels": _labels(r, N),
            "leave_one_out": True,
        }

    add("metrics.class_map", cls_base, lambda kw: M.class_map(**kw))
    add("metrics.class_map[loo]", loo_base, lambda kw: M.class_map(**kw))
    add(
        "metrics.class_average_precision",
        lambda r, c: {**cls_base(r, c), "interpolation": "step"},
        lambda kw: M.class_average_precision(**kw),
        per_query=True,
    )
    add(
        "metrics.recall_at_k",
        lambda r, c: {**cls_base(r, c), "ks": (1, 5)},
        lambda kw: M.recall_at_k(**kw),
    )

    def ap_base(r, c):
        hits = torch.from_numpy(r.integers(-1, 2, (Q, 8)))
        return {
            "hits": hits,
            "num_positives": (hits == 1).sum(1) + 1,
            "interpolation": "step",
        }

    def ap_bool_base(r, c):
        hits = torch.from_numpy(r.random((Q, 8)) < 0.4)
        return {"hits": hits, "num_positives": hits.sum(1) + 1, "interpolation": "trapezoid"}

    for nm, b in (("", ap_base), ("[bool]", ap_bool_base)):
        add(
            f"metrics.average_precision{nm}",
            b,
            lambda kw: M.average_precision(**kw),
            {"num_positives": "counts"},
            per_query=True,
        )

    def hr_base(r, c):
        c["num_items"] = N
        rel = torch.from_numpy(r.integers(-1, 2, (Q, N)))
        return {"indices": _ranking(r, Q, 8), "relevance": rel}

    add(
        "metrics.hits_from_relevance",
        hr_base,
        lambda kw: M.hits_from_relevance(**kw),
        check=generic_check,
    )
    add(
        "metrics.rank_by_scores",
        lambda r, c: {"scores": _feat(r, Q, N), "k": 5},
        lambda kw: M.rank_by_scores(**kw),
        check=generic_check,
    )

    def reid_base(r, c):
        c["num_items"] = N
        return {
            "indices": _ranking(r, Q, N),
            "query_ids": _labels(r, Q),
            "query_cams": torch.zeros(Q, dtype=torch.long),
            "gallery_ids": _labels(r, N),
            "gallery_cams": torch.ones(N, dtype=torch.long),
            "max_rank": 10,
            "interpolation": "step",
        }

    add("metrics.reid_metrics", reid_base, lambda kw: M.reid_metrics(**kw))

    def gnd(r, n=N, q=Q):
        out = []
        for _ in range(q):
            p = r.permutation(n)
            out.append({"easy": p[:3], "hard": p[3:5], "junk": p[5:7]})
        return out

    def rv_base(r, c):
        c["num_items"] = N
        return {"indices": _ranking(r, Q, N), "gnd": gnd(r), "kappas": (1, 5), "num_database": N}

    def rv_trunc_base(r, c):
        c["num_items"] = N
        return {"indices": _ranking(r, Q, 6), "gnd": gnd(r), "kappas": (1, 5)}

    add("metrics.revisited_map", rv_base, lambda kw: M.revisited_map(**kw), {"gnd": "gnd"})
    add(
        "metrics.revisited_map[truncated]",
        rv_trunc_base,
        lambda kw: M.revisited_map(**kw),
        {"gnd": "gnd"},
        # without num_database the database is the smallest that holds every index
        edge={"indices|out_of_range", "gnd|out_of_range"},
    )

    def rel_base(r, c):
        c["num_items"] = N
        return {"gnd": gnd(r), "num_database": N, "protocol": "medium"}

    add(
        "metrics.relevance_from_gnd",
        rel_base,
        lambda kw: M.relevance_from_gnd(**kw),
        {"gnd": "gnd"},
        check=generic_check,
    )

    def cir_base(r, c):
        c["num_items"] = N
        return {"ranks": _ranking(r, Q, N).t().contiguous()}

    add(
        "metrics.ranks_from_cirtorch",
        cir_base,
        lambda kw: M.ranks_from_cirtorch(**kw),
        check=generic_check,
        # the layout conversion does not know the database size or the number of queries
        edge={"ranks|out_of_range", "ranks|length+1", "ranks|length-1"},
    )
    return T


def _plot_targets() -> list[Target]:
    import graphrerank.plot as P
    from graphrerank.rerankers import KNN

    T = []

    def add(name, base, call, roles=None, check=None, aliases=None):
        edge = {"database_labels|length+1", "database_labels|length-1"}
        T.append(
            Target(name, "plot", base, call, roles or {}, check, edge=edge, aliases=aliases or {})
        )

    def close(fig):
        import matplotlib.pyplot as plt

        plt.close(fig)
        return fig

    def prc_base(r, c):
        c["num_items"] = N
        return {
            "indices": _ranking(r, Q, 8),
            "database_labels": _labels(r, N),
            "query_labels": _labels(r, Q),
            "num_levels": 11,
        }

    add(
        "plot.precision_recall_curve",
        prc_base,
        lambda kw: P.precision_recall_curve(**kw),
        None,
        check_pr,
    )

    def pr_base(r, c):
        c["num_items"] = N
        return {
            "rankings": _ranking(r, Q, 8),
            "database_labels": _labels(r, N),
            "query_labels": _labels(r, Q),
            "num_levels": 11,
            "title": "t",
        }

    add("plot.precision_recall", pr_base, lambda kw: close(P.precision_recall(**kw)))

    def mvp_base(r, c):
        return {
            "results": [(1, 0.5), (2, 0.6), (4, 0.7)],
            "parameter": "k",
            "baseline": 0.4,
            "title": "t",
        }

    add(
        "plot.map_vs_parameter",
        mvp_base,
        lambda kw: close(P.map_vs_parameter(**kw)),
        {"results": "obj"},
    )

    def rl_base(r, c):
        import torch

        c["num_items"] = N
        return {
            "images": torch.rand(N, 6, 6),
            "rankings": _ranking(r, Q, 8),
            "queries": 1,
            "labels": _labels(r, N),
            "query_labels": _labels(r, Q),
            "k": 4,
        }

    add("plot.ranked_lists", rl_base, lambda kw: close(P.ranked_lists(**kw)))

    def ps_base(r, c):
        return {
            "parameter": "k",
            "values": [2, 3],
            "database": _feat(r, N),
            "labels": _labels(r, N),
            "k": 5,
        }

    from graphrerank.rerankers import AlphaQueryExpansion

    add(
        "plot.parameter_sweep",
        ps_base,
        lambda kw: P.parameter_sweep(AlphaQueryExpansion(backend="torch"), **kw),
        None,
        check_sweep,
        {"values": ("k",)},
    )
    del KNN
    return T


def _dataset_targets() -> list[Target]:
    import torch

    import graphrerank.datasets as Ds

    T = []

    def add(name, base, call, roles=None, check=None, edge=()):
        T.append(Target(name, "datasets", base, call, roles or {}, check, edge=set(edge)))

    # Edge cases, valid here though invalid in general: path=None means the file in the
    # GRAPHRERANK_DATA folder (documented); a plain .npy data section and an uncompressed
    # MATLAB v5 file have no checksum, so a flipped data byte cannot be detected; database
    # and query labels are independent (any lengths); a status of Q +- 1 rows is Q +- 1
    # queries; a shorter index list is a smaller subset.
    no_checksum = {"path|flipped_byte"}
    default_path = {"path|none"}
    any_length = {f"{a}|length{s}1" for a in ("database_labels", "query_labels") for s in "+-"}

    def feat_file(r, c):
        p = Path(c["tmp"]) / "features.npy"
        if not p.exists():
            np.save(p, np.random.default_rng(0).standard_normal((N, D)).astype("float32"))
        return {"path": p}

    add(
        "datasets.load_features[npy]",
        feat_file,
        lambda kw: Ds.load_features(**kw),
        {"path": "path"},
        edge=no_checksum,
    )

    def npz_file(r, c):
        p = Path(c["tmp"]) / "features.npz"
        if not p.exists():
            np.savez(p, x=np.random.default_rng(0).standard_normal((N, D)).astype("float32"))
        return {"path": p, "key": "x"}

    add(
        "datasets.load_features[npz]", npz_file, lambda kw: Ds.load_features(**kw), {"path": "path"}
    )

    def gt(r):
        return Ds.gnd_from_labels(_labels(r, N).numpy(), _labels(r, Q).numpy())

    def gnd_file(r, c):
        p = Path(c["tmp"]) / "gnd.npz"
        if not p.exists():
            Ds.save_revisitop_gnd(gt(np.random.default_rng(0)), p)
        return {"path": p}

    add(
        "datasets.load_revisitop_gnd",
        gnd_file,
        lambda kw: Ds.load_revisitop_gnd(**kw),
        {"path": "path"},
    )

    def gnd_pickle(r, c):
        p = Path(c["tmp"]) / "gnd_written.pkl"
        if not p.exists():
            Ds.write_revisitop_pickle(gt(np.random.default_rng(0)), p)
        return {"path": p}

    add(
        "datasets.load_revisitop_gnd[pickle]",
        gnd_pickle,
        lambda kw: Ds.load_revisitop_gnd(**kw),
        {"path": "path"},
    )

    def real_gnd(r, c):
        p = (
            Path(os.environ.get("GRAPHRERANK_DATA", "/work/shared/data"))
            / "revisitop"
            / "gnd_roxford5k.pkl"
        )
        if not p.exists():
            raise Skip
        return {"path": p}

    add(
        "datasets.load_revisitop_gnd[roxford5k]",
        real_gnd,
        lambda kw: Ds.load_revisitop_gnd(**kw),
        {"path": "path"},
    )

    def reid_file(r, c):
        src = (
            Path(os.environ.get("GRAPHRERANK_DATA", "/work/shared/data"))
            / "pku_sketch_reid"
            / "pytorch_result.mat"
        )
        if not src.exists():
            raise Skip
        return {"path": src}

    add(
        "datasets.load_reid_result",
        reid_file,
        lambda kw: Ds.load_reid_result(**kw),
        {"path": "path"},
        edge=no_checksum,
    )

    def corel(r, c):
        src = (
            Path(os.environ.get("GRAPHRERANK_DATA", "/work/shared/data"))
            / "corel1k"
            / "corel1k_effnetlite_desc.npz"
        )
        if not src.exists():
            raise Skip
        return {"path": src}

    add(
        "datasets.load_corel1k",
        corel,
        lambda kw: Ds.load_corel1k(**kw),
        {"path": "path"},
        edge=default_path,
    )

    def corel_local(r, c):
        src = (
            Path(os.environ.get("GRAPHRERANK_DATA", "/work/shared/data"))
            / "corel1k_local"
            / "corel1k_local.npz"
        )
        if not src.exists():
            raise Skip
        return {"path": src}

    add(
        "datasets.load_corel1k_local",
        corel_local,
        lambda kw: Ds.load_corel1k_local(**kw),
        {"path": "path"},
        edge=default_path,
    )

    def gfl_base(r, c):
        return {"database_labels": _labels(r, N), "query_labels": _labels(r, Q)}

    add("datasets.gnd_from_labels", gfl_base, lambda kw: Ds.gnd_from_labels(**kw), edge=any_length)

    def gfs_base(r, c):
        return {"status": torch.from_numpy(r.integers(-1, 3, (Q, N)))}

    add(
        "datasets.gnd_from_status",
        gfs_base,
        lambda kw: Ds.gnd_from_status(**kw),
        edge={"status|length+1", "status|length-1"},
    )

    def sub_base(r, c):
        return {"gt": gt(r), "database": torch.arange(0, N, 2), "queries": torch.arange(2)}

    add(
        "datasets.subset_gnd",
        sub_base,
        lambda kw: Ds.subset_gnd(**kw),
        {"gt": "obj"},
        edge={"database|length-1", "queries|length-1"},
    )
    add(
        "datasets.status_from_gnd",
        lambda r, c: {"gt": gt(r)},
        lambda kw: Ds.status_from_gnd(**kw),
        {"gt": "obj"},
    )

    def save_base(r, c):
        return {"gt": gt(r), "path@out": Path(c["tmp"]) / "out_gnd.npz"}

    add(
        "datasets.save_revisitop_gnd",
        save_base,
        lambda kw: Ds.load_revisitop_gnd(Ds.save_revisitop_gnd(kw["gt"], kw["path@out"])),
        {"gt": "obj"},
    )
    add(
        "datasets.parse_reid_filename",
        lambda r, c: {"name": "0002_c1s1_000451_03.jpg"},
        lambda kw: Ds.parse_reid_filename(**kw),
    )

    def mrd_base(r, c):
        return {
            "num_items": 40,
            "dim": 8,
            "num_classes": 4,
            "num_queries": 5,
            "noise": 1.0,
            "seed": 0,
        }

    add(
        "datasets.make_retrieval_dataset",
        mrd_base,
        lambda kw: Ds.make_retrieval_dataset(**kw),
        None,
        check_dataset,
    )

    def rds_base(r, c):
        return {
            "database": _feat(r, N),
            "database_labels": _labels(r, N),
            "queries": _feat(r, Q),
            "query_labels": _labels(r, Q),
        }

    add("datasets.RetrievalDataset", rds_base, lambda kw: Ds.RetrievalDataset(**kw))
    return T


def all_targets() -> list[Target]:
    return (
        _estimator_targets()
        + _knn_targets()
        + _metrics_targets()
        + _plot_targets()
        + _dataset_targets()
        + _lower_targets()
    )


# ----------------------------------------------------------------------------- invariants


def _is_meta(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor) and x.device.type == "meta"


def check_ranking_result(out, kw, ctx) -> str | None:
    import torch

    scores, indices = out[0], out[1]
    if not isinstance(scores, torch.Tensor) or not isinstance(indices, torch.Tensor):
        return "result is not (scores, indices) tensors"
    if scores.shape != indices.shape or scores.dim() != 2:
        return (
            f"scores {tuple(scores.shape)} and indices {tuple(indices.shape)} differ or are not 2-D"
        )
    if _is_meta(scores) or _is_meta(indices):
        return None
    if indices.dtype != torch.int64:
        return f"indices dtype {indices.dtype}"
    n = ctx.get("num_items")
    if indices.numel():
        if int(indices.min()) < -1 or (n is not None and int(indices.max()) >= n):
            return f"indices out of range [{int(indices.min())}, {int(indices.max())}] for N={n}"
        real = indices >= 0
        s = scores.detach().double()
        if not bool(torch.isfinite(s[real]).all()):
            return "non-finite score for a real index"
        filled = torch.where(real, s, torch.full_like(s, -math.inf))
        if filled.shape[1] > 1 and bool(
            (filled[:, 1:] > filled[:, :-1] + 1e-5 * (1 + filled[:, :-1].abs())).any()
        ):
            return "scores not sorted best first"
        for row in indices:
            r = row[row >= 0]
            if r.unique().numel() != r.numel():
                return "duplicate index in a ranked list"
    return None


def check_knn_result(out, kw, ctx):
    return check_ranking_result(out, kw, ctx)


def check_tuple_ranking(out, kw, ctx):
    # top_k_with_ties ranks the columns of ``scores`` and nothing else: its index range is the
    # width of the ``scores`` given (the ``wrong_dim`` family widens it to N + 1, and index N is
    # then a valid column, not an out-of-range id).
    scores = kw.get("scores")
    if getattr(scores, "ndim", 0) == 2:
        ctx = {**ctx, "num_items": int(scores.shape[1])}
    return check_ranking_result(out, kw, ctx)


def check_graph(out, kw, ctx):
    import torch

    ei = getattr(out, "edge_index", None)
    if ei is None or _is_meta(ei):
        return None
    n = out.num_nodes
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        return f"edge_index out of range for {n} nodes"
    w = getattr(out, "edge_weight", None)
    if w is not None and not _is_meta(w) and not bool(torch.isfinite(w).all()):
        return "non-finite edge weights"
    return None


def check_edges(out, kw, ctx):
    import torch

    ei, w = out
    n = ctx.get("num_items")
    if _is_meta(ei):
        return None
    if ei.numel() and (int(ei.min()) < 0 or (n is not None and int(ei.max()) >= n)):
        return f"edge_index out of range for {n} nodes"
    if not _is_meta(w) and w.is_floating_point() and not bool(torch.isfinite(w).all()):
        return "non-finite edge weights"
    return None


def check_csr(out, kw, ctx):
    import torch

    if not isinstance(out, torch.Tensor) or out.layout != torch.sparse_csr or _is_meta(out):
        return None
    crow, col = out.crow_indices(), out.col_indices()
    if bool((crow[1:] < crow[:-1]).any()) or int(crow[-1]) != col.numel():
        return "corrupt crow_indices"
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= out.shape[1]):
        return "column index out of range"
    if not bool(torch.isfinite(out.values()).all()):
        return "non-finite values"
    return None


#: Per-query fields where NaN is the documented mark of a query without positives.
PER_QUERY_FIELDS = {"ap", "inp", "precision"}


def check_metric(out, kw, ctx):
    """Aggregate scores finite and in [0, 1]; per-query NaN only as the documented sentinel."""
    import torch

    vals = []

    def walk(o, name=""):
        if isinstance(o, (float, int)) and not isinstance(o, bool):
            if name not in ("num_queries", "kappas"):
                vals.append((name, float(o)))
        elif isinstance(o, torch.Tensor):
            if not _is_meta(o) and o.is_floating_point():
                if name in PER_QUERY_FIELDS:
                    o = o[~o.isnan()]
                vals.extend((name, v) for v in o.detach().double().flatten().tolist())
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, name)
        elif hasattr(o, "__dataclass_fields__"):
            if getattr(o, "num_queries", 1) == 0:  # a protocol no query has a positive in
                return
            for f in o.__dataclass_fields__:
                walk(getattr(o, f), f)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, name)

    walk(out, ctx.get("per_query", ""))
    for name, v in vals:
        if not math.isfinite(v):
            return f"non-finite metric value {v} ({name or 'result'})"
        if not -1e-9 <= v <= 1 + 1e-9:
            return f"metric value {v} ({name or 'result'}) outside [0, 1]"
    return None


def check_pr(out, kw, ctx):
    import torch

    recall, precision = out
    if _is_meta(precision):
        return None
    for name, t in (("recall", recall), ("precision", precision)):
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1 + 1e-6:
            return f"{name} outside [0, 1] or non-finite"
    return None


def check_sweep(out, kw, ctx):
    for _, v in out:
        if not (0 <= float(v) <= 1):
            return f"score {v} outside [0, 1]"
    return None


def check_dataset(out, kw, ctx):
    import torch

    for name in ("database", "queries"):
        t = getattr(out, name, None)
        if (
            isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and not bool(torch.isfinite(t).all())
        ):
            return f"non-finite {name}"
    return None


def generic_check(out, kw, ctx):
    """No NaN anywhere in tensors / floats of a result computed from finite inputs."""
    import torch

    bad = []

    def walk(o, depth=0):
        if depth > 4 or bad:
            return
        if isinstance(o, float) and math.isnan(o):
            bad.append("NaN float")
        elif isinstance(o, torch.Tensor):
            if _is_meta(o):
                return
            if o.layout == torch.sparse_csr:
                o = o.values()
            elif o.is_sparse:
                o = o.coalesce().values()
            if (o.is_floating_point() or o.is_complex()) and bool(torch.isnan(o).any()):
                bad.append(f"NaN in a {tuple(o.shape)} tensor")
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o[:50]:
                walk(v, depth + 1)

    walk(out)
    return bad[0] if bad else None


# ----------------------------------------------------------------------------- classification

CLEAR_TYPES = (
    "ValueError",
    "TypeError",
    "CorruptFileError",
    "NotFittedError",
    "UnsafePickleError",
    "FileNotFoundError",
    "IsADirectoryError",
    "NotADirectoryError",
)


def classify_error(err: BaseException, arg: str | None, aliases: tuple[str, ...] = ()) -> str:
    import graphrerank.datasets as Ds
    from graphrerank.rerankers import NotFittedError

    documented = (
        ValueError,
        TypeError,
        Ds.CorruptFileError,
        NotFittedError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
    )
    if not isinstance(err, documented):
        return "internal"
    msg = str(err).lower()
    if arg is None:
        return "clear"
    names = {arg.lower(), arg.lower().replace("_", " "), *(a.lower() for a in aliases)}
    # a whole word: "k" must not match inside "kd" or "rank"
    if any(re.search(rf"(?<![a-z0-9_]){re.escape(n)}(?![a-z0-9_])", msg) for n in names):
        return "clear"
    if isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) and (
        "path" in msg or "/" in msg
    ):
        return "clear"
    if "not fitted" in msg or "fit(" in msg:
        return "clear"
    return "unclear"


def _seed(seed: int, *parts: str) -> int:
    return zlib.crc32("|".join([str(seed), *parts]).encode()) & 0x7FFFFFFF


def enumerate_cases(
    targets: list[Target], seed: int, layer: str | None, quick: bool
) -> list[tuple[str, str, str]]:
    cases = []
    tmp = tempfile.mkdtemp(prefix="fuzz_enum_")
    for t in targets:
        if layer and t.layer != layer:
            continue
        ctx = {"tmp": tmp}
        try:
            kw = t.base(np.random.default_rng(_seed(seed, t.name)), ctx)
        except Skip:
            continue
        cases.append((t.name, "-", "baseline"))
        for name, _, _ in t.extra:
            cases.append((t.name, "-", name))
        for key, value in kw.items():
            if key.endswith("@out"):
                continue
            for fam in families_for(key, value, t.roles.get(key)):
                cases.append((t.name, key, fam.name))
    del quick  # quick mode runs every family once; the full run repeats them with other seeds
    return cases


def run_case(targets: dict[str, Target], case: tuple[str, str, str], seed: int, tmp: str) -> dict:
    import warnings

    import torch

    tname, key, fname = case
    t = targets[tname]
    ctx: dict = {"tmp": tmp}
    rng = np.random.default_rng(_seed(seed, tname))
    torch.manual_seed(_seed(seed, *case))
    kw = t.base(rng, ctx)
    invalid = False
    arg = None
    if fname == "baseline":
        call = t.call
    elif key == "-":
        fn, invalid = next((f, inv) for n, f, inv in t.extra if n == fname)
        call = fn
    else:
        fam = next(f for f in families_for(key, kw[key], t.roles.get(key)) if f.name == fname)
        try:
            kw[key] = fam.make(kw[key], ctx)
        except Skip:
            return {"outcome": "skip"}
        invalid = fam.invalid and f"{_arg(key)}|{fname}" not in t.edge
        arg = _arg(key)
        call = t.call
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call(kw)
    except Skip:
        return {"outcome": "skip"}
    except Exception as err:  # classify every failure
        outcome = classify_error(err, arg, t.aliases.get(arg, ()))
        tb = traceback.extract_tb(err.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        return {
            "outcome": outcome,
            "error": f"{type(err).__name__}: {str(err)[:300]}",
            "where": where,
        }
    if invalid:
        return {"outcome": "silent", "error": "returned a result for an input that must be refused"}
    problem = None
    try:
        problem = (t.check or generic_check)(out, kw, ctx)
        if problem is None and t.check is not None and not ctx.get("per_query"):
            problem = generic_check(out, kw, ctx)
    except Exception as err:
        problem = f"output could not be checked: {type(err).__name__}: {err}"
    if problem:
        return {"outcome": "silent", "error": problem}
    return {"outcome": "valid"}


def _mark_baseline(res: dict, fname: str) -> dict:
    """A baseline (valid) call that is not a valid result is a defect or a harness bug."""
    if fname == "baseline" and res["outcome"] != "valid":
        res = {**res, "error": "BASELINE (a valid call) failed: " + res.get("error", "")}
        if res["outcome"] == "clear":
            res["outcome"] = "unclear"
    return res


# ----------------------------------------------------------------------------- workers


def _worker(conn, seed: int, threads: int) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import torch

    torch.set_num_threads(threads)
    import matplotlib

    matplotlib.use("Agg")
    targets = {t.name: t for t in all_targets()}
    tmp = tempfile.mkdtemp(prefix="fuzz_")
    os.chdir(tmp)  # relative paths a call writes (e.g. store="junk") land in the scratch folder
    conn.send("ready")
    while True:
        case = conn.recv()
        if case is None:
            break
        try:
            res = _mark_baseline(run_case(targets, tuple(case), seed, tmp), case[2])
        except BaseException as err:
            res = {"outcome": "harness", "error": f"{type(err).__name__}: {err}"}
        conn.send(res)


class Worker:
    def __init__(self, ctx, seed, threads):
        self.ctx, self.seed, self.threads = ctx, seed, threads
        self.start()

    def start(self):
        self.parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_worker, args=(child, self.seed, self.threads), daemon=True
        )
        self.proc.start()
        child.close()
        if not self.parent.poll(180):
            raise RuntimeError("worker did not start")
        self.parent.recv()

    def kill(self):
        self.proc.kill()
        self.proc.join()

    def run(self, case, timeout):
        self.parent.send(case)
        if self.parent.poll(timeout):
            try:
                return self.parent.recv()
            except EOFError:
                pass
            self.proc.join()
            code = self.proc.exitcode
            self.start()
            return {"outcome": "crash", "error": f"worker died (exit code {code})"}
        if not self.proc.is_alive():
            code = self.proc.exitcode
            self.proc.join()
            self.start()
            return {"outcome": "crash", "error": f"worker died (exit code {code})"}
        self.kill()
        self.start()
        return {"outcome": "crash", "error": f"hang: no answer within {timeout:.0f} s"}


def run_all(cases, seed, jobs, timeout, progress=True):
    import threading

    ctx = mp.get_context("spawn")
    results: list[dict | None] = [None] * len(cases)
    lock = threading.Lock()
    nxt = [0]
    t0 = time.time()

    def loop():
        w = Worker(ctx, seed, 1)
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(cases):
                break
            results[i] = w.run(cases[i], timeout)
            if progress and results[i]["outcome"] == "crash":
                print(
                    f"  crash/hang: {'|'.join(cases[i])}: {results[i]['error']}",
                    file=sys.stderr,
                    flush=True,
                )
            if progress and i % 250 == 0:
                print(
                    f"  {i}/{len(cases)} calls, {time.time() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        w.parent.send(None)
        w.proc.join(5)

    threads = [threading.Thread(target=loop) for _ in range(jobs)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="one pass over every family (a few thousand calls)"
    )
    ap.add_argument("--repeats", type=int, default=3, help="seeds per case in a full run")
    ap.add_argument("--layer", choices=list(LAYERS))
    ap.add_argument("--target", help="only targets whose name contains this")
    ap.add_argument("--case", help="replay one case TARGET|ARG|FAMILY in this process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a call counts as a hang"
    )
    ap.add_argument(
        "--out", type=Path, help="write every case that is not valid / clear here (JSON)"
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")

    targets = all_targets()
    if args.target:
        targets = [t for t in targets if args.target in t.name]
    if args.case:
        case = tuple(args.case.split("|"))
        res = run_case({t.name: t for t in targets}, case, args.seed, tempfile.mkdtemp())
        print(json.dumps(res, indent=2))
        return 0
    cases = enumerate_cases(targets, args.seed, args.layer, args.quick)
    seeds = [args.seed] if args.quick else [args.seed + i for i in range(args.repeats)]
    t0 = time.time()
    rows = []
    for s in seeds:
        res = run_all(cases, s, args.jobs, args.timeout)
        rows += [(c, r, s) for c, r in zip(cases, res)]
    wall = time.time() - t0

    layer_of = {t.name: t.layer for t in targets}
    counts: dict[str, Counter] = defaultdict(Counter)
    per_target: dict[str, Counter] = defaultdict(Counter)
    listed = []
    for (tname, key, fam), r, s in rows:
        o = r["outcome"]
        if o == "skip":
            continue
        if o == "harness":
            listed.append({"target": tname, "arg": key, "family": fam, "seed": s, **r})
            continue
        counts[layer_of[tname]][o] += 1
        per_target[tname][o] += 1
        if o not in ("valid", "clear"):
            listed.append(
                {
                    "target": tname,
                    "layer": layer_of[tname],
                    "arg": key,
                    "family": fam,
                    "seed": s,
                    **r,
                }
            )

    from _common import machine

    lines = [
        "| layer | calls | " + " | ".join(HEADERS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in HEADERS) + " |",
    ]
    total = Counter()
    for layer, title in LAYERS.items():
        c = counts.get(layer)
        if not c:
            continue
        total.update(c)
        lines.append(
            f"| {title} | {sum(c.values()):,} | " + " | ".join(f"{c[o]:,}" for o in OUTCOMES) + " |"
        )
    lines.append(
        f"| **all** | {sum(total.values()):,} | "
        + " | ".join(f"{total[o]:,}" for o in OUTCOMES)
        + " |"
    )
    print("\n".join(lines))
    harness = sum(1 for x in listed if x["outcome"] == "harness")
    print(
        f"\n{len(targets)} targets, {sum(total.values()):,} calls in {wall:.0f} s "
        f"({len(seeds)} seed(s) from {args.seed}); harness failures: {harness}"
    )
    print(f"machine: {machine()}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "table": lines,
                    "per_target": {k: dict(v) for k, v in sorted(per_target.items())},
                    "cases": listed,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
