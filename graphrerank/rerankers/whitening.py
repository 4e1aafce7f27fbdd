r"""Preprocessing as a stage: centring, PCA, PCA-whitening with shrinkage, power and L2
normalisation, learned at ``fit`` and applied to the database and to every query."""

from __future__ import annotations

import warnings

from torch import Tensor

from .._checks import check_features, check_same_device
from .._params import Bool, Int, OneOf, Real, setting
from ..graph import KNNIndex
from ..nn.whitening import PCAWhitening
from ..typing import BACKENDS, METRICS, Backend, Metric, RerankResult, TensorLike
from .base import Reranker, _user_stacklevel

__all__ = ["Whitening"]


class Whitening(Reranker):
    r"""Learned descriptor preprocessing (centring, PCA, PCA-whitening with shrinkage, signed
    power and L2 normalisation) as a re-ranking stage: the first stage of a
    :class:`~graphrerank.rerankers.Pipeline`, or a first-stage ranking on its own.

    At :meth:`fit` the map of :class:`~graphrerank.nn.PCAWhitening` (its docstring has the
    formulas) is learned on the database, or on ``train`` when given (e.g. a separate
    training set of the same encoder, as cirtorch learns its whitening on training
    landmarks), and applied to the database; at :meth:`rerank` it is applied to the queries.
    :meth:`transform_database` and :meth:`transform_queries` hand the mapped descriptors
    :math:`(\cdot, d)` to the next stage of a pipeline, so ``Whitening() |
    DatabaseAugmentation() | AlphaQueryExpansion()`` runs DBA and αQE in the whitened space
    (with ``l2=True``, the default, the outputs are L2-normalised as those stages need). On
    its own it ranks the database by plain nearest-neighbour search in that space:
    ``Whitening(...).fit(x).rerank(q, k)`` equals ``KNN().fit(t(x)).rerank(t(q), k)`` for the
    learned map :math:`t`. In the all-vs-all case (``rerank(None)``) the items are whitened
    like the database, so a following stage sees them as its own database items.

    The default, ``Whitening()``, only centres (and rotates: the full PCA basis, so cosine
    rankings are those of the centred, L2-normalised descriptors). Which setting helps
    depends on the data; leave-one-out class mAP measured by
    ``benchmarks/whitening_quality.py`` (table in ``benchmarks/results/whitening.md``):

    ==============================  ==========  ==============  ==============  ======
    Corel-1k (GeM, 1280-d)          ranked set  classes A -> B  classes B -> A  digits
    ==============================  ==========  ==============  ==============  ======
    cosine, no preprocessing        92.05       99.24           90.83           67.68
    ``Whitening()`` (centring)      94.11       99.43           92.91           67.68
    ``whiten=True``                 10.59       98.09           88.51           37.26
    ``whiten=True, shrinkage=0.9``  72.28       99.38           92.63           65.88
    ==============================  ==========  ==============  ==============  ======

    ("ranked set": learned on the items that are ranked; "classes A -> B": learned on five
    classes with ``train=``, applied to the other five; digits: ranked set, already
    centred.) Centring gained 0.2 to 2 points on these Corel descriptors and 1.1 on the
    average-pooled ones learned on the ranked set, but cost up to 0.3 on the digits halves
    and 0.1 on one half of the average-pooled Corel descriptors (all in the benchmark's
    table). Full whitening hurt everywhere here: it gives every component unit variance, weak
    noisy ones included, and learned on the ranked items themselves with :math:`d = N - 1`
    components it places them all at one distance from each other (a random ranking; a
    warning says so). It pays off with a training set much larger than :math:`D` (e.g.
    cirtorch's learned whitening on 100k+ training images); ``shrinkage`` and ``dim`` are
    worth tuning on held-out classes.

    Args:
        dim: Output dimension :math:`d` (``None``: every component of nonzero variance,
            at most :math:`\min(N - 1, D)`, with a warning when that is less than :math:`D`).
        center: Subtract the training mean.
        whiten: Scale each principal component to unit (shrunk) variance (PCA-whitening);
            ``False`` (the default): PCA projection only (with ``dim=None``, a rotation:
            centring alone).
        shrinkage: Eigenvalue shrinkage :math:`s \in [0, 1]` towards the mean eigenvalue
            (0: full whitening, 1: none).
        power: Exponent :math:`\alpha > 0` of the signed power normalisation after whitening
            (1: none).
        l2: L2-normalise the mapped descriptors (needed by the stages that compare by cosine:
            query expansion, DBA, diffusion).
        train: Training descriptors :math:`(M, D)` (torch or numpy) to learn the map on
            instead of the database; stored with the re-ranker's settings when saved.
        metric: Similarity of the ranking in the mapped space, ``"ip"`` or ``"l2"``.
        backend: kNN backend, ``"auto"``, ``"faiss"`` or ``"torch"``.

    Shapes:
        - **fit:** database :math:`(N, D)`
        - **rerank:** queries :math:`(Q, D)` or ``None`` :math:`\to` scores, indices
          :math:`(Q, k)`
        - **transform_database:** :math:`(N, d)`; **transform_queries:** :math:`(Q, d)`

    Raises:
        ValueError: ``dim`` exceeds the rank of the training covariance, ``train`` has another
            dimension than the database, fewer than 2 training vectors, or NaN values.

    Example:
        >>> from graphrerank.rerankers import KNN, DatabaseAugmentation
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(60, 8, generator=g) * torch.linspace(3, 0.1, 8) + 2.0
        >>> w = Whitening(dim=6).fit(x)
        >>> w.transform_database().shape
        torch.Size([60, 6])
        >>> t = w.transform_database()  # whitened and L2-normalised
        >>> torch.allclose(t.norm(dim=1), torch.ones(60))
        True
        >>> q = x[:2] + 0.1
        >>> by_hand = KNN().fit(t).rerank(w.transform_queries(q), k=5)
        >>> torch.equal(w.rerank(q, k=5).indices, by_hand.indices)
        True
        >>> pipe = Whitening(dim=6) | DatabaseAugmentation(k=3)
        >>> pipe
        Pipeline([Whitening(dim=6), DatabaseAugmentation(k=3)])
        >>> pipe.fit(x).rerank(q, k=5).indices.shape
        torch.Size([2, 5])
    """

    dim: int | None = setting(None, Int(1) | None)
    center: bool = setting(True, Bool())
    whiten: bool = setting(False, Bool())
    shrinkage: float = setting(0.0, Real(0, 1))
    power: float = setting(1.0, Real(0, low_open=True))
    l2: bool = setting(True, Bool())
    #: ``train`` is checked at :meth:`fit` (a floating point (M, D) array).
    train: TensorLike | None = setting(None)
    metric: Metric = setting("ip", OneOf(METRICS))
    backend: Backend = setting("auto", OneOf(BACKENDS))

    #: The :class:`~graphrerank.nn.PCAWhitening` module is rebuilt from the stored tensors.
    _derived_state = ("whitening_",)

    def __repr__(self) -> str:
        defaults = self.default_params()
        changed = []
        for name, value in self.get_params().items():
            if name == "train":
                if value is not None:
                    changed.append(f"train=<array {tuple(getattr(value, 'shape', ()))}>")
            elif value is not defaults[name] and value != defaults[name]:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    # ------------------------------------------------------------------ fit / rerank
    def _module(self) -> PCAWhitening:
        return PCAWhitening(
            self.dim,
            center=self.center,
            whiten=self.whiten,
            shrinkage=float(self.shrinkage),
            power=float(self.power),
            l2=self.l2,
        )

    def _fit(self, database: Tensor) -> None:
        if self.train is None:
            train = database
        else:
            train = check_features(self.train, "train", dim=database.shape[1])
            train = train.to(device=database.device)
        name = "database" if self.train is None else "train"
        if train.shape[0] < 2:
            raise ValueError(
                f"{name} must hold at least 2 vectors to learn the whitening, got {train.shape[0]}"
            )
        module = self._module().to(database.device)._fit(train, None, name)
        n = train.shape[0]
        if (
            self.train is None
            and self.whiten
            and self.shrinkage == 0
            and module.out_features >= n - int(self.center)
        ):
            warnings.warn(
                f"Whitening: fully whitened on the database itself with d = "
                f"{module.out_features} components for {n} items, every database item is at "
                "the same distance from every other (the ranking is random); set dim well "
                "below N, shrinkage > 0, or learn it on other data (train=)",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        self.mean_ = module.mean
        self.components_ = module.components
        self.eigenvalues_ = module.eigenvalues
        self.scale_ = module.scale
        self.total_variance_ = module.total_variance
        self.whitening_ = module
        self.transformed_ = module(database).contiguous()
        self.index_ = KNNIndex(metric=self.metric, backend=self.backend).add(self.transformed_)

    def _after_load(self) -> None:
        module = self._module().to(self.mean_.device)
        module.load_state_dict(
            {
                "mean": self.mean_,
                "components": self.components_,
                "eigenvalues": self.eigenvalues_,
                "scale": self.scale_,
                "total_variance": self.total_variance_,
            }
        )
        self.whitening_ = module

    def _rerank(
        self, queries: Tensor | None, k: int, initial: RerankResult | None = None
    ) -> RerankResult:
        q = self.transformed_ if queries is None else self.whitening_(queries)
        return RerankResult(*self.index_.search(q, k))

    @property
    def whitening(self) -> PCAWhitening:
        """The fitted :class:`~graphrerank.nn.PCAWhitening` module (e.g. to apply the same map
        to other descriptors, or to hold it in a model)."""
        self._check_fitted()
        return self.whitening_

    def transform_database(self) -> Tensor:
        """The mapped database :math:`(N, d)`."""
        self._check_fitted()
        return self.transformed_

    def transform_queries(self, queries: Tensor | None) -> Tensor:
        """The mapped queries :math:`(Q, d)`; for ``None`` (all-vs-all) the mapped database
        items, the very tensor :meth:`transform_database` returns."""
        self._check_fitted()
        if queries is None:
            return self.transformed_
        q = check_features(queries, "queries", dim=self.database_.shape[1])
        check_same_device(database=self.database_, queries=q)
        return self.whitening_(q.to(self.database_.dtype))

    def score_candidates(self, rows: Tensor, candidates: Tensor, scores: Tensor) -> Tensor:
        """The similarity of each (row, candidate) pair in the mapped space."""
        self._check_fitted()
        x = self.transformed_
        cand = x[candidates.clamp(min=0)]
        q = x[rows]
        if self.metric == "ip":
            s = (cand * q[:, None, :]).sum(-1)
        else:
            s = -(cand - q[:, None, :]).pow(2).sum(-1)
        return s.masked_fill(candidates < 0, float("-inf"))
