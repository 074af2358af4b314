"""search.catalog query functions, each on SQLite and PostgreSQL (the `session` fixture)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, func, select, update
from sqlalchemy.orm import Session

from indexer.sources import FeedItem
from search import catalog
from search.catalog import NewInstance
from search.db import Counter, InstanceRow, Product, ProductImage
from search.errors import InvalidInput, NotFound, ProductNotFound
from search.types import Box

RLE = {"size": [4, 4], "counts": "04L0"}


def item(sku: str, **fields: Any) -> FeedItem:
    values: dict[str, Any] = {
        "title": f"Product {sku}",
        "category": "sofa",
        "image": f"/catalog/{sku}.jpg",
    }
    values.update(fields)
    return FeedItem(sku=sku, **values)


def new_instance(
    vector_id: int | None, *, embedder: str = "emb", label: str = "sofa"
) -> NewInstance:
    return NewInstance(
        label=label,
        score=0.75,
        box=Box(1.0, 2.0, 3.0, 4.0),
        mask_rle=RLE,
        mask_area=5,
        embedder=embedder,
        vector_id=vector_id,
    )


def primary(session: Session, sku: str) -> ProductImage:
    image = catalog.get_product(session=session, sku=sku).primary_image
    assert image is not None
    return image


def index_image(session: Session, sku: str, n: int = 1, embedder: str = "emb") -> list[int]:
    """What the indexer does for one image: allocate ids, store instances, mark it ok."""
    image = primary(session, sku)
    ids = catalog.next_vector_ids(session=session, n=n)
    instances = [new_instance(vid, embedder=embedder) for vid in ids]
    catalog.replace_instances(session=session, image_id=image.id, instances=instances)
    catalog.set_image_result(session=session, image_id=image.id, status="ok", content_hash="ab")
    return ids


@pytest.fixture
def three(session: Session) -> Session:
    catalog.upsert_products(session=session, items=[item("A"), item("B"), item("C")])
    session.commit()
    return session


# --- products --------------------------------------------------------------------------------


def test_upsert_inserts_products_with_a_pending_image(session: Session) -> None:
    feed = [
        item("A", price=12.5, currency="EUR", in_stock=True, extra={"size": "80 cm"}),
        item("B", merchant="m", url="https://shop.example/b"),
    ]
    counts = catalog.upsert_products(session=session, items=feed)
    session.commit()
    assert (counts.inserted, counts.updated, counts.unchanged) == (2, 0, 0)
    assert counts.images_changed == 2
    session.expire_all()
    a = catalog.get_product(session=session, sku="A")
    assert (a.title, a.category, a.price, a.currency, a.in_stock) == (
        "Product A",
        "sofa",
        12.5,
        "EUR",
        True,
    )
    assert a.extra == {"size": "80 cm"}
    assert a.created_at.tzinfo is not None
    image = primary(session, "A")
    assert (image.position, image.status, image.source, image.resolved) == (
        0,
        "pending",
        "/catalog/A.jpg",
        "/catalog/A.jpg",
    )


def test_upsert_again_counts_unchanged_and_updated(three: Session) -> None:
    session = three
    counts = catalog.upsert_products(
        session=session,
        items=[item("A"), item("B", title="New title"), item("C", extra={"k": 1}), item("D")],
    )
    session.commit()
    assert (counts.inserted, counts.updated, counts.unchanged, counts.images_changed) == (
        1,
        2,
        1,
        1,
    )
    session.expire_all()
    assert catalog.get_product(session=session, sku="B").title == "New title"
    assert catalog.get_product(session=session, sku="C").extra == {"k": 1}


def test_upsert_requeues_a_changed_image_only(three: Session) -> None:
    session = three
    index_image(session, "A")
    index_image(session, "B")
    session.commit()
    same_file = FeedItem(
        sku="B", title="Product B", category="sofa", image="b.jpg", image_ref="/catalog/B.jpg"
    )
    counts = catalog.upsert_products(
        session=session, items=[item("A", image="https://cdn.example/a2.jpg"), same_file]
    )
    session.commit()
    assert (counts.updated, counts.images_changed) == (2, 1)
    a, b = primary(session, "A"), primary(session, "B")
    assert (a.status, a.resolved, a.content_hash) == ("pending", "https://cdn.example/a2.jpg", "ab")
    assert (b.status, b.source) == ("ok", "b.jpg")


def test_upsert_keeps_the_first_of_repeated_skus(session: Session) -> None:
    counts = catalog.upsert_products(
        session=session, items=[item("A", title="first"), item("A", title="second")]
    )
    assert counts.inserted == 1
    assert catalog.get_product(session=session, sku="A").title == "first"


def test_upsert_in_chunks(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "CHUNK", 3)
    items = [item(f"S{i:02d}") for i in range(10)]
    assert catalog.upsert_products(session=session, items=items).inserted == 10
    assert catalog.upsert_products(session=session, items=items).unchanged == 10
    skus = [f"S{i:02d}" for i in (9, 0, 5)]
    assert [p.sku for p in catalog.get_products(session=session, skus=skus)] == skus


def test_get_products_keeps_order_and_skips_unknown(three: Session) -> None:
    products = catalog.get_products(session=three, skus=["C", "nope", "A", "C"])
    assert [p.sku for p in products] == ["C", "A"]
    assert catalog.get_products(session=three, skus=[]) == []


def test_get_product_raises_for_unknown_sku(three: Session) -> None:
    assert catalog.get_product(session=three, sku="B").sku == "B"
    with pytest.raises(ProductNotFound, match="nope"):
        catalog.get_product(session=three, sku="nope")


def test_remove_products_not_in_frees_vector_ids(three: Session) -> None:
    session = three
    a_ids = index_image(session, "A", n=2)
    index_image(session, "B", n=1)
    session.commit()
    freed = catalog.remove_products_not_in(session=session, skus=["B"])
    session.commit()
    assert freed == a_ids
    assert [p.sku for p in session.scalars(select(Product))] == ["B"]
    assert session.scalar(select(func.count()).select_from(ProductImage)) == 1
    assert catalog.vector_ids(session=session) == [a_ids[-1] + 1]


def test_remove_products_not_in_refuses_to_empty_the_catalog(three: Session) -> None:
    with pytest.raises(InvalidInput):
        catalog.remove_products_not_in(session=three, skus=[])
    assert catalog.remove_products_not_in(session=three, skus=[], allow_empty=True) == []
    assert three.scalar(select(func.count()).select_from(Product)) == 0


def test_remove_products(three: Session) -> None:
    ids = index_image(three, "C", n=3)
    assert catalog.remove_products(session=three, skus=["C", "unknown"]) == ids
    assert catalog.get_products(session=three, skus=["A", "B", "C"])[-1].sku == "B"


# --- images and instances --------------------------------------------------------------------


def test_images_to_process(three: Session) -> None:
    session = three
    assert [im.product.sku for im in catalog.images_to_process(session=session)] == ["A", "B", "C"]
    index_image(session, "A", embedder="old")
    catalog.set_image_result(
        session=session, image_id=primary(session, "B").id, status="failed", error="boom"
    )
    session.commit()
    assert [im.product.sku for im in catalog.images_to_process(session=session)] == ["C"]
    retry = catalog.images_to_process(session=session, retry_failed=True)
    assert [im.product.sku for im in retry] == ["B", "C"]
    stale = catalog.images_to_process(session=session, embedder="new")
    assert [im.product.sku for im in stale] == ["A", "C"]
    assert catalog.images_to_process(session=session, embedder="old") == stale[1:]


def test_images_to_process_pages(three: Session) -> None:
    first = catalog.images_to_process(session=three, limit=2)
    rest = catalog.images_to_process(session=three, after_id=first[-1].id, limit=2)
    assert [im.product.sku for im in first + rest] == ["A", "B", "C"]


def test_reset_images(three: Session) -> None:
    index_image(three, "A")
    assert catalog.reset_images(session=three) == 3
    assert primary(three, "A").status == "pending"


def test_set_image_result(three: Session) -> None:
    image = primary(three, "A")
    catalog.set_image_result(
        session=three, image_id=image.id, status="ok", content_hash="f" * 64, width=500, height=400
    )
    three.commit()
    three.expire_all()
    image = primary(three, "A")
    assert (image.status, image.content_hash, image.width, image.height, image.error) == (
        "ok",
        "f" * 64,
        500,
        400,
        None,
    )
    with pytest.raises(InvalidInput):
        catalog.set_image_result(session=three, image_id=image.id, status="done")
    with pytest.raises(NotFound):
        catalog.set_image_result(session=three, image_id=10_000, status="ok")


def test_replace_instances(three: Session) -> None:
    session = three
    image = primary(session, "A")
    rows = catalog.replace_instances(
        session=session,
        image_id=image.id,
        instances=[new_instance(1), new_instance(2, label="chair")],
    )
    session.commit()
    assert all(row.id is not None for row in rows)
    assert catalog.image_vector_ids(session=session, image_ids=[image.id]) == [1, 2]
    # the same vector id again (an unchanged image) and bytes RLE counts, as pycocotools writes them
    again = NewInstance(
        "sofa", 0.5, Box(0, 0, 1, 1), {"size": [4, 4], "counts": b"04L0"}, 5, "emb", 2
    )
    catalog.replace_instances(session=session, image_id=image.id, instances=[again])
    session.commit()
    session.expire_all()
    [row] = primary(session, "A").instances
    assert (row.vector_id, row.label, row.mask_rle) == (2, "sofa", RLE)
    assert (row.x0, row.y0, row.x1, row.y1) == (0.0, 0.0, 1.0, 1.0)
    assert catalog.replace_instances(session=session, image_id=image.id, instances=[]) == []
    assert catalog.image_vector_ids(session=session, image_ids=[image.id]) == []
    with pytest.raises(NotFound):
        catalog.replace_instances(session=session, image_id=10_000, instances=[])


# --- vector ids ------------------------------------------------------------------------------


def test_next_vector_ids_are_monotonic_and_never_reused(three: Session) -> None:
    session = three
    assert catalog.next_vector_ids(session=session, n=3) == [1, 2, 3]
    assert catalog.next_vector_ids(session=session, n=0) == []
    ids = index_image(session, "A", n=2)
    assert ids == [4, 5]
    catalog.remove_products(session=session, skus=["A"])
    session.commit()
    assert catalog.next_vector_ids(session=session, n=1) == [6]
    with pytest.raises(InvalidInput):
        catalog.next_vector_ids(session=session, n=-1)


def test_next_vector_ids_across_sessions(session_factory: Any) -> None:
    with session_factory() as first:
        a = catalog.next_vector_ids(session=first, n=2)
        first.commit()
    with session_factory() as second:
        b = catalog.next_vector_ids(session=second, n=2)
        second.commit()
    assert a + b == [1, 2, 3, 4]


def test_next_vector_ids_without_counter_row(three: Session) -> None:
    index_image(three, "A", n=4)
    three.execute(delete(Counter))
    assert catalog.next_vector_ids(session=three, n=2) == [5, 6]
    assert catalog.next_vector_ids(session=three, n=1) == [7]


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_products_for_vector_ids_in_one_query(three: Session, statements: list[str]) -> None:
    session = three
    a_ids = index_image(session, "A", n=2)
    b_ids = index_image(session, "B", n=1)
    session.commit()
    statements.clear()
    rows = catalog.products_for_vector_ids(
        session=session, vector_ids=[*a_ids, *b_ids, 999, a_ids[0]]
    )
    assert len(statements) == 1
    assert set(rows) == {*a_ids, *b_ids}
    inst, image, product = rows[b_ids[0]]
    assert (inst.vector_id, image.id, product.sku) == (b_ids[0], inst.image_id, "B")
    assert rows[a_ids[1]][2].sku == "A"
    assert catalog.products_for_vector_ids(session=session, vector_ids=[]) == {}


def test_vector_ids(three: Session) -> None:
    ids = index_image(three, "A", n=2, embedder="x") + index_image(three, "B", n=1, embedder="y")
    assert catalog.vector_ids(session=three) == ids
    assert catalog.vector_ids(session=three, embedder="y") == ids[2:]


# --- builds and counts -----------------------------------------------------------------------


def test_builds(session: Session) -> None:
    assert catalog.latest_committed_build(session=session) is None
    first = catalog.start_build(session=session, version="v1", embedder="e1", dim=8, factory="Flat")
    assert (first.status, first.finished_at) == ("running", None)
    catalog.finish_build(session=session, build_id=first.id, vector_count=10, counts={"ok": 3})
    failed = catalog.start_build(
        session=session, version="v2", embedder="e1", dim=8, factory="Flat"
    )
    catalog.finish_build(session=session, build_id=failed.id, vector_count=0, error="disk full")
    other = catalog.start_build(session=session, version="v3", embedder="e2", dim=4, factory="HNSW")
    session.commit()
    assert (failed.status, failed.error, failed.indexed_at) == ("failed", "disk full", None)
    latest = catalog.latest_committed_build(session=session)
    assert latest is not None and latest.version == "v1"
    assert (latest.status, latest.vector_count, latest.counts) == ("committed", 10, {"ok": 3})
    assert latest.indexed_at is not None and latest.indexed_at <= datetime.now(UTC)
    assert catalog.latest_committed_build(session=session, embedder="e2") is None
    assert catalog.get_build(session=session, version="v3") is other
    assert catalog.get_build(session=session, version="v9") is None
    assert catalog.fail_running_builds(session=session) == 1
    assert (other.status, other.error) == ("failed", "abandoned")
    with pytest.raises(NotFound):
        catalog.finish_build(session=session, build_id=10_000, vector_count=0)


def test_latest_committed_build_is_the_last_finished(session: Session) -> None:
    for version in ("v1", "v2"):
        build = catalog.start_build(
            session=session, version=version, embedder="e", dim=8, factory="Flat"
        )
        catalog.finish_build(session=session, build_id=build.id, vector_count=1)
    latest = catalog.latest_committed_build(session=session, embedder="e")
    assert latest is not None and latest.version == "v2"


def test_catalog_counts(three: Session) -> None:
    index_image(three, "A", n=2)
    catalog.replace_instances(
        session=three, image_id=primary(three, "B").id, instances=[new_instance(None)]
    )
    counts = catalog.catalog_counts(session=three)
    assert counts.products == 3
    assert counts.images == {"pending": 2, "ok": 1, "failed": 0, "no_instance": 0}
    assert (counts.instances, counts.vectors) == (3, 2)


def test_replaced_instances_are_retired_until_purged(three: Session) -> None:
    session = three
    old = index_image(session, "A", n=2)
    image = primary(session, "A")
    new = catalog.next_vector_ids(session=session, n=1)
    catalog.replace_instances(
        session=session, image_id=image.id, instances=[new_instance(new[0])], retire_run=7
    )
    session.commit()
    assert catalog.vector_ids(session=session) == new
    assert catalog.image_vector_ids(session=session, image_ids=[image.id]) == new
    resolved = catalog.products_for_vector_ids(session=session, vector_ids=old + new)
    assert set(resolved) == {*old, *new}, "the version still served resolves retired ids"
    counts = catalog.catalog_counts(session=session)
    assert (counts.instances, counts.vectors, counts.retired) == (1, 1, 2)
    assert catalog.purge_retired(session=session, before_run=7) == 0
    assert catalog.purge_retired(session=session, before_run=8) == 2
    assert catalog.catalog_counts(session=session).retired == 0
    assert catalog.vector_stats(session=session, embedder="emb") == (0, 0)  # no vector bytes


def test_scan_images_says_which_images_need_processing(three: Session) -> None:
    session = three
    index_image(session, "A", embedder="emb")
    b = primary(session, "B")
    catalog.set_image_result(session=session, image_id=b.id, status="failed", error="boom")
    session.commit()
    states = catalog.scan_images(session=session, embedder="emb")
    assert [(s.sku, s.status, s.needs_processing) for s in states] == [
        ("A", "ok", False),
        ("B", "failed", True),
        ("C", "pending", True),
    ]
    assert states[0].content_hash == "ab" and states[0].resolved == "/catalog/A.jpg"
    assert catalog.scan_images(session=session, embedder="other")[0].needs_processing
    # an "ok" image whose instances were all retired has nothing in the index: redo it
    session.execute(update(InstanceRow).values(retired_in_run=1))
    assert catalog.scan_images(session=session, embedder="emb")[0].needs_processing
    page = catalog.scan_images(session=session, embedder="emb", after_id=states[0].image_id)
    assert [s.sku for s in page] == ["B", "C"]
    assert catalog.scan_images(session=session, embedder="emb", limit=1)[0].sku == "A"


def test_update_image_source_and_skus_not_in(three: Session) -> None:
    image = primary(three, "A")
    catalog.update_image_source(
        session=three, image_id=image.id, source_stamp="file:3:9", content_hash="cd"
    )
    catalog.update_image_source(
        session=three, image_id=image.id, source_stamp="file:3:10", content_hash=None
    )
    three.commit()
    three.expire_all()
    image = primary(three, "A")
    assert (image.source_stamp, image.content_hash) == ("file:3:10", "cd")
    assert catalog.skus_not_in(session=three, skus=["B", "X"]) == ["A", "C"]


def test_vector_stats_count_active_vectors_of_one_embedder(three: Session) -> None:
    image = primary(three, "A")
    rows = [replace(new_instance(vid), vector=b"\0" * 16) for vid in (3, 9)]
    catalog.replace_instances(session=three, image_id=image.id, instances=rows)
    assert catalog.vector_stats(session=three, embedder="emb") == (2, 9)
    assert catalog.vector_stats(session=three, embedder="other") == (0, 0)


def test_instance_rows_reference_their_image(three: Session) -> None:
    index_image(three, "C")
    row = three.scalars(select(InstanceRow)).one()
    assert row.image.product.sku == "C"
