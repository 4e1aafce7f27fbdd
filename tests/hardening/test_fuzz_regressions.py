"""Regressions of the last defects the fuzz harness (``benchmarks/fuzz_public_api.py``) found:
each once gave an internal error or a hang."""

import pytest
import torch

from graphrerank.graph.index import database_index
from graphrerank.graph.ranking import rank_dense
from graphrerank.rerankers import (
    AlphaQueryExpansion,
    AverageQueryExpansion,
    DatabaseAugmentation,
    GNNRerank,
)

Q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=1)
DB = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
SCORES = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.9, 0.2]])


def test_rank_dense_orders_ties_by_the_first_stage():
    out = rank_dense(SCORES, 3, Q, DB, "similarity")
    # row 0: items 0 and 1 tie at 0.5; item 0 is the more similar to the query
    assert out.indices[0].tolist() == [0, 1, 2]
    assert out.indices[1, 0].item() == 1


@pytest.mark.parametrize(
    ("queries", "database", "error", "match"),
    [
        (Q.bool(), DB, TypeError, "queries must hold floating point"),  # was: matmul dtypes
        (Q, DB[None], ValueError, "database must be a 2-D"),  # was: matmul shapes
        (Q, DB[:, :1], ValueError, "queries has descriptors of dimension 2, expected 1"),
        (Q[:1], DB, ValueError, r"scores must have shape \(queries, database\)"),
    ],
)
def test_rank_dense_checks_the_secondary_key_inputs(queries, database, error, match):
    with pytest.raises(error, match=match):
        rank_dense(SCORES, 3, queries, database, "similarity")


def test_database_index_takes_lists_and_refuses_nan():
    index = database_index([[1.0, 0.0], [0.0, 1.0]], "exact", backend="torch")  # was: .shape
    assert index.search(torch.tensor([[1.0, 0.0]]), 1).indices.tolist() == [[0]]
    with pytest.raises(ValueError, match="x contains NaN"):
        database_index(torch.tensor([[1.0, float("nan")]]), "exact", backend="torch")


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda v: AlphaQueryExpansion(iterations=v), "iterations"),
        (lambda v: AverageQueryExpansion(iterations=v), "iterations"),
        (lambda v: DatabaseAugmentation(iterations=v), "iterations"),
        (lambda v: GNNRerank(layers=v), "layers"),
    ],
)
def test_round_counts_are_bounded(make, name):
    # was: a loop of 10**12 rounds (a hang); 1000 is the bound, which still constructs
    with pytest.raises(ValueError, match=rf"{name} must be <= 1000"):
        make(10**12).validate_params()
    make(1000).validate_params()
