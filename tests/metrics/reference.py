"""Plain per-query Python loops of the metric formulas, the reference for the vectorised code.

Each function follows the written definition one query and one item at a time, with no torch
and no cleverness, so that a reader can check it against the formula by eye.
"""

from __future__ import annotations

import math

__all__ = [
    "loop_ap",
    "loop_class_ap",
    "loop_recall_at_k",
    "loop_reid",
    "loop_revisited",
]


def loop_ap(hits_row, num_positives, interpolation):
    """AP of one ranked list: hits 1/0/-1, junk (-1) dropped first."""
    if num_positives == 0:
        return math.nan
    kept = [h for h in hits_row if h != -1]
    total = 0.0
    found = 0  # positives seen so far
    for rank, h in enumerate(kept):  # rank: 0-based, junk removed
        if h != 1:
            continue
        after = (found + 1) / (rank + 1)
        if interpolation == "step":
            total += after
        else:
            before = 1.0 if rank == 0 else found / rank
            total += (before + after) / 2
        found += 1
    return total / num_positives


def loop_revisited(ranking, positives, junk, kappas):
    """Revisited-protocol AP and precisions of one query (None when it has no positive).

    The ranks of the positives are shifted up by the number of junk items ranked before them;
    precision at kappa is capped at the rank of the last retrieved positive.
    """
    positives, junk = set(positives), set(junk) - set(positives)
    if not positives:
        return None
    pos_ranks = []  # 0-based, junk removed
    junk_before = 0
    for position, item in enumerate(ranking):
        if item in junk:
            junk_before += 1
        elif item in positives:
            pos_ranks.append(position - junk_before)
    ap = 0.0
    for j, r in enumerate(pos_ranks):
        p0 = 1.0 if r == 0 else j / r
        p1 = (j + 1) / (r + 1)
        ap += (p0 + p1) / (2 * len(positives))
    precisions = []
    for kappa in kappas:
        if not pos_ranks:
            precisions.append(0.0)
            continue
        one_based = [r + 1 for r in pos_ranks]
        kq = min(max(one_based), kappa)
        precisions.append(sum(1 for p in one_based if p <= kq) / kq)
    return ap, precisions


def loop_reid(ranking, q_id, q_cam, g_ids, g_cams, max_rank, interpolation):
    """Market-1501 rule for one query: (ap, first_rank, inp) or None when it has no positive."""
    num_pos = sum(
        1 for gid, gcam in zip(g_ids, g_cams) if gid == q_id and gid != -1 and not (gcam == q_cam)
    )
    if num_pos == 0:
        return None
    hits = []
    for g in ranking:
        if g == -1 or g_ids[g] == -1 or (g_ids[g] == q_id and g_cams[g] == q_cam):
            hits.append(-1)
        else:
            hits.append(1 if g_ids[g] == q_id else 0)
    ap = loop_ap(hits, num_pos, interpolation)
    kept = [h for h in hits if h != -1]
    pos_ranks = [r + 1 for r, h in enumerate(kept) if h == 1]  # 1-based
    first = pos_ranks[0] if pos_ranks else None
    inp = num_pos / pos_ranks[-1] if len(pos_ranks) == num_pos else 0.0
    return ap, first, inp


def loop_class_ap(ranking, q, labels, query_label, leave_one_out, interpolation):
    """Class-level AP of query q (NaN when it has no positive)."""
    num_pos = sum(
        1 for n, lab in enumerate(labels) if lab == query_label and not (leave_one_out and n == q)
    )
    hits = []
    for n in ranking:
        if n == -1 or (leave_one_out and n == q):
            hits.append(-1)
        else:
            hits.append(1 if labels[n] == query_label else 0)
    return loop_ap(hits, num_pos, interpolation)


def loop_recall_at_k(rankings, labels, query_labels, ks, leave_one_out):
    """Fraction of queries with a positive among their first k (junk removed) items."""
    counts = dict.fromkeys(ks, 0)
    valid = 0
    for q, ranking in enumerate(rankings):
        ql = query_labels[q]
        has = any(lab == ql and not (leave_one_out and n == q) for n, lab in enumerate(labels))
        if not has:
            continue
        valid += 1
        kept = [n for n in ranking if n != -1 and not (leave_one_out and n == q)]
        for k in ks:
            if any(labels[n] == ql for n in kept[:k]):
                counts[k] += 1
    return {k: counts[k] / valid for k in ks}
