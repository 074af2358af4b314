"""The admin queries on a real indexed catalog, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from indexer.sources import item_from_record
from merchant import admin
from merchant.duplicates import DuplicateOptions, near_duplicates
from merchant.errors import Forbidden
from search import catalog
from search.db import IndexRun, utcnow
from search.errors import InvalidInput, NotFound, ProductNotFound
from search.index import FaissIndex, current_version_dir, load_current, read_meta
from search.masks import decode_rle
from tests.merchant.conftest import BLANK, BROKEN, DUP_ACME, DUP_BIRCH, IndexedCatalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_index(indexed_catalog: IndexedCatalog) -> FaissIndex:
    index, _ = load_current(indexed_catalog.index_dir)
    return index


def test_catalog_stats_per_merchant_and_category(
    db: Session, indexed_catalog: IndexedCatalog
) -> None:
    stats = admin.catalog_stats(session=db)
    expected = Counter((p["merchant"], p["category"]) for p in indexed_catalog.products)
    assert {(r.merchant, r.category): r.products for r in stats.rows} == dict(expected)
    assert stats.totals.products == len(indexed_catalog.products)
    assert stats.totals.images["failed"] == 1 and stats.totals.images["no_instance"] == 1
    assert stats.totals.images["ok"] == len(indexed_catalog.products) - 2
    assert stats.totals.images["pending"] == 0
    assert stats.totals.vectors == stats.totals.instances == indexed_catalog.report.instances
    assert sum(r.instances for r in stats.rows) == stats.totals.instances

    acme = admin.catalog_stats(session=db, merchant="acme")
    assert {r.merchant for r in acme.rows} == {"acme"}
    assert acme.totals.products == len(indexed_catalog.skus("acme"))
    assert acme.totals.images["no_instance"] == 1 and acme.totals.images["failed"] == 0
    assert admin.catalog_stats(session=db, merchant="nobody").rows == []


def test_problem_products_with_reasons(db: Session) -> None:
    items, count = admin.problem_products(session=db)
    assert count == 2 and [i.sku for i in items] == [BLANK, BROKEN]
    blank, broken = items
    assert blank.status == "no_instance" and blank.reason == admin.NO_INSTANCE_REASON
    assert broken.status == "failed" and broken.reason, "the indexer's error is the reason"
    assert admin.problem_products(session=db, merchant="birch")[0] == [broken]
    failed, n = admin.problem_products(session=db, statuses=["failed"])
    assert n == 1 and failed == [broken]
    page, total = admin.problem_products(session=db, limit=1, offset=1)
    assert total == 2 and page == [broken]


def test_product_detail_has_boxes_and_masks(db: Session, indexed_catalog: IndexedCatalog) -> None:
    first = indexed_catalog.first
    product = admin.product_detail(session=db, sku=first["sku"])
    assert product.merchant == "acme" and len(product.images) == 1
    image = product.images[0]
    assert image.status == "ok" and image.instances
    assert image.width is not None and image.height is not None
    for inst in image.instances:
        mask = decode_rle(inst.mask_rle)
        assert mask.shape == (image.height, image.width) and int(mask.sum()) == inst.mask_area
        assert 0 <= inst.x0 < inst.x1 <= image.width and 0 <= inst.y0 < inst.y1 <= image.height
        assert inst.vector_id is not None and inst.vector is not None
    assert admin.product_detail(session=db, sku=BLANK).images[0].instances == []
    with pytest.raises(ProductNotFound):
        admin.product_detail(session=db, sku="no-such-sku")
    assert admin.product_merchant(session=db, sku=BROKEN) == "birch"


def test_index_status(db: Session, indexed_catalog: IndexedCatalog) -> None:
    directory = current_version_dir(indexed_catalog.index_dir)
    assert directory is not None
    meta = read_meta(directory)
    status = admin.index_status(session=db, live=meta)
    assert status.live == meta and meta.version == indexed_catalog.report.version
    assert status.build is not None and status.build.version == meta.version
    assert status.build.status == "committed" and status.build.factory == meta.factory == "Flat"
    assert status.latest_build is not None and status.latest_build.version == meta.version
    assert status.vectors == meta.count == indexed_catalog.report.vector_count
    assert status.pending_images == 0
    acme = admin.index_status(session=db, live=meta, merchant="acme")
    birch = admin.index_status(session=db, live=meta, merchant="birch")
    assert acme.vectors + birch.vectors == status.vectors and 0 < acme.vectors < status.vectors
    empty = admin.index_status(session=db, live=None)
    assert empty.live is None and empty.build is None


def test_index_runs_history(db: Session) -> None:
    before, existing = admin.list_runs(session=db)
    now = utcnow()
    old = IndexRun(feed="/feeds/a.jsonl", status="succeeded", started_at=now - timedelta(hours=2))
    old.finished_at, old.counts = now - timedelta(hours=1), {"images_processed": 3}
    old.timings_ms, old.failures = {"embed": 120.5}, {"images": [["S1", "cannot read"]]}
    new = IndexRun(feed="/feeds/b.jsonl", status="running", started_at=now, progress={"done": 1})
    db.add_all([old, new])
    db.commit()
    runs, total = admin.list_runs(session=db)
    assert total == existing + 2
    assert runs[0].id == new.id and runs[0].progress == {"done": 1}
    mine = [r for r in runs if r.id in (old.id, new.id)]
    assert [r.id for r in mine] == [new.id, old.id]
    got = admin.get_run(session=db, run_id=old.id)
    assert got.counts == {"images_processed": 3} and got.timings_ms == {"embed": 120.5}
    assert got.failures == {"images": [["S1", "cannot read"]]}
    assert admin.list_runs(session=db, limit=1)[0] == [runs[0]]
    assert [r.id for r in admin.runs_since(session=db, started=now)] == [new.id]
    with pytest.raises(NotFound):
        admin.get_run(session=db, run_id=999_999)


def _brute_force_pairs(
    session: Session, index: FaissIndex, threshold: float
) -> dict[tuple[str, str], float]:
    """Every product pair with an instance pair at or above `threshold`, in numpy."""
    ids = index.ids()
    vectors = index.reconstruct(ids).astype(np.float64)
    rows = catalog.products_for_vector_ids(session=session, vector_ids=ids.tolist())
    sims = vectors @ vectors.T
    best: dict[tuple[str, str], float] = {}
    for i, j in combinations(range(len(ids)), 2):
        a, b = rows[int(ids[i])][2], rows[int(ids[j])][2]
        if a.id != b.id and sims[i, j] >= threshold:
            key = (min(a.sku, b.sku), max(a.sku, b.sku))
            best[key] = max(best.get(key, -1.0), float(sims[i, j]))
    return best


def test_near_duplicates_match_brute_force(
    db: Session, live_index: FaissIndex, indexed_catalog: IndexedCatalog
) -> None:
    first = indexed_catalog.first["sku"]
    pairs = near_duplicates(session=db, index=live_index, options=DuplicateOptions(k=50))
    found = {(p.a.sku, p.b.sku): p.score for p in pairs}
    reference = _brute_force_pairs(db, live_index, 0.95)
    assert found.keys() == reference.keys()
    for key, score in found.items():
        assert score == pytest.approx(reference[key], abs=1e-4)
    planted = {tuple(sorted(p)) for p in [(first, DUP_ACME), (first, DUP_BIRCH)]}
    planted.add((DUP_ACME, DUP_BIRCH))
    assert planted <= found.keys()
    assert all(score >= 0.95 for score in found.values())
    assert all(p.a.sku < p.b.sku for p in pairs)
    scores = [p.score for p in pairs]
    assert scores == sorted(scores, reverse=True)


def test_near_duplicates_scope(
    db: Session, live_index: FaissIndex, indexed_catalog: IndexedCatalog
) -> None:
    first = indexed_catalog.first["sku"]
    acme = near_duplicates(session=db, index=live_index, options=DuplicateOptions(merchant="acme"))
    assert (min(first, DUP_ACME), max(first, DUP_ACME)) in {(p.a.sku, p.b.sku) for p in acme}
    assert all(p.a.merchant == p.b.merchant == "acme" for p in acme)
    birch = near_duplicates(
        session=db, index=live_index, options=DuplicateOptions(merchant="birch")
    )
    assert all(p.a.merchant == p.b.merchant == "birch" for p in birch)
    assert DUP_BIRCH not in {s for p in birch for s in (p.a.sku, p.b.sku)}, "its twin is acme's"
    same = near_duplicates(
        session=db, index=live_index, options=DuplicateOptions(cross_merchant=False)
    )
    assert same and all(p.a.merchant == p.b.merchant for p in same)
    every = near_duplicates(session=db, index=live_index)
    assert any(p.a.merchant != p.b.merchant for p in every)


def test_near_duplicates_are_not_similar_products(db: Session, live_index: FaissIndex) -> None:
    strict = near_duplicates(session=db, index=live_index, options=DuplicateOptions(k=50))
    loose = near_duplicates(
        session=db, index=live_index, options=DuplicateOptions(threshold=0.5, k=50, limit=1000)
    )
    assert len(loose) > len(strict) * 2, "look-alikes far outnumber duplicates"
    assert (
        near_duplicates(session=db, index=live_index, options=DuplicateOptions(limit=1))
        == strict[:1]
    )
    with pytest.raises(InvalidInput):
        DuplicateOptions(threshold=1.5)


def test_deleted_products_leave_the_duplicates(
    db: Session, live_index: FaissIndex, indexed_catalog: IndexedCatalog
) -> None:
    freed = admin.delete_product(session=db, sku=DUP_ACME)
    db.commit()
    assert freed and all(int(v) in live_index for v in freed), "still in the live index"
    pairs = near_duplicates(session=db, index=live_index)
    assert DUP_ACME not in {s for p in pairs for s in (p.a.sku, p.b.sku)}
    with pytest.raises(ProductNotFound):
        admin.delete_product(session=db, sku=DUP_ACME)


def test_upsert_product_queues_a_new_image(db: Session, indexed_catalog: IndexedCatalog) -> None:
    first, second = indexed_catalog.products[:2]
    base = indexed_catalog.feed.parent
    same = admin.upsert_product(session=db, item=item_from_record(first, base))
    assert not same.created and not same.changed and not same.image_queued
    renamed = admin.upsert_product(session=db, item=item_from_record({**first, "title": "x"}, base))
    assert renamed.changed and not renamed.image_queued
    moved = {**first, "image": second["image"]}
    queued = admin.upsert_product(session=db, item=item_from_record(moved, base))
    assert queued.changed and queued.image_queued
    new = {"sku": "NEW-1", "title": "new", "category": "sofa", "image": second["image"]}
    created = admin.upsert_product(session=db, item=item_from_record(new, base))
    assert created.created and created.image_queued
    db.commit()
    assert admin.index_status(session=db, live=None).pending_images == 2
    assert admin.product_detail(session=db, sku="NEW-1").images[0].status == "pending"


def test_image_refs_outside_the_allowed_folders(indexed_catalog: IndexedCatalog) -> None:
    image = indexed_catalog.first["image"]
    roots = [indexed_catalog.feed.parent / "nowhere", Path(image).parent]
    admin.check_image_ref(image, roots)
    admin.check_image_ref("https://example.com/a.jpg", [])
    for ref in ("/etc/passwd", str(indexed_catalog.db_url).removeprefix("sqlite:///")):
        with pytest.raises(Forbidden):
            admin.check_image_ref(ref, roots)
    with pytest.raises(Forbidden):  # no escaping a root with ..
        admin.check_image_ref(f"{roots[1]}/../../../etc/passwd", roots)
