"""Pipeline: flow of descriptors and rankings between stages, all-vs-all semantics."""

from typing import ClassVar

import pytest
import torch
from torch.nn.functional import normalize

from graphrerank.rerankers import (
    KNN,
    AlphaQueryExpansion,
    DatabaseAugmentation,
    NotFittedError,
    Pipeline,
    Reranker,
    SuperGlobal,
)
from graphrerank.typing import RerankResult

#: (number of graph nodes, database rows) seen by every JointSmoothing call
SEEN: list[tuple[int, int]] = []


class JointSmoothing(Reranker):
    """A toy transductive re-ranker: one graph over queries and database together.

    Every node is averaged with its nearest other node of the joint set, then queries are
    ranked against the database by the smoothed descriptors. It records the graph size.
    """

    transductive = True
    needs_query_similarity = True

    def __init__(self, *, weight: float = 1.0) -> None:
        self.weight = weight

    def _fit(self, database):
        pass

    def _rerank(self, queries, k, initial=None):
        db = self.database_
        nodes = db if queries is None else torch.cat([queries, db])
        SEEN.append((nodes.shape[0], db.shape[0]))
        s = (nodes @ nodes.T).fill_diagonal_(float("-inf"))
        smooth = normalize(nodes + self.weight * nodes[s.argmax(1)], dim=1)
        sq = smooth if queries is None else smooth[: queries.shape[0]]
        sd = smooth[-db.shape[0] :]
        return RerankResult(*(sq @ sd.T).topk(k, dim=1))


class RecordInitial(KNN):
    """KNN that takes an initial ranking and records its shape."""

    accepts_initial = True
    shapes: ClassVar[list] = []

    def _rerank(self, queries, k, initial=None):
        RecordInitial.shapes.append(None if initial is None else tuple(initial.indices.shape))
        return super()._rerank(queries, k)


def _data(n=60, d=8, nq=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=g, dtype=torch.float64)
    x = centers[torch.arange(n) % 4] + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)
    q = centers[torch.arange(nq) % 4] + 0.6 * torch.randn(nq, d, generator=g, dtype=torch.float64)
    return normalize(q, dim=1), normalize(x, dim=1)


def test_descriptors_and_rankings_flow_as_documented(device):
    q, x = _data()
    q, x = q.to(device), x.to(device)
    dba = DatabaseAugmentation(k=3, backend="torch")
    qe = AlphaQueryExpansion(k=4, backend="torch")
    sg = SuperGlobal(M=25, K=3, backend="torch")
    out = Pipeline([dba, qe, sg]).fit(x).rerank(q, k=10)
    # by hand
    d = DatabaseAugmentation(k=3, backend="torch").fit(x)
    e = AlphaQueryExpansion(k=4, backend="torch").fit(d.transform_database())
    first = e.rerank(q, k=25)  # max(k, M) long
    s = SuperGlobal(M=25, K=3, backend="torch").fit(d.transform_database())
    ref = s.rerank(e.transform_queries(q), k=10, initial=first)
    assert torch.equal(out.indices, ref.indices) and torch.equal(out.scores, ref.scores)
    assert out.indices.device.type == device
    # the stages given were copied, not fitted
    assert not hasattr(dba, "database_") and not hasattr(sg, "database_")


def test_ranking_depth_handed_to_a_stage_that_takes_it():
    q, x = _data()
    RecordInitial.shapes.clear()
    Pipeline([KNN(backend="torch"), RecordInitial(backend="torch")]).fit(x).rerank(q, k=5)
    Pipeline([KNN(), RecordInitial()], depth=12).fit(x).rerank(q, k=5)
    Pipeline([KNN(), RecordInitial()], depth=3).fit(x).rerank(q, k=5)  # never below k
    Pipeline([KNN(), SuperGlobal(M=20, K=2), RecordInitial()]).fit(x).rerank(q, k=5)
    Pipeline([KNN(), SuperGlobal(M=100, K=2)]).fit(x).rerank(q, k=5)  # capped at N
    assert RecordInitial.shapes == [(7, 5), (7, 12), (7, 5), (7, 5)]


def test_stages_that_take_no_ranking_only_transform():
    q, x = _data(seed=1)
    qe = AlphaQueryExpansion(k=3, backend="torch").fit(x)
    out = Pipeline([AlphaQueryExpansion(k=3, backend="torch"), KNN(backend="torch")])
    out = out.fit(x).rerank(q, k=8)
    ref = KNN(backend="torch").fit(x).rerank(qe.transform_queries(q), k=8)
    assert torch.equal(out.indices, ref.indices)
    # and equals alpha-QE itself: KNN adds nothing
    assert torch.equal(out.indices, qe.rerank(q, k=8).indices)


def test_all_vs_all_inductive_stages_match_the_single_methods():
    """Before query expansion every stage runs all-vs-all on its fitted database; after it,
    an inductive stage ranks the expanded items as queries."""
    _, x = _data(seed=2)
    n = x.shape[0]
    dba = DatabaseAugmentation(k=3, backend="torch")
    qe = AlphaQueryExpansion(k=4, backend="torch")
    a = Pipeline([dba, KNN(backend="torch")]).fit(x).rerank(None, k=n)
    assert torch.equal(
        a.indices, DatabaseAugmentation(k=3, backend="torch").fit(x).rerank(None, k=n).indices
    )
    b = Pipeline([qe, KNN(backend="torch")]).fit(x).rerank(None, k=n)
    assert torch.equal(
        b.indices, AlphaQueryExpansion(k=4, backend="torch").fit(x).rerank(None, k=n).indices
    )
    # DBA then alpha-QE: the original items are expanded against the augmented database
    c = Pipeline([dba, qe]).fit(x).rerank(None, k=n)
    aug = DatabaseAugmentation(k=3, backend="torch").fit(x).transform_database()
    ref = AlphaQueryExpansion(k=4, backend="torch").fit(aug).rerank(x, k=n)
    assert torch.equal(c.indices, ref.indices)


