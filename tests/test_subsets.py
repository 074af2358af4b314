"""Subset.search: exact top-k over a few vectors, padded as the index pads."""

from __future__ import annotations

import numpy as np

from search.index import brute_force_search
from search.subsets import Subset


def test_subset_search_is_exact_and_padded() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 5)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(100, 107, dtype=np.int64)
    queries = vectors[[2, 5]] + 0.01
    scores, found = Subset(ids, vectors).search(queries, 4)
    want_scores, want_ids = brute_force_search(vectors, ids, queries, 4)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    scores, found = Subset(ids, vectors).search(queries, 10)
    assert (found[:, 7:] == -1).all() and np.isneginf(scores[:, 7:]).all()
    assert set(found[0, :7].tolist()) == set(ids.tolist())


def test_an_empty_subset_finds_nothing() -> None:
    empty = Subset(np.zeros(0, dtype=np.int64), np.zeros((0, 5), dtype=np.float32))
    scores, found = empty.search(np.ones((2, 5), dtype=np.float32), 3)
    assert (found == -1).all() and np.isneginf(scores).all() and empty.ntotal == 0
