r"""PCA, PCA-whitening with shrinkage, centring, power and L2 normalisation of descriptors: one
learned linear map, for global descriptors :math:`(N, D)` and local ones :math:`(N, L, D)`."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_int, check_real

__all__ = ["PCAWhitening"]

#: Rows per float64 chunk when accumulating the mean and the covariance.
_CHUNK = 16384


class PCAWhitening(torch.nn.Module):
    r"""Mean-centring, PCA projection, (shrunk) whitening, power and L2 normalisation, learned
    by :meth:`fit` and applied to the last dimension of any tensor.

    :meth:`fit` computes, from training vectors :math:`\mathbf{x}_1, \dots, \mathbf{x}_N`
    in float64, the mean :math:`\boldsymbol{\mu}` (``center=True``, else
    :math:`\boldsymbol{\mu} = \mathbf{0}`) and the eigendecomposition of the covariance

    .. math::
        \Sigma = \frac{1}{N - 1} \sum_i (\mathbf{x}_i - \boldsymbol{\mu})
        (\mathbf{x}_i - \boldsymbol{\mu})^\top = U \Lambda U^\top,
        \qquad \lambda_1 \ge \dots \ge \lambda_D

    (the second moment :math:`\frac1N \sum_i \mathbf{x}_i \mathbf{x}_i^\top` when
    ``center=False``). :meth:`forward` maps a vector :math:`\mathbf{x}` to

    .. math::
        \mathbf{y} = S\, U_d^\top (\mathbf{x} - \boldsymbol{\mu}), \qquad
        S = \operatorname{diag}\big(\tilde\lambda_1^{-1/2}, \dots,
        \tilde\lambda_d^{-1/2}\big), \qquad
        \tilde\lambda_j = (1 - s)\, \lambda_j + s\, \bar\lambda,

    where :math:`U_d` holds the :math:`d` leading eigenvectors, :math:`\bar\lambda =
    \operatorname{tr}(\Sigma) / D` is the mean eigenvalue and :math:`s` the ``shrinkage``:
    whitening of the covariance shrunk towards the scaled identity,
    :math:`(1 - s)\Sigma + s\bar\lambda I` (the shrinkage target of Ledoit and Wolf, "A
    well-conditioned estimator for large-dimensional covariance matrices", 2004). :math:`s = 0`
    is full PCA-whitening (each component of unit variance on the training set, as
    ``sklearn.decomposition.PCA(whiten=True)``); :math:`s = 1` keeps the components' own
    scale (a plain PCA rotation times :math:`\bar\lambda^{-1/2}`); values in between damp the
    amplification of weak, noisy components that makes full whitening hurt on small training
    sets. ``whiten=False`` uses :math:`S = I`. Then, in this order, the signed power
    normalisation :math:`y_j \leftarrow \operatorname{sign}(y_j)\,|y_j|^{\alpha}` (``power``
    :math:`\alpha`; Perronnin et al., ECCV 2010) and L2 normalisation (``l2``), which makes
    inner products of the outputs cosines again, as after the PCA-whitening of Jégou and Chum,
    `"Negative evidences and co-occurrences in image retrieval: the benefit of PCA and
    whitening" <https://doi.org/10.1007/978-3-642-33709-3_55>`_ (ECCV 2012).

    Eigenvectors are made unique up to ties in the spectrum: each is signed so that its entry
    of largest absolute value is positive (scikit-learn's convention), so that two fits on the
    same data give the same map. The fitted state is five buffers (``mean`` :math:`(D,)`,
    ``components`` :math:`U_d^\top` :math:`(d, D)`, ``eigenvalues`` :math:`\lambda_{1..d}`)
    plus ``scale`` (the diagonal of :math:`S`) and ``total_variance``
    (:math:`\operatorname{tr}\Sigma`), all in :meth:`state_dict`, so a model holding this
    module saves and loads it with its weights (``load_state_dict`` into an unfitted module
    works). The buffers are float64; :meth:`forward` computes in the input's dtype (float32
    for half-precision input), and gradients flow to the input (the map itself is not
    trained).

    Args:
        dim: Output dimension :math:`d` (the leading components kept). ``None``: all
            :math:`D` (a rotation of the input when not whitening), except with full
            whitening (``whiten=True``, ``shrinkage=0``): then the components of nonzero
            variance, :math:`d = \operatorname{rank}(\Sigma) \le \min(N - 1, D)`, with a
            warning when that is less than :math:`D`. An explicit ``dim`` must not exceed
            the rank.
        center: Subtract the training mean (the usual PCA); ``False`` decomposes the
            uncentred second moment.
        whiten: Divide each component by the square root of its (shrunk) variance;
            ``False``: plain PCA (projection only).
        shrinkage: :math:`s \in [0, 1]`, see above (used only when whitening).
        power: Exponent :math:`\alpha > 0` of the signed power normalisation (1: none; 0.5 is
            the usual square root).
        l2: L2-normalise each output vector.

    Shapes:
        - **fit:** :math:`(N, D)`, or :math:`(\dots, D)` (every vector along the last
          dimension, e.g. :math:`(N, L, D)` local descriptors) with an optional boolean
          ``mask`` :math:`(\dots)` of the vectors to use, or a list of :math:`(n_i, D)` arrays
        - **forward:** :math:`(\dots, D) \to (\dots, d)`

    Example:
        >>> x = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
        >>> pca = PCAWhitening(l2=False).fit(x)
        >>> pca.eigenvalues  # variances 8/3 and 2/3 along the two axes
        tensor([2.6667, 0.6667], dtype=torch.float64)
        >>> pca(x)  # each component of unit variance
        tensor([[ 1.2247,  0.0000],
                [-1.2247,  0.0000],
                [ 0.0000,  1.2247],
                [ 0.0000, -1.2247]])
        >>> PCAWhitening(shrinkage=1.0, l2=False).fit(x)(x)[0]  # scale of the mean eigenvalue
        tensor([1.5492, 0.0000])
        >>> local = torch.randn(5, 7, 2)  # (N, L, D) local descriptors work directly
        >>> pca(local).shape
        torch.Size([5, 7, 2])
    """

    mean: Tensor
    components: Tensor
    eigenvalues: Tensor
    scale: Tensor
    total_variance: Tensor

    _BUFFERS = ("mean", "components", "eigenvalues", "scale", "total_variance")

    def __init__(
        self,
        dim: int | None = None,
        *,
        center: bool = True,
        whiten: bool = True,
        shrinkage: float = 0.0,
        power: float = 1.0,
        l2: bool = True,
    ) -> None:
        super().__init__()
        if dim is not None:
            check_int(dim, "dim", low=1)
        for name, value in (("center", center), ("whiten", whiten), ("l2", l2)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        check_real(shrinkage, "shrinkage", low=0.0, high=1.0)
        check_real(power, "power", low=0.0, low_open=True)
        self.dim, self.center, self.whiten = dim, center, whiten
        self.shrinkage, self.power, self.l2 = float(shrinkage), float(power), l2
        for name in self._BUFFERS:
            self.register_buffer(name, torch.empty(0, dtype=torch.float64))

    # ------------------------------------------------------------------ state
    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or ``load_state_dict``) has set the map."""
        return self.components.numel() > 0

    @property
    def in_features(self) -> int:
        """Input dimension :math:`D` (after fitting)."""
        self._check_fitted()
        return int(self.components.shape[1])

    @property
    def out_features(self) -> int:
        """Output dimension :math:`d` (after fitting)."""
        self._check_fitted()
        return int(self.components.shape[0])

    @property
    def explained_variance_ratio(self) -> Tensor:
        r""":math:`\lambda_j / \operatorname{tr}\Sigma` of each kept component (after
        fitting)."""
        self._check_fitted()
        return self.eigenvalues / self.total_variance

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError("this PCAWhitening is not fitted yet: call fit(x) first")

    def extra_repr(self) -> str:
        parts = [f"dim={self.dim}"]
        defaults = {"center": True, "whiten": True, "shrinkage": 0.0, "power": 1.0, "l2": True}
        parts += [f"{k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
        if self.is_fitted:
            parts.append(f"fitted: {self.in_features} -> {self.out_features}")
        return ", ".join(parts)

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # an unfitted module holds empty buffers: take the stored shapes
        for name in self._BUFFERS:
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(value, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ fit
    def fit(self, x: Any, mask: Any = None) -> PCAWhitening:
        r"""Learn the map from training vectors and return ``self``.

        Args:
            x: :math:`(N, D)` vectors (torch or numpy, floating point), or :math:`(\dots, D)`
                (all vectors along the last dimension are used), or a list of :math:`(n_i,
                D)` arrays (e.g. each image's local descriptors).
            mask: Optional boolean :math:`(\dots)` selecting the vectors of ``x`` to use
                (e.g. the valid entries of padded local descriptors).

        Raises:
            TypeError: ``x`` is not a floating point array (or list of them), ``mask`` not
                boolean.
            ValueError: fewer than 2 vectors, NaN or infinite values, mismatched shapes, or
                ``dim`` larger than the rank of the covariance (at most
                :math:`\min(N - 1, D)` when centring, :math:`\min(N, D)` otherwise).
        """
        return self._fit(x, mask, "x")

    def _fit(self, x: Any, mask: Any, name: str) -> PCAWhitening:
        """:meth:`fit`, with the training vectors called ``name`` in the messages."""
        v = _training_vectors(x, mask)
        n, d_in = v.shape
        device = v.device
        if self.center:
            mean = torch.zeros(d_in, dtype=torch.float64, device=device)
            for s in range(0, n, _CHUNK):
                mean += v[s : s + _CHUNK].to(torch.float64).sum(0)
            mean /= n
        else:
            mean = torch.zeros(d_in, dtype=torch.float64, device=device)
        cov = torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
        for s in range(0, n, _CHUNK):
            c = v[s : s + _CHUNK].to(torch.float64) - mean
            cov += c.T @ c
        cov /= (n - 1) if self.center else n
        cov = 0.5 * (cov + cov.T)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0), evecs.flip(1)
        total = evals.clamp(min=0).sum()
        top = float(evals[0]) if evals.numel() else 0.0
        tol = max(top, 0.0) * max(n, d_in) * torch.finfo(torch.float64).eps
        rank = int((evals > tol).sum()) if top > 0 else 0
        if rank == 0:
            raise ValueError(
                f"{name} has no variance (all {n} vectors are "
                + ("equal" if self.center else "zero")
                + "): there is no component to keep"
            )
        limit = "N - 1" if self.center else "N"
        # Components of zero variance get one common finite scale unless whitening fully, so
        # the map is then the same whatever basis of that null space eigh returns.
        full = not self.whiten or self.shrinkage > 0
        if self.dim is None:
            d = d_in if full else rank
            if d < d_in:
                warnings.warn(
                    f"PCAWhitening: the {n} training vectors span only {rank} of {d_in} "
                    f"dimensions (at most min({limit}, D)); full whitening keeps those {rank} "
                    "components (set dim=, or shrinkage > 0 to keep all)",
                    UserWarning,
                    stacklevel=2,
                )
        else:
            d = int(self.dim)
            if d > d_in:
                raise ValueError(f"dim={d} is larger than the input dimension D={d_in}")
            if d > rank:
                raise ValueError(
                    f"dim={d} is larger than the rank {rank} of the training covariance "
                    f"({n} vectors of dimension {d_in}: at most min({limit}, D)); components "
                    "beyond the rank have zero variance and no defined direction: lower dim, "
                    "use dim=None, or fit on more vectors"
                )
        evals, comps = evals[:d].clamp(min=0), evecs[:, :d].T.contiguous()
        # sign convention: the entry of largest absolute value of each component is positive
        pivot = comps.abs().argmax(1, keepdim=True)
        comps *= torch.sign(comps.gather(1, pivot))
        if self.whiten:
            shrunk = (1.0 - self.shrinkage) * evals + self.shrinkage * (total / d_in)
            scale = shrunk.rsqrt()
        else:
            scale = torch.ones(d, dtype=torch.float64, device=device)
        self.mean, self.components, self.eigenvalues = mean, comps, evals
        self.scale, self.total_variance = scale, total.reshape(())
        return self

    # ------------------------------------------------------------------ transform
    def forward(self, x: Tensor) -> Tensor:
        r"""Apply the map to the last dimension of ``x``.

        Args:
            x: :math:`(\dots, D)` floating point tensor on the module's device.

        Returns:
            :math:`(\dots, d)`, in ``x``'s dtype (float32 for half precision input).

        Raises:
            ValueError: not fitted, or the last dimension is not :math:`D`.
            TypeError: ``x`` is not a floating point tensor.
        """
        self._check_fitted()
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must hold floating point values, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.components.shape[1]:
            raise ValueError(
                f"x must have last dimension {self.components.shape[1]} (the fitted D), got "
                f"shape {tuple(x.shape)}"
            )
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x = x.to(dtype)
        w = (self.components * self.scale[:, None]).to(dtype)  # (d, D)
        y = (x - self.mean.to(dtype)) @ w.T
        if self.power != 1.0:
            y = y.sign() * y.abs().pow(self.power)
            if not bool(torch.isfinite(y).all()):
                raise ValueError(
                    f"power={self.power:g} overflows {dtype}: |y| ** power is infinite for "
                    f"{int((~torch.isfinite(y)).sum())} value(s) of the whitened descriptors; "
                    "use a power such as 0.5 (power normalisation), at most a few units"
                )
        if self.l2:
            y = torch.nn.functional.normalize(y, dim=-1)
        return y

    def transform(self, x: Any) -> Tensor:
        """:meth:`forward` for torch or numpy input (numpy is read as a tensor)."""
        return self(as_tensor(x, "x"))


def _training_vectors(x: Any, mask: Any) -> Tensor:
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (Tensor, np.ndarray)):
        if mask is not None:
            raise ValueError("mask is for a tensor x; pass a list of arrays without mask")
        parts = [_floating(as_tensor(p, f"x[{i}]"), f"x[{i}]") for i, p in enumerate(x)]
        for i, p in enumerate(parts):
            if p.dim() != 2 or p.shape[1] != parts[0].shape[-1]:
                raise ValueError(
                    f"x[{i}] must be (n_i, D) with the D of x[0] ({parts[0].shape[-1]}), got "
                    f"shape {tuple(p.shape)}"
                )
        dtype = torch.promote_types(parts[0].dtype, torch.float32)
        v = torch.cat([p.to(dtype) for p in parts])
    else:
        t = _floating(as_tensor(x, "x"), "x")
        if t.dim() < 2:
            raise ValueError(f"x must be (N, D) or (..., D), got shape {tuple(t.shape)}")
        if mask is not None:
            m = as_tensor(mask, "mask")
            if m.dtype != torch.bool:
                raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
            if tuple(m.shape) != tuple(t.shape[:-1]):
                raise ValueError(
                    f"mask must have shape {tuple(t.shape[:-1])} (x without its last "
                    f"dimension), got {tuple(m.shape)}"
                )
            v = t[m.to(t.device)]
        else:
            v = t.reshape(-1, t.shape[-1])
    if v.shape[1] == 0:
        raise ValueError("x has zero-length vectors (D = 0)")
    if v.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 vectors to fit a covariance, got {v.shape[0]}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("x contains NaN or infinite values")
    return v


def _floating(t: Tensor, name: str) -> Tensor:
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must hold floating point values, got dtype {t.dtype}")
    return t
