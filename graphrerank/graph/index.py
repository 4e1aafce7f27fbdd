"""A reusable nearest-neighbour index: exact or approximate, saved without pickle."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._checks import check_features, check_in, check_int, check_same_device
from .._imports import faiss_num_gpus, has_faiss, require_faiss
from .._io import CorruptFileError, load_arrays, save_arrays
from .._version import __version__
from ..typing import BACKENDS, METRICS, SEARCHES, Backend, KNNResult, Metric, Search, TensorLike
from .knn import FAISS_GPU_MAX_K, _torch_knn, check_magnitude, check_overflow, resolve_backend

__all__ = ["KNNIndex", "database_index"]

Kind = Literal["flat", "ivf", "ivfpq", "hnsw"]

_FORMAT = "graphrerank.KNNIndex"
_VERSION = 1


class KNNIndex:
    r"""Build once over a database, search many times, add vectors, save and load.

    Kinds:

    * ``"flat"``: exact search (faiss ``IndexFlat`` or the torch backend on any device).
    * ``"ivf"``: inverted file over ``nlist`` k-means cells, ``nprobe`` cells visited per query.
    * ``"ivfpq"``: IVF with product-quantised codes (``pq_m`` sub-quantisers of ``pq_nbits``
      bits), optionally re-scored exactly (``refine=True``) - for very large databases.
    * ``"hnsw"``: hierarchical navigable small-world graph (``hnsw_m`` links per node).

    Approximate kinds need faiss; IVF kinds are trained on the first vectors added (or on a
    seeded sample of ``train_size`` of them) unless :meth:`train` was called. Searches pad
    with index -1 and score ``-inf`` where an approximate index finds fewer than ``k`` items.

    Args:
        metric: ``"ip"`` (inner product; cosine for L2-normalised data) or ``"l2"``
            (scores are negative squared distances).
        kind: ``"flat"``, ``"ivf"``, ``"ivfpq"`` or ``"hnsw"``.
        backend: ``"auto"``, ``"faiss"`` or ``"torch"`` (flat only), as in
            :func:`~graphrerank.graph.knn_search`.
        nlist: IVF cells; default :math:`\min(4\sqrt{N}, N/39)` at training time.
        nprobe: IVF cells visited per query; default ``min(nlist, 32)``.
        pq_m: PQ sub-quantisers (must divide the dimension); default the largest of
            64, 32, 16, 8, 4, 2, 1 that divides it with at least 2 dimensions each.
        pq_nbits: Bits per PQ code.
        refine: Re-score ``refine_factor * k`` PQ candidates with exact distances.
        refine_factor: See ``refine``.
        hnsw_m: HNSW links per node.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW search-time beam width (at least ``k`` is used).
        train_size: Vectors sampled for IVF training (all when ``None``).
        seed: Seed of the training sample and of faiss' k-means.

    Example:
        >>> x = torch.nn.functional.normalize(torch.randn(100, 8, generator=torch.Generator().manual_seed(0)), dim=1)
        >>> index = KNNIndex(metric="ip", backend="torch").add(x)
        >>> index.search(x[:2], k=3).indices[:, 0]
        tensor([0, 1])
        >>> len(index)
        100
    """

    def __init__(
        self,
        *,
        metric: Metric = "ip",
        kind: Kind = "flat",
        backend: Backend = "auto",
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int | None = None,
        pq_nbits: int = 8,
        refine: bool = False,
        refine_factor: int = 4,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        train_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.metric = check_in(metric, "metric", METRICS)
        self.kind = check_in(kind, "kind", ("flat", "ivf", "ivfpq", "hnsw"))
        self.backend = check_in(backend, "backend", BACKENDS)
        if kind != "flat" and backend == "torch":
            raise ValueError(
                f"kind={kind!r} needs faiss; backend='torch' supports kind='flat' only"
            )
        # faiss reads nlist from its factory string as a C int
        self.nlist = None if nlist is None else check_int(nlist, "nlist", low=1, high=2**31 - 1)
        self.nprobe = None if nprobe is None else check_int(nprobe, "nprobe", low=1)
        self.pq_m = None if pq_m is None else check_int(pq_m, "pq_m", low=1)
        self.pq_nbits = check_int(pq_nbits, "pq_nbits", low=1, high=16)
        self.refine = bool(refine)
        self.refine_factor = check_int(refine_factor, "refine_factor", low=1)
        self.hnsw_m = check_int(hnsw_m, "hnsw_m", low=2)
        self.ef_construction = check_int(ef_construction, "ef_construction", low=1)
        self.ef_search = check_int(ef_search, "ef_search", low=1)
        self.train_size = None if train_size is None else check_int(train_size, "train_size", low=1)
        self.seed = check_int(seed, "seed")
        self._dim: int | None = None
        self._device: torch.device | None = None
        self._backend: str | None = None
        self._vectors: Tensor | None = None  # torch backend storage
        self._index: Any = None  # faiss index
        self._source = "vectors"  # what the indexed vectors are called in error messages

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int | None:
        """Descriptor dimension (``None`` before the first vectors)."""
        return self._dim

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        if self._vectors is not None:
            return int(self._vectors.shape[0])
        return int(self._index.ntotal) if self._index is not None else 0

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        """Whether the index can take vectors (flat and HNSW always can)."""
        return (
            self._index is not None and bool(self._index.is_trained)
        ) or self._vectors is not None

    def __repr__(self) -> str:
        return (
            f"KNNIndex(kind={self.kind!r}, metric={self.metric!r}, backend={self._backend or self.backend!r}, "
            f"ntotal={self.ntotal}, dim={self._dim})"
        )

    # ------------------------------------------------------------------ building
    def _setup(self, x: Tensor) -> None:
        if self._dim is None:
            self._dim = int(x.shape[1])
            self._device = x.device
            self._backend = resolve_backend(self.backend, x.device)
            if self.kind != "flat" and self._backend != "faiss":
                raise ValueError(
                    f"kind={self.kind!r} needs faiss on {x.device}; use kind='flat' "
                    "(exact, torch backend) or move the data to the CPU"
                )
        else:
            if x.shape[1] != self._dim:
                raise ValueError(
                    f"{self._source} have dimension {x.shape[1]}, but this index holds "
                    f"dimension {self._dim}"
                )
            if x.device != self._device:
                raise ValueError(f"vectors are on {x.device} but this index is on {self._device}")

    def _faiss_factory(self, n: int) -> str:
        d = self._dim
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        self.nlist = nlist
        if self.kind == "ivf":
            return f"IVF{nlist},Flat"
        m = self.pq_m
        if m is None:
            m = next(c for c in (64, 32, 16, 8, 4, 2, 1) if d % c == 0 and (d // c >= 2 or c == 1))
            self.pq_m = m
        if d % m:
            raise ValueError(f"pq_m={m} must divide the dimension {d} of {self._source}")
        return f"IVF{nlist},PQ{m}x{self.pq_nbits}" + (",RFlat" if self.refine else "")

    def _new_faiss_index(self, n: int):
        faiss = require_faiss(f"KNNIndex(kind={self.kind!r})")
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        index = faiss.index_factory(self._dim, self._faiss_factory(n), metric)
        if self.kind == "hnsw":
            faiss.downcast_index(index).hnsw.efConstruction = self.ef_construction
        if self._device.type == "cuda":
            index = faiss.index_cpu_to_gpu(
                faiss.StandardGpuResources(), self._device.index or 0, index
            )
        return index

    def train(self, vectors: TensorLike) -> KNNIndex:
        """Train an IVF index on ``vectors`` (no-op for flat and HNSW)."""
        return self._train(check_features(vectors, "vectors"), "vectors")

    def _train(self, x: Tensor, name: str) -> KNNIndex:
        self._setup(x)
        if self._backend == "torch":
            return self
        if self._index is None:
            self._index = self._new_faiss_index(x.shape[0])
        if not self._index.is_trained:
            sample = x
            if self.train_size is not None and x.shape[0] > self.train_size:
                g = torch.Generator().manual_seed(self.seed)
                sample = x[torch.randperm(x.shape[0], generator=g)[: self.train_size].to(x.device)]
            ivf = _ivf_of(self._index)
            self._check_training_size(sample.shape[0], ivf)
            # faiss' k-means aborts the process on squared norms that overflow float32
            check_magnitude(sample, name, torch.float32)
            if ivf is not None:
                ivf.cp.seed = self.seed
            self._index.train(_to_faiss(sample))
        return self

    def _check_training_size(self, n: int, ivf) -> None:
        """faiss' k-means needs at least as many training vectors as centroids: ``nlist``
        for the IVF cells, ``2 ** pq_nbits`` per PQ sub-quantiser; say so before faiss
        raises its own C++ error."""
        given = f"got {n}" + (
            f" (train_size={self.train_size})" if self.train_size is not None else ""
        )
        if ivf is not None and n < ivf.nlist:
            raise ValueError(
                f"IVF training needs at least nlist={ivf.nlist} vectors, {given}; add more "
                "vectors, pass a smaller nlist, or use kind='flat'"
            )
        if self.kind == "ivfpq" and n < 2**self.pq_nbits:
            raise ValueError(
                f"IVF-PQ training with pq_nbits={self.pq_nbits} fits {2**self.pq_nbits} "
                f"centroids per sub-quantiser and needs at least {2**self.pq_nbits} vectors, "
                f"{given}; add more vectors, pass pq_nbits <= {max(1, n.bit_length() - 1)}, "
                "or use kind='ivf' or 'flat'"
            )

    def add(self, vectors: TensorLike) -> KNNIndex:
        """Append ``vectors`` :math:`(M, D)` to the index (training an IVF index first if needed).

        New vectors get the indices ``ntotal .. ntotal + M - 1``. Returns ``self``.
        """
        return self._add(check_features(vectors, "vectors"), "vectors")

    def _add(self, x: Tensor, name: str) -> KNNIndex:
        self._setup(x)
        if self._backend == "torch":
            self._vectors = x if self._vectors is None else torch.cat([self._vectors, x])
            return self
        if self.kind != "flat":  # IVF assignment and HNSW insertion compute distances
            check_magnitude(x, name, torch.float32)
        if self._index is None or not self._index.is_trained:
            self._train(x, name)
        self._index.add(_to_faiss(x))
        return self

    # ------------------------------------------------------------------ search
    def search(self, queries: TensorLike, k: int) -> KNNResult:
        """The ``k`` best database items for each query :math:`(Q, D)`.

        Returns:
            ``(scores, indices)``, each :math:`(Q, k)`, best first, on the index's device;
            ``-1`` / ``-inf`` padding where an approximate index returns fewer than ``k``.
        """
        if self.ntotal == 0:
            raise ValueError("the index is empty: add vectors before searching")
        src = self._source
        q = check_features(
            queries,
            "queries",
            dim=self._dim,
            dim_of=f"the dimension of {src}, which the index holds",
        )
        check_same_device(index=torch.empty(0, device=self._device), queries=q)
        k = check_int(k, "k", low=1)
        if k > self.ntotal:
            raise ValueError(
                f"k={k} is larger than the index, which holds {self.ntotal} item(s) (the rows "
                f"of {src} added to it)"
            )
        if self._backend == "torch":
            db = self._vectors
            if q.dtype != db.dtype:
                q = q.to(db.dtype)
            out = _torch_knn(q, db, k, self.metric, 256 * 2**20)
            check_overflow(out.scores, "queries", src)
            return out
        if self._device.type == "cuda" and k > FAISS_GPU_MAX_K:
            raise ValueError(
                f"k={k} exceeds faiss' GPU limit of {FAISS_GPU_MAX_K}; use backend='torch'"
            )
        faiss = require_faiss("KNNIndex.search")
        ivf = _ivf_of(self._index)
        if ivf is not None:
            ivf.nprobe = self.nprobe or min(ivf.nlist, 32)
        if self.kind == "hnsw":
            faiss.downcast_index(self._index).hnsw.efSearch = max(self.ef_search, k)
        if self.refine and self.kind == "ivfpq":
            faiss.downcast_index(self._index).k_factor = self.refine_factor
        d, i = self._index.search(_to_faiss(q), k)
        d = torch.as_tensor(d).to(q.device)
        i = torch.as_tensor(i).to(q.device).long()
        if self.metric == "l2":
            d = -d
        check_overflow(d[i >= 0], "queries", src)
        d = d.to(q.dtype).masked_fill_(i < 0, float("-inf"))
        return KNNResult(d, i)

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict[str, Any]:
        params = {
            k: getattr(self, k)
            for k in (
                "metric",
                "kind",
                "backend",
                "nlist",
                "nprobe",
                "pq_m",
                "pq_nbits",
                "refine",
                "refine_factor",
                "hnsw_m",
                "ef_construction",
                "ef_search",
                "train_size",
                "seed",
            )
        }
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "graphrerank": __version__,
            "params": params,
            "storage": self._backend,
            "dim": self._dim,
            "ntotal": self.ntotal,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` (``.npz``) atomically, without pickle.

        The vectors (torch backend) or faiss' own serialisation (faiss backend) are stored with
        the settings and a checksum; :meth:`load` verifies both.
        """
        arrays, meta = self._state()
        arrays = {
            k: v.detach().cpu().numpy() if isinstance(v, Tensor) else v for k, v in arrays.items()
        }
        return save_arrays(path, arrays, meta)

    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(arrays, meta)``: the stored vectors (a tensor, torch backend) or faiss'
        serialisation (a uint8 array), and the settings (what :meth:`save` writes)."""
        if self._dim is None:
            raise ValueError("cannot save an empty index: add vectors first")
        if self._backend == "torch":
            return {"vectors": self._vectors}, self._meta()
        faiss = require_faiss("KNNIndex.save")
        index = self._index
        if self._device.type == "cuda":
            index = faiss.index_gpu_to_cpu(index)
        return {"faiss": faiss.serialize_index(index)}, self._meta()

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> KNNIndex:
        """Read an index written by :meth:`save` onto ``device``.

        Raises:
            TypeError: ``path`` is not a text path.
            ValueError: ``device`` is not a device an index can search on (``"meta"`` holds
                no data; CUDA without a GPU; a faiss index on CUDA without GPU faiss).
            FileNotFoundError: no file at ``path``.
            CorruptFileError: the file is truncated, altered, of another format or inconsistent.
        """
        dev = _load_device(device)
        arrays, meta = load_arrays(path, format=_FORMAT, version=_VERSION)
        return cls._from_state(arrays, meta, dev, repr(str(path)))

    @classmethod
    def _from_state(
        cls, arrays: dict[str, Any], meta: dict[str, Any], device: torch.device, where: str
    ) -> KNNIndex:
        """The index of :meth:`_state`'s ``(arrays, meta)`` on ``device`` (``where`` names the
        file in error messages); ``arrays["vectors"]`` may be a numpy array or a tensor."""
        try:
            index = cls(**meta["params"])
            storage, dim, ntotal = meta["storage"], int(meta["dim"]), int(meta["ntotal"])
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"{where} has invalid index settings: {err}") from None
        index._dim, index._device, index._backend = dim, device, storage
        if storage == "torch":
            vec = arrays.get("vectors")
            if vec is None or vec.ndim != 2 or tuple(vec.shape) != (ntotal, dim):
                raise CorruptFileError(f"{where}: stored vectors do not match the metadata")
            index._vectors = (vec if isinstance(vec, Tensor) else torch.from_numpy(vec)).to(device)
        elif storage == "faiss":
            faiss = require_faiss("KNNIndex.load")
            blob = arrays.get("faiss")
            if blob is None or blob.dtype != np.uint8:
                raise CorruptFileError(f"{where}: no faiss index stored")
            try:
                fi = faiss.deserialize_index(blob)
            except RuntimeError as err:
                raise CorruptFileError(f"{where}: faiss could not read the index: {err}") from None
            if fi.d != dim or fi.ntotal != ntotal:
                raise CorruptFileError(f"{where}: faiss index does not match the metadata")
            if device.type == "cuda":
                if not hasattr(faiss, "index_cpu_to_gpu") or faiss_num_gpus() == 0:
                    raise ValueError(
                        f"{where} holds a faiss index, and this faiss has no GPU support: load "
                        "it with device='cpu' (or install a GPU build of faiss)"
                    )
                fi = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, fi)
            elif device.type != "cpu":
                raise ValueError(
                    f"{where} holds a faiss index, which searches on 'cpu' or 'cuda' only, "
                    f"not on {device}"
                )
            index._index = fi
        else:
            raise CorruptFileError(f"{where}: unknown storage {storage!r}")
        return index


def database_index(x: Tensor, search: Search = "auto", backend: Backend = "auto") -> KNNIndex:
    """The inner-product index of a database searched for its own graph, its truncation lists
    and its queries (offline diffusion).

    ``search="exact"`` is a flat index on ``backend``; ``"ivf"`` a faiss IVF index;
    ``"auto"`` exact below 100,000 items and IVF from there on a CPU with faiss (the
    reference code's switch to approximate search for its truncation lists).

    Example:
        >>> x = torch.eye(3)
        >>> database_index(x, "exact", backend="torch").search(x[:1], 2).indices
        tensor([[0, 1]])
    """
    check_in(search, "search", SEARCHES)
    x = check_features(x, "x", finite=True)
    kind = "flat"
    if search == "ivf" or (
        search == "auto"
        and x.shape[0] >= 100_000
        and has_faiss()
        and backend != "torch"
        and x.device.type == "cpu"
    ):
        kind = "ivf"
    index = KNNIndex(metric="ip", kind=kind, backend=backend if kind == "flat" else "faiss")
    index._source = "x"
    # searched against itself: x . x must not overflow the precision of the search
    which = "faiss" if kind != "flat" else resolve_backend(index.backend, x.device)
    check_magnitude(x, "x", torch.float32 if which == "faiss" else x.dtype)
    return index._add(x, "x")


def _load_device(device: Any) -> torch.device:
    """``device`` as a :class:`torch.device` an index can search on, else a ``ValueError`` /
    ``TypeError`` naming the argument."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device={device!r} is not a device: {err}") from None
    if dev.type == "meta":
        raise ValueError(
            "device='meta' holds no data, so an index there could never search; load it "
            "onto 'cpu' or 'cuda'"
        )
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device={device!r}: this torch has no CUDA device; use 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={device!r}: there are only {count} CUDA device(s)")
    return dev


def _to_faiss(x: Tensor):
    if x.device.type == "cuda":
        import faiss.contrib.torch_utils  # noqa: F401

        return x.float().contiguous()
    return np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)


def _ivf_of(index):
    faiss = require_faiss("KNNIndex")
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
