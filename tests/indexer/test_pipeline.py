"""The indexer end to end on real models and a few real catalog images, on SQLite and
PostgreSQL: incremental runs equal a full run, failures are recorded and the run goes on, the
run history, version folders, the lock, and resuming an interrupted --full run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from indexer.doctor import Expected, run_doctor
from indexer.lock import database_lock, file_lock
from indexer.pipeline import IndexOptions, publish_index, reindex_products, run_index
from indexer.stages import IndexModels
from search import catalog
from search.config import Settings
from search.db import IndexRun, ProductImage, make_engine, make_session_factory
from search.errors import IndexerBusy
from search.index import list_versions
from tests.indexer.conftest import FeedDir, make_settings, read_state

pytestmark = pytest.mark.slow

OPTIONS = IndexOptions(progress=False, batch_size=4)


def _runs(db_url: str) -> list[IndexRun]:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(IndexRun).order_by(IndexRun.id)))
    finally:
        engine.dispose()


def _doctor_ok(settings: Any, models: IndexModels) -> None:
    expected = Expected(models.embedder.name, models.embedder.dim)
    report = run_doctor(settings, expected)
    assert report.exit_code == 0, report.summary()


@pytest.mark.parametrize("settings", ["faiss", "milvus"], indirect=True)
def test_incremental_run_gives_the_same_index_as_a_full_run(
    settings: Settings,
    tmp_path: Path,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:7]]
    first = run_index(feed.write(skus[:6]), settings=settings, options=OPTIONS, models=index_models)
    assert (first.status, first.images_processed, first.products.inserted) == ("succeeded", 6, 6)
    before = read_state(settings)
    before.assert_consistent()

    # remove skus[0], change the photo of skus[1], retitle skus[2], add skus[6]
    feed.replace_image(skus[1], with_sku=skus[6])
    path = feed.write(skus[1:7], **{skus[2]: {"title": "Renamed"}})
    second = run_index(path, settings=settings, options=OPTIONS, models=index_models)
    assert second.status == "succeeded", second.summary()
    assert (second.images_processed, second.images_unchanged) == (2, 4)
    assert (second.products.inserted, second.products.updated) == (1, 1)
    assert second.removed_products == 1
    after = read_state(settings)
    after.assert_consistent()
    assert after.version != before.version
    assert skus[0] not in after.vectors
    assert np.allclose(after.vectors[skus[1]], after.vectors[skus[6]], atol=1e-4)
    for sku in skus[2:6]:  # unchanged images keep their vectors and ids
        assert np.array_equal(after.vectors[sku], before.vectors[sku])

    reference = make_settings(
        f"sqlite:///{tmp_path / 'reference.db'}", tmp_path / "reference", like=settings
    )
    from search.db import migrate

    migrate(reference.database_url)
    full = run_index(
        path, settings=reference, options=replace(OPTIONS, full=True), models=index_models
    )
    assert full.images_processed == 6
    after.assert_same_as(read_state(reference))
    _doctor_ok(settings, index_models)

    # nothing changed: no image is processed and the published version is kept
    third = run_index(path, settings=settings, options=OPTIONS, models=index_models)
    assert (third.images_processed, third.images_unchanged, third.new_version) == (0, 6, False)
    assert third.version == after.version


def test_bad_rows_and_broken_images_are_recorded_and_the_run_goes_on(
    settings: Settings,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:4]]
    run_index(feed.write(skus), settings=settings, options=OPTIONS, models=index_models)

    feed.image_path(skus[1]).write_bytes(b"not a jpeg at all")
    path = feed.write(skus[1:])  # skus[0] is missing now, but so is a line: keep it
    with path.open("a") as lines:
        lines.write('{"sku": "broken", "title": "no image field", "category": "sofa"}\n')
        lines.write("{not json\n")
    report = run_index(path, settings=settings, options=OPTIONS, models=index_models)
    assert report.status == "partial" and report.exit_code == 3
    assert [e["line"] for e in report.problems.feed] == [4, 5]
    assert "missing required field 'image'" in report.problems.feed[0]["reason"]
    assert report.removed_products == 0
    assert any("bad lines" in note for note in report.problems.notes)
    [(sku, reason)] = report.image_failures
    assert sku == skus[1] and "not a recognised image" in reason
    state = read_state(settings)
    state.assert_consistent()
    assert skus[0] in state.vectors, "a feed with bad lines removes nothing"
    assert len(state.vectors[skus[1]]) == 1, "a broken image keeps its last good vectors"

    [*_, last] = _runs(settings.database_url)
    assert (last.status, last.version, last.pid) == ("partial", report.version, last.pid)
    assert last.failures["feed_total"] == 2 and last.failures["images_total"] == 1
    assert last.failures["images"][0]["sku"] == skus[1]
    assert last.counts["images_failed"] == 1 and last.counts["feed_errors"] == 2
    assert {"feed", "read", "write", "publish"} <= set(last.timings_ms)
    assert last.progress["done"] == last.progress["total"] == 4
    assert last.finished_at is not None and last.finished_at >= last.started_at

    # an empty feed is refused as a truncated one: nothing is removed
    feed.path.write_text("")
    empty = run_index(feed.path, settings=settings, options=OPTIONS, models=index_models)
    assert empty.status == "partial" and empty.removed_products == 0
    assert "none removed" in empty.problems.notes[0]


def test_versions_are_pruned_and_one_run_at_a_time(
    settings: Settings,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:3]]
    published = []
    for n in (1, 2, 3):
        report = run_index(
            feed.write(skus[:n]), settings=settings, options=OPTIONS, models=index_models
        )
        published.append(report.version)
    assert list_versions(settings.index.dir) == published[1:]

    with file_lock(settings.index.dir / "indexer.lock"), pytest.raises(IndexerBusy):
        run_index(feed.path, settings=settings, options=OPTIONS, models=index_models)
    engine = make_engine(settings.database_url)
    try:
        if engine.dialect.name == "postgresql":  # another host: only the database lock
            with database_lock(engine), pytest.raises(IndexerBusy):
                run_index(feed.path, settings=settings, options=OPTIONS, models=index_models)
    finally:
        engine.dispose()
    assert [r.status for r in _runs(settings.database_url)] == ["succeeded"] * 3


class _StopAfter:
    """An embedder that raises KeyboardInterrupt (a Ctrl-C) on its `calls`-th batch."""

    def __init__(self, inner: Any, calls: int) -> None:
        self.inner, self.calls = inner, calls
        self.name, self.dim = inner.name, inner.dim

    def embed(self, images: Any) -> Any:
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.inner.embed(images)


def test_an_interrupted_full_run_is_resumed_by_the_next_one(
    settings: Settings,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:6]]
    path = feed.write(skus)
    run_index(path, settings=settings, options=OPTIONS, models=index_models)
    full = replace(OPTIONS, full=True, batch_size=2, model_batch=2)
    stopping = IndexModels(index_models.segmenter, _StopAfter(index_models.embedder, 2))
    with pytest.raises(KeyboardInterrupt):
        run_index(path, settings=settings, options=full, models=stopping)
    assert _runs(settings.database_url)[-1].status == "interrupted"
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        pending = session.scalars(select(ProductImage).where(ProductImage.status == "pending"))
        assert len(list(pending)) == 4
    engine.dispose()

    resumed = run_index(path, settings=settings, options=full, models=index_models)
    assert (resumed.status, resumed.images_processed, resumed.images_unchanged) == (
        "succeeded",
        4,
        2,
    )
    read_state(settings).assert_consistent()
    _doctor_ok(settings, index_models)


def test_reindex_some_products_now_and_publish_after_a_delete(
    settings: Settings,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:3]]
    first = run_index(feed.write(skus), settings=settings, options=OPTIONS, models=index_models)
    again = reindex_products([skus[1]], settings=settings, options=OPTIONS, models=index_models)
    assert (again.status, again.images_processed, again.images_unchanged) == ("succeeded", 1, 0)
    assert again.version != first.version and again.vector_count == 3
    state = read_state(settings)
    state.assert_consistent()
    assert state.db_ids[-1] == 4, "the product got a new vector id"

    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session, session.begin():
        catalog.remove_products(session=session, skus=[skus[0]])
    engine.dispose()
    published = publish_index(settings=settings, options=OPTIONS, models=index_models)
    assert (published.status, published.vector_count, published.images_total) == ("succeeded", 2, 0)
    read_state(settings).assert_consistent()
    assert [r.feed for r in _runs(settings.database_url)][1:] == [f"products: {skus[1]}", "publish"]


def test_a_csv_feed_with_relative_and_absolute_paths(
    tmp_path: Path, feed: FeedDir, catalog_rows: list[dict[str, Any]], index_models: IndexModels
) -> None:
    feed.write([row["sku"] for row in catalog_rows[:2]])  # copies the two photos
    a, b = catalog_rows[:2]
    csv = tmp_path / "feed" / "feed.csv"
    csv.write_text(
        "sku,title,category,image,price\n"
        f"{a['sku']},{a['title']},{a['category']},images/{a['sku']}.jpg,10\n"
        f'{b["sku"]},"{b["title"]}, with a comma",{b["category"]},'
        f"{feed.image_path(b['sku'])},12.5\n"
    )
    settings = make_settings(f"sqlite:///{tmp_path / 'csv.db'}", tmp_path)
    from search.db import migrate

    migrate(settings.database_url)
    report = run_index(csv, settings=settings, options=OPTIONS, models=index_models)
    assert (report.status, report.images_processed, report.vector_count) == ("succeeded", 2, 2)
    read_state(settings).assert_consistent()
