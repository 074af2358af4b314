"""Searching only the vectors of a few categories, exactly, instead of paging the index.

A query restricted to a category that holds a small share of the index (chairs, under the
page's category filter) pages through the nearest vectors of every category, doubling the
fetch, until enough of them pass: several index searches and thousands of catalog rows read
per instance. When the categories hold at most `SUBSET_MAX` vectors, their vectors are
taken from the served index and scored exactly instead. That is one matrix product, exact
even where the index is approximate, and only the top of it is looked up in the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from search import catalog
from search.index import IdArray, Scores, VectorIndex, Vectors

SUBSET_MAX = 2048  # vectors: 2048 x 2,560-d float32 is 21 MB while a search holds it


@dataclass(frozen=True)
class Subset:
    """The served vectors of some categories."""

    ids: IdArray
    vectors: Vectors

    @property
    def ntotal(self) -> int:
        return len(self.ids)

    def search(self, queries: Vectors, k: int) -> tuple[Scores, IdArray]:
        """Top-k by inner product, best first, padded -inf / -1 as `VectorIndex.search`."""
        n = len(queries)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        if not self.ntotal:
            return scores, ids
        sims = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        take = min(k, self.ntotal)
        top = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        order = np.take_along_axis(-sims, top, axis=1).argsort(axis=1, kind="stable")
        best = np.take_along_axis(top, order, axis=1)
        scores[:, :take] = np.take_along_axis(sims, best, axis=1)
        ids[:, :take] = self.ids[best]
        return scores, ids


def category_subset(
    session: Session,
    index: VectorIndex,
    categories: frozenset[str],
    *,
    embedder: str,
    limit: int = SUBSET_MAX,
) -> Subset | None:
    """The served vectors of the products in `categories` (casefolded names), or None when
    the categories hold more than `limit` of the embedder's vectors (paging is then cheap)."""
    found = catalog.vector_ids_in_categories(
        session=session, categories=categories, embedder=embedder, limit=limit
    )
    if found is None:
        return None
    served = index.present(found)
    if not len(served):
        return Subset(served, np.zeros((0, index.dim), dtype=np.float32))
    return Subset(served, np.ascontiguousarray(index.reconstruct(served), dtype=np.float32))
