"""Training-free local matching, batched, against a float64 per-pair transcription."""

import pytest
import torch

from graphrerank.models import (
    SIMILARITIES,
    compress_local,
    decode_local,
    local_similarity,
    score_shortlist,
    shortlist_similarity,
)


def _pair(q, x, kind):
    """One pair, float64, written from the definitions with Python loops over descriptors."""
    q = q.double() / q.double().norm(dim=-1, keepdim=True)
    x = x.double() / x.double().norm(dim=-1, keepdim=True)
    s = [[float(q[i] @ x[j]) for j in range(x.shape[0])] for i in range(q.shape[0])]
    lq, lc = len(s), len(s[0])
    q2c = sum(max(row) for row in s) / lq
    c2q = sum(max(s[i][j] for i in range(lq)) for j in range(lc)) / lc
    if kind == "chamfer":
        return q2c
    if kind == "chamfer_db":
        return c2q
    if kind == "chamfer_sym":
        return (q2c + c2q) / 2
    count = 0
    for i in range(lq):
        j = max(range(lc), key=lambda jj: (s[i][jj], -jj))
        back = max(range(lq), key=lambda ii: (s[ii][j], -ii))
        count += back == i
    return count / min(lq, lc)


@pytest.mark.parametrize("kind", SIMILARITIES)
@pytest.mark.parametrize(("lq", "lc"), [(5, 6), (7, 3), (1, 4)])
def test_local_similarity_matches_the_per_pair_formula(kind, lq, lc, device):
    g = torch.Generator().manual_seed(lq * 10 + lc)
    q, c = torch.randn(3, lq, 8, generator=g), torch.randn(3, 4, lc, 8, generator=g)
    out = local_similarity(q.to(device), c.to(device), kind).cpu()
    assert out.shape == (3, 4)
    for b in range(3):
        for w in range(4):
            assert float(out[b, w]) == pytest.approx(_pair(q[b], c[b, w], kind), abs=1e-6)


def test_mnn_hand_worked():
    # query (1,0), (0,1); candidate (1,0), (0.8,0.6), (0,-1):
    # q0 -> c0, c0 -> q0 (mutual); q1 -> c1, c1 -> q0 (not mutual); 1 mutual / min(2, 3)
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    c = torch.tensor([[[[1.0, 0.0], [0.8, 0.6], [0.0, -1.0]]]])
    assert local_similarity(q, c, "mnn").item() == pytest.approx(0.5)
    # chamfer_db: c0 -> 1, c1 -> 0.8, c2 -> 0 (best of -0 and -1)
    assert local_similarity(q, c, "chamfer_db").item() == pytest.approx(1.8 / 3)


def test_chamfer_is_the_old_chamfer_similarity():
    from graphrerank.models import chamfer_similarity

    g = torch.Generator().manual_seed(3)
    q, c = torch.randn(2, 5, 6, generator=g), torch.randn(2, 3, 4, 6, generator=g)
    torch.testing.assert_close(local_similarity(q, c, "chamfer"), chamfer_similarity(q, c))


def test_symmetric_chamfer_is_symmetric():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 5, 6, generator=g), torch.randn(1, 7, 6, generator=g)
    ab = local_similarity(a, b.unsqueeze(1), "chamfer_sym")
    ba = local_similarity(b, a.unsqueeze(1), "chamfer_sym")
    torch.testing.assert_close(ab, ba)
    mab = local_similarity(a, b.unsqueeze(1), "mnn")
    mba = local_similarity(b, a.unsqueeze(1), "mnn")
    torch.testing.assert_close(mab, mba)


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_shortlist_similarity_blocks_padding_and_storage(kind):
    g = torch.Generator().manual_seed(5)
    q, db = torch.randn(4, 5, 16, generator=g), torch.randn(9, 6, 16, generator=g)
    short = torch.tensor([[3, 0, -1], [8, 7, 6], [1, -1, -1], [2, 2, 5]])
    out = shortlist_similarity(q, db, short, kind)
    small = shortlist_similarity(q, db, short, kind, max_elements=1)  # one query per block
    torch.testing.assert_close(out, small)
    for r in range(4):
        for c in range(3):
            j = int(short[r, c])
            if j < 0:
                assert out[r, c] == float("-inf")
            else:
                assert float(out[r, c]) == pytest.approx(_pair(q[r], db[j], kind), abs=1e-6)
    stored = compress_local(db, storage="binary")
    torch.testing.assert_close(
        shortlist_similarity(q, stored, short, kind),
        shortlist_similarity(q, decode_local(stored), short, kind),
    )
    via = score_shortlist(None, q, db, short, similarity=kind)
    torch.testing.assert_close(via, out)


def test_bad_kind_and_shapes():
    q, c = torch.randn(1, 2, 3), torch.randn(1, 1, 2, 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        local_similarity(q, c, "cosine")
    with pytest.raises(ValueError, match="candidates"):
        local_similarity(q, c[0], "chamfer")
    with pytest.raises(ValueError, match="agree"):
        local_similarity(q, torch.randn(1, 1, 2, 4), "chamfer")
    with pytest.raises(ValueError, match="similarity must be one of"):
        score_shortlist(None, q, torch.randn(2, 2, 3), torch.tensor([[0]]), similarity="x")