def test_all_vs_all_keeps_one_graph_of_n_nodes_after_query_expansion():
    _, x = _data(seed=3)
    n = x.shape[0]
    pipe = Pipeline([AlphaQueryExpansion(k=4, backend="torch"), JointSmoothing()]).fit(x)
    assert pipe.transductive and pipe.needs_query_similarity
    SEEN.clear()
    out = pipe.rerank(None, k=n)
    assert SEEN == [(n, n)], "one graph over the N expanded items, not 2N"
    # query expansion acted as database augmentation for the transductive stage
    expanded = AlphaQueryExpansion(k=4, backend="torch").fit(x).transform_queries(None)
    ref = JointSmoothing().fit(expanded).rerank(None, k=n)
    assert torch.equal(out.indices, ref.indices)
    # without expansion the transductive stage runs all-vs-all on its own fitted database
    SEEN.clear()
    Pipeline([DatabaseAugmentation(k=3), JointSmoothing()]).fit(x).rerank(None, k=n)
    assert SEEN == [(n, n)]
    # explicit queries: the usual Q + N graph
    SEEN.clear()
    Pipeline([AlphaQueryExpansion(k=4), JointSmoothing()]).fit(x).rerank(x[:5], k=3)
    assert SEEN == [(5 + n, n)]


def test_declarations_follow_the_stages():
    plain = Pipeline([DatabaseAugmentation(), AlphaQueryExpansion()])
    assert not plain.transductive and not plain.needs_query_similarity
    assert not plain.accepts_initial
    assert Pipeline([SuperGlobal(), KNN()]).accepts_initial
    joint = Pipeline([KNN(), JointSmoothing()])
    assert joint.transductive and joint.needs_query_similarity
    q, x = _data()
    joint.fit(x)
    with pytest.raises(ValueError, match="same encoder"):
        joint.rerank(q, k=3, asymmetric=True)
    assert plain.fit(x).rerank(q, k=3, asymmetric=True).indices.shape == (7, 3)
    with pytest.raises(ValueError, match="Pipeline ranks the whole database itself"):
        plain.rerank(q, k=3, initial=KNN().fit(x).rerank(q, k=5))


def test_initial_goes_to_the_first_stage():
    q, x = _data(seed=4)
    first = KNN(backend="torch").fit(x).rerank(q, k=30)
    pipe = Pipeline([SuperGlobal(M=30, K=3, backend="torch"), KNN(backend="torch")]).fit(x)
    out = Pipeline([SuperGlobal(M=30, K=3, backend="torch")]).fit(x).rerank(q, 6, initial=first)
    ref = SuperGlobal(M=30, K=3, backend="torch").fit(x).rerank(q, 6, initial=first)
    assert torch.equal(out.indices, ref.indices)
    assert pipe.rerank(q, k=4, initial=first).indices.shape == (7, 4)


def test_default_nested_repr_and_transforms():
    q, x = _data(seed=5)
    default = Pipeline()
    assert repr(default) == "Pipeline([DatabaseAugmentation(), AlphaQueryExpansion()])"
    chain = Pipeline([DatabaseAugmentation(), AlphaQueryExpansion()])
    a = default.fit(x).rerank(q, k=10)
    assert torch.equal(a.indices, chain.fit(x).rerank(q, k=10).indices)
    nested = Pipeline([Pipeline([DatabaseAugmentation()]), AlphaQueryExpansion()], depth=20)
    assert repr(nested) == (
        "Pipeline([Pipeline([DatabaseAugmentation()]), AlphaQueryExpansion()], depth=20)"
    )
    assert torch.equal(nested.fit(x).rerank(q, k=10).indices, a.indices)
    dba = DatabaseAugmentation().fit(x)
    torch.testing.assert_close(chain.transform_database(), dba.transform_database())
    qe = AlphaQueryExpansion().fit(dba.transform_database())
    torch.testing.assert_close(chain.transform_queries(q), qe.transform_queries(q))
    with pytest.raises(NotFittedError):
        Pipeline().transform_database()


@pytest.mark.parametrize(
    ("stages", "error", "match"),
    [
        ([], ValueError, "at least one re-ranker"),
        ([KNN(), "knn"], TypeError, r"stages\[1\] must be a re-ranker instance, got str"),
        ([KNN], TypeError, r"got KNN; write KNN\(\)"),
        (KNN(), TypeError, "stages must be a list of re-rankers, got KNN"),
    ],
)
def test_bad_stages(stages, error, match):
    _, x = _data()
    with pytest.raises(error, match=match):
        Pipeline(stages).fit(x)


def test_bad_depth_and_stage_errors_surface():
    _, x = _data()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Pipeline([KNN()], depth=0).fit(x)
    with pytest.raises(ValueError, match="database must be L2-normalised"):
        Pipeline([KNN(), SuperGlobal()]).fit(3 * x)
