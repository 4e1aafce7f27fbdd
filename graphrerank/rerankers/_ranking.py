"""Top-k selection by a score with ties broken by a second key."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["top_k_with_ties"]


def _lexsort_desc(primary: Tensor, secondary: Tensor) -> Tensor:
    """Row-wise order by ``primary`` descending, then ``secondary`` descending."""
    order = secondary.argsort(dim=1, descending=True, stable=True)
    p = primary.gather(1, order)
    return order.gather(1, p.argsort(dim=1, descending=True, stable=True))


def top_k_with_ties(
    scores: Tensor, k: int, secondary: Callable[[Tensor], Tensor] | None
) -> tuple[Tensor, Tensor]:
    """The ``k`` best columns of each row of ``scores`` :math:`(Q, N)`, best first.

    Columns with equal scores are ordered by ``secondary(rows)`` (a :math:`(R, N)` tensor for
    the given rows, higher first). It is only evaluated for the rows that have ties within
    their top ``k`` or at its boundary: diffusion leaves many items at exactly 0 (those it does
    not reach), and their order then comes from the secondary key.
    """
    vals, idx = scores.topk(k, dim=1)
    if secondary is None or scores.shape[1] == 0:
        return vals, idx
    last = vals[:, -1:]
    greater = scores > last
    equal = scores == last
    n_greater = greater.sum(1)
    n_equal = equal.sum(1)
    boundary = n_greater + n_equal > k
    inside = (vals[:, 1:] == vals[:, :-1]).any(1) if k > 1 else torch.zeros_like(boundary)
    rows = (boundary | inside).nonzero().flatten()
    if rows.numel() == 0:
        return vals, idx
    sec = secondary(rows).to(torch.float64)
    s = scores[rows]
    key = torch.where(
        greater[rows],
        torch.tensor(float("inf"), dtype=sec.dtype, device=sec.device),
        torch.where(
            equal[rows], sec, torch.tensor(float("-inf"), dtype=sec.dtype, device=sec.device)
        ),
    )
    sel = key.topk(k, dim=1).indices
    order = _lexsort_desc(s.gather(1, sel), sec.gather(1, sel))
    sel = sel.gather(1, order)
    vals = vals.clone()
    idx = idx.clone()
    vals[rows] = s.gather(1, sel)
    idx[rows] = sel
    return vals, idx
