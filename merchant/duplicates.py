"""Near-duplicate products: pairs whose segmented instances are nearly the same vector.

A near-duplicate is the same product listed twice (the same photo re-uploaded, one item sold
by two merchants), not a look-alike: it needs a cosine similarity at or above a high
threshold (default 0.95) between an instance of each product, where "similar" products (what
search returns) typically score 0.6 to 0.9. Pairs within one product are never reported.

The vectors are the ones the live index holds (reconstructed from it); their neighbours come
from a k-NN search of that index, or, for one merchant, of a temporary exact index over that
merchant's vectors only, so another merchant's catalog can neither hide nor reveal a pair.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session

from search import catalog
from search.db import InstanceRow, Product, ProductImage
from search.errors import InvalidInput
from search.index import FaissIndex, VectorIndex

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95
QUERY_CHUNK = 1024


@dataclass(frozen=True)
class DuplicateOptions:
    """`merchant`: both products of that merchant (None: any). `cross_merchant`: also pairs
    of two different merchants (only meaningful without `merchant`). `k`: neighbours looked
    at per instance."""

    threshold: float = DEFAULT_THRESHOLD
    merchant: str | None = None
    cross_merchant: bool = True
    k: int = 10
    limit: int = 100

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidInput(f"threshold must be in (0, 1], got {self.threshold}")
        if not 1 <= self.k <= 1000:
            raise InvalidInput(f"k must be 1 to 1000, got {self.k}")
        if self.limit < 1:
            raise InvalidInput(f"limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class ProductRef:
    sku: str
    title: str
    merchant: str | None
    category: str | None
    image_id: int


@dataclass(frozen=True)
class DuplicatePair:
    """Two products (a.sku < b.sku), their best instance similarity and how many matched."""

    a: ProductRef
    b: ProductRef
    score: float
    matches: int  # instance pairs at or above the threshold
    labels: tuple[str, str]  # labels of the best-matching instances (a's, b's)


def _scope_ids(session: Session, merchant: str | None) -> npt.NDArray[np.int64]:
    stmt = (
        select(InstanceRow.vector_id)
        .join(ProductImage, InstanceRow.image_id == ProductImage.id)
        .join(Product, ProductImage.product_id == Product.id)
        .where(InstanceRow.vector_id.is_not(None), catalog.active_instances())
    )
    if merchant is not None:
        stmt = stmt.where(Product.merchant == merchant)
    return np.fromiter((int(v) for v in session.scalars(stmt) if v is not None), dtype=np.int64)


def _candidate_pairs(
    index: VectorIndex, ids: npt.NDArray[np.int64], options: DuplicateOptions
) -> Iterator[tuple[int, int, float]]:
    """(vector id, vector id, cosine) for each neighbour pair at or above the threshold."""
    target = index
    if options.merchant is not None:  # neighbours among this merchant's vectors only
        target = FaissIndex.create(index.dim, "Flat")
        for start in range(0, ids.size, QUERY_CHUNK * 16):
            chunk = ids[start : start + QUERY_CHUNK * 16]
            target.add(chunk, index.reconstruct(chunk))
    k = min(options.k + 1, max(target.ntotal, 1))  # +1: a vector finds itself first
    for start in range(0, ids.size, QUERY_CHUNK):
        queries = ids[start : start + QUERY_CHUNK]
        scores, found = target.search(index.reconstruct(queries), k)
        for query, row_scores, row_ids in zip(queries, scores, found, strict=True):
            for score, other in zip(row_scores.tolist(), row_ids.tolist(), strict=True):
                if score < options.threshold:
                    break
                if other >= 0 and other != query:
                    yield int(query), int(other), float(score)


def _retired(inst: InstanceRow) -> bool:
    """An instance replaced by a run: the served index still holds it, the catalog does not."""
    return inst.retired_in_run is not None


def _ref(image: ProductImage, product: Product) -> ProductRef:
    return ProductRef(product.sku, product.title, product.merchant, product.category, image.id)


def near_duplicates(
    *, session: Session, index: VectorIndex, options: DuplicateOptions | None = None
) -> list[DuplicatePair]:
    """Product pairs with near-identical instances, best first (then by skus), at most limit.

    Instances deleted or replaced since the index was built are skipped.
    """
    options = options or DuplicateOptions()
    in_db = _scope_ids(session, options.merchant)
    ids = in_db[np.isin(in_db, index.ids())]
    edges: dict[tuple[int, int], float] = {}
    for a, b, score in _candidate_pairs(index, ids, options):
        key = (min(a, b), max(a, b))
        edges[key] = max(edges.get(key, score), score)
    rows = catalog.products_for_vector_ids(
        session=session, vector_ids=sorted({v for pair in edges for v in pair})
    )
    pairs: dict[tuple[str, str], DuplicatePair] = {}
    for (va, vb), score in edges.items():
        if va not in rows or vb not in rows or _retired(rows[va][0]) or _retired(rows[vb][0]):
            continue
        (ia, ima, pa), (ib, imb, pb) = rows[va], rows[vb]
        if pa.id == pb.id or (not options.cross_merchant and pa.merchant != pb.merchant):
            continue
        if pa.sku > pb.sku:
            (ia, ima, pa), (ib, imb, pb) = (ib, imb, pb), (ia, ima, pa)
        old = pairs.get((pa.sku, pb.sku))
        matches = old.matches + 1 if old else 1
        if old is None or score > old.score:
            pairs[(pa.sku, pb.sku)] = DuplicatePair(
                _ref(ima, pa), _ref(imb, pb), score, matches, (ia.label, ib.label)
            )
        else:
            pairs[(pa.sku, pb.sku)] = DuplicatePair(old.a, old.b, old.score, matches, old.labels)
    ranked = sorted(pairs.values(), key=lambda p: (-p.score, p.a.sku, p.b.sku))
    return ranked[: options.limit]
