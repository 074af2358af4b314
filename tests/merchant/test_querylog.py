"""The search log on SQLite and PostgreSQL: what a real search leaves there, and the figures."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from merchant.querylog import (
    LogQuery,
    parse_when,
    record_search,
    returned_skus,
    search_log,
    search_stats,
)
from merchant.tables import SearchLogEntry
from search.errors import InvalidInput
from tests.merchant.conftest import IndexedCatalog, Searched

pytestmark = pytest.mark.slow

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def test_record_search_keeps_what_the_search_found(
    db: Session, searches: list[Searched], tmp_path: Path
) -> None:
    found = searches[0]
    entry = record_search(
        session=db,
        result=found.result,
        latency_ms=812.5,
        filters={"merchant": "acme", "k": 5},
        photo=found.photo,
    )
    db.commit()
    row = db.get(SearchLogEntry, entry.id)
    assert (
        row is not None and row.merchant == "acme" and row.filters == {"merchant": "acme", "k": 5}
    )
    labels = Counter(g.instance.label for g in found.result.groups if g.instance.label != "image")
    assert row.labels == dict(labels) and row.instance_count == sum(labels.values())
    skus = returned_skus(found.result)
    assert row.top_products["skus"] == skus and row.product_count == len(set(skus)) > 0
    assert row.top_products["top1"] == [g.products[0].sku for g in found.result.groups]
    assert row.index_version == found.result.index.version
    assert row.latency_ms == 812.5 and set(row.timings_ms) == set(found.result.timings_ms)
    assert row.image_sha256 is not None and len(row.image_sha256) == 64
    assert row.image_path is None, "the photo is not kept unless configured"
    photos = tmp_path / "photos"
    kept = record_search(
        session=db, result=found.result, latency_ms=1.0, photo=found.photo, photo_dir=photos
    )
    assert kept.image_path is not None and Path(kept.image_path).read_bytes() == found.photo
    assert Path(kept.image_path).parent.parent == photos and kept.merchant is None
    for filters, merchant in [
        ({"merchant": ["birch"], "category": ["sofa"]}, "birch"),  # the search form's shape
        ({"merchant": ["acme", "birch"]}, None),  # several: no one merchant's search
        ({"merchants": ["acme"]}, "acme"),
        ({"category": ["sofa"]}, None),
    ]:
        row = record_search(session=db, result=found.result, latency_ms=1.0, filters=filters)
        assert row.merchant == merchant and row.filters == filters


def test_returned_skus_go_by_rank_across_instances(searches: list[Searched]) -> None:
    result = searches[0].result
    skus = returned_skus(result)
    assert len(skus) == len(set(skus))
    firsts = list(dict.fromkeys(g.products[0].sku for g in result.groups if g.products))
    assert skus[: len(firsts)] == firsts
    every = {hit.sku for g in result.groups for hit in g.products}
    assert set(skus) == every
    assert returned_skus(searches[3].result) == []


def _log(db: Session, searches: list[Searched]) -> list[SearchLogEntry]:
    """Nine searches over three days (none on the 21st), two merchants, one error."""
    plan = [
        (DAY + timedelta(hours=9), 0, "acme", 120.0),
        (DAY + timedelta(hours=9, minutes=30), 1, "acme", 300.0),
        (DAY + timedelta(hours=15), 3, "acme", 90.0),  # no product
        (DAY + timedelta(days=2, hours=1), 2, "birch", 450.0),
        (DAY + timedelta(days=2, hours=1), 0, None, 200.0),
        (DAY + timedelta(days=2, hours=23), 1, "Acme", 1000.0),
        (DAY + timedelta(days=2, hours=23, minutes=59), 3, None, 60.0),  # no product
        (DAY + timedelta(days=3), 2, "birch", 700.0),  # outside [20th, 22nd]
    ]
    rows = []
    for when, n, merchant, latency in plan:
        filters = {"merchant": merchant} if merchant else {}
        row = record_search(
            session=db, result=searches[n].result, latency_ms=latency, filters=filters
        )
        row.created_at = when
        rows.append(row)
    failed = SearchLogEntry(created_at=DAY + timedelta(hours=10), merchant="acme", status=500)
    failed.latency_ms = 5.0
    db.add(failed)
    db.commit()
    return [*rows, failed]


def test_search_log_pages_and_scopes(db: Session, searches: list[Searched]) -> None:
    rows = _log(db, searches)
    every, total = search_log(session=db, query=LogQuery())
    assert total == len(rows) == len(every)
    times = [r.created_at for r in every]
    assert times == sorted(times, reverse=True)
    acme, n = search_log(session=db, query=LogQuery(merchant="acme"))
    assert n == 5 and {r.merchant for r in acme} == {"acme", "Acme"}, "as filters compare"
    window = LogQuery(since=DAY + timedelta(days=2), until=DAY + timedelta(days=3))
    page, n = search_log(session=db, query=window, limit=2, offset=1)
    assert n == 4 and len(page) == 2
    assert all(window.since <= r.created_at < window.until for r in page)  # type: ignore[operator]
    assert not any(r.photo_stored for r in every)


def test_search_stats_match_a_reference(db: Session, searches: list[Searched]) -> None:
    rows = _log(db, searches)
    query = LogQuery(since=parse_when("2026-11-20"), until=parse_when("2026-11-22", end=True))
    stats = search_stats(session=db, query=query)
    inside = [r for r in rows if query.since <= r.created_at < query.until]  # type: ignore[operator]
    ok = [r for r in inside if r.status == 200]
    assert stats.searches == len(inside) == 8 and stats.errors == 1
    assert stats.zero_results == 2 and stats.zero_result_rate == pytest.approx(2 / 7)
    latencies = [r.latency_ms for r in ok]
    assert stats.latency_ms is not None
    for q, got in zip(
        (50, 95, 99),
        (stats.latency_ms.p50, stats.latency_ms.p95, stats.latency_ms.p99),
        strict=True,
    ):
        assert got == pytest.approx(float(np.percentile(latencies, q)))
    assert stats.latency_ms.max == 1000.0
    assert stats.volume == [
        (DAY, 4),
        (DAY + timedelta(days=1), 0),
        (DAY + timedelta(days=2), 4),
    ]
    labels: Counter[str] = Counter()
    products: Counter[str] = Counter()
    for r in ok:
        labels.update(r.labels)
        products.update(r.top_products["skus"])
    assert stats.top_labels == sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    for sku, n in stats.top_products:
        assert products[sku] == n and stats.titles[sku]
    assert [n for _, n in stats.top_products] == sorted(products.values(), reverse=True)[:10]


def test_search_stats_per_hour_and_merchant(
    db: Session, searches: list[Searched], indexed_catalog: IndexedCatalog
) -> None:
    _log(db, searches)
    day = LogQuery(merchant="acme", since=DAY, until=DAY + timedelta(days=1))
    hourly = search_stats(session=db, query=day, bucket="hour")
    assert len(hourly.volume) == 24 and sum(n for _, n in hourly.volume) == 4
    assert dict(hourly.volume)[DAY + timedelta(hours=9)] == 2
    assert dict(hourly.volume)[DAY + timedelta(hours=10)] == 1  # the failed one
    acme = search_stats(session=db, query=LogQuery(merchant="acme"))
    assert acme.searches == 5
    assert acme.top_products and {s for s, _ in acme.top_products} <= indexed_catalog.skus("acme")
    empty = search_stats(session=db, query=LogQuery(merchant="nobody"))
    assert empty.searches == 0 and empty.latency_ms is None and empty.zero_result_rate is None
    assert empty.volume == [] and empty.top_products == []


def test_dates() -> None:
    assert parse_when("2026-11-20") == DAY
    assert parse_when("2026-11-20", end=True) == DAY + timedelta(days=1)
    assert parse_when("2026-11-20T10:30:00") == DAY + timedelta(hours=10, minutes=30)
    assert parse_when("2026-11-20T12:30:00+02:00") == DAY + timedelta(hours=10, minutes=30)
    assert parse_when("2026-11-20T10:30:00Z") == DAY + timedelta(hours=10, minutes=30)
    for bad in ("yesterday", "2026-13-01", ""):
        with pytest.raises(InvalidInput):
            parse_when(bad)
    with pytest.raises(InvalidInput):
        LogQuery(since=datetime(2026, 1, 1))
    with pytest.raises(InvalidInput):
        LogQuery(since=DAY, until=DAY)
    with pytest.raises(InvalidInput):
        search_stats(session=None, query=LogQuery(), bucket="week")  # type: ignore[arg-type]
