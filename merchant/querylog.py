"""The search log: one row per search (`record_search`), and the figures read from it.

What is kept of a search: when, the merchant filter and other filters, the index version,
how many instances were detected and their labels, the products returned (skus, best
first), latency and per-stage timings, and the sha256 of the uploaded bytes. The photo
itself is written to disk only when the caller passes `photo_dir` (a setting, off by
default).

The figures (`search_stats`) are computed in Python over the rows of the date range, so
they are the same on SQLite and PostgreSQL (percentiles by linear interpolation, as
`numpy.percentile`). None of these functions commits: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from merchant.tables import SearchLogEntry
from search import catalog
from search.db import Product
from search.errors import InvalidInput
from search.service import WHOLE_IMAGE_LABEL
from search.types import SearchResult

log = logging.getLogger(__name__)

TOP_SKUS = 50  # products kept per logged search
MAX_FILLED_BUCKETS = 10_000  # above this, empty buckets are not filled in
# Labels of groups that no detector found: the whole-photo fallback and a user-drawn region.
NOT_DETECTED = frozenset({WHOLE_IMAGE_LABEL, "region"})
Bucket = Literal["hour", "day"]
BUCKETS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


# --- writing ---------------------------------------------------------------------------------


def returned_skus(result: SearchResult, limit: int = TOP_SKUS) -> list[str]:
    """The distinct skus of a result, by rank across instances (every group's best first)."""
    columns = [[hit.sku for hit in group.products] for group in result.groups]
    seen: dict[str, None] = {}
    for rank in range(max((len(c) for c in columns), default=0)):
        for column in columns:
            if rank < len(column):
                seen.setdefault(column[rank], None)
    return list(seen)[:limit]


def _detected_labels(result: SearchResult) -> dict[str, int]:
    return dict(
        Counter(g.instance.label for g in result.groups if g.instance.label not in NOT_DETECTED)
    )


def _merchant_of(filters: Mapping[str, Any]) -> str | None:
    """The one merchant a search was limited to: `merchant` or `merchants`, as a string or a
    one-item list; None for no merchant filter or several merchants."""
    for key in ("merchant", "merchants"):
        value = filters.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list | tuple | set | frozenset) and len(value) == 1:
            (only,) = value
            return only if isinstance(only, str) else None
    return None


def store_photo(photo: bytes, photo_dir: Path) -> Path:
    """Write `photo` under `photo_dir/<sha[:2]>/<sha256>` (atomically, once); its path."""
    sha = hashlib.sha256(photo).hexdigest()
    target = photo_dir / sha[:2] / sha
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".photo.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(photo)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def record_search(
    *,
    session: Session,
    result: SearchResult,
    latency_ms: float,
    filters: Mapping[str, Any] | None = None,
    photo: bytes | None = None,
    photo_dir: Path | None = None,
) -> SearchLogEntry:
    """Add one search to the log and return the row (flushed, not committed).

    `filters` are the search's filters as asked, JSON-ready (a `merchant` filter with one
    merchant also fills the merchant column); `photo`, the uploaded bytes, is hashed, and
    written under `photo_dir` only when that is given.
    """
    filters = dict(filters or {})
    skus = returned_skus(result)
    labels = _detected_labels(result)
    entry = SearchLogEntry(
        merchant=_merchant_of(filters),
        filters=filters,
        index_version=result.index.version,
        instance_count=sum(labels.values()),
        labels=labels,
        top_products={
            "skus": skus,
            "top1": [g.products[0].sku for g in result.groups if g.products],
        },
        product_count=len(skus),
        latency_ms=float(latency_ms),
        timings_ms={name: round(float(ms), 2) for name, ms in result.timings_ms.items()},
        image_sha256=hashlib.sha256(photo).hexdigest() if photo is not None else None,
        image_path=str(store_photo(photo, photo_dir)) if photo and photo_dir else None,
        status=200,
    )
    session.add(entry)
    session.flush()
    return entry


# --- reading ---------------------------------------------------------------------------------


def parse_when(text: str, *, end: bool = False) -> datetime:
    """An ISO date or datetime, in UTC (naive means UTC). A date alone is its midnight, or
    with `end` the next midnight, so that `[from, to)` covers the `to` day too."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1) if end else moment
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput(f"not an ISO date or datetime: {text!r}") from exc
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class LogQuery:
    """Which searches: one merchant's (None: all) in [since, until), either end open."""

    merchant: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for value in (self.since, self.until):
            if value is not None and value.tzinfo is None:
                raise InvalidInput("dates must be timezone-aware (UTC)")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise InvalidInput("the end of the date range must come after its start")


def _where(stmt: Select[Any], query: LogQuery) -> Select[Any]:
    if query.merchant is not None:  # search filters compare merchants case-insensitively
        stmt = stmt.where(func.lower(SearchLogEntry.merchant) == query.merchant.lower())
    if query.since is not None:
        stmt = stmt.where(SearchLogEntry.created_at >= query.since)
    if query.until is not None:
        stmt = stmt.where(SearchLogEntry.created_at < query.until)
    return stmt


@dataclass(frozen=True)
class LoggedSearch:
    """One search as the log shows it."""

    id: int
    created_at: datetime
    merchant: str | None
    filters: dict[str, Any]
    index_version: str | None
    instance_count: int
    labels: dict[str, int]
    skus: list[str]
    product_count: int
    latency_ms: float
    timings_ms: dict[str, float]
    status: int
    photo_stored: bool


def _logged(row: SearchLogEntry) -> LoggedSearch:
    return LoggedSearch(
        id=row.id,
        created_at=row.created_at,
        merchant=row.merchant,
        filters=dict(row.filters or {}),
        index_version=row.index_version,
        instance_count=row.instance_count,
        labels={str(k): int(v) for k, v in (row.labels or {}).items()},
        skus=[str(s) for s in (row.top_products or {}).get("skus", [])],
        product_count=row.product_count,
        latency_ms=row.latency_ms,
        timings_ms={str(k): float(v) for k, v in (row.timings_ms or {}).items()},
        status=row.status,
        photo_stored=row.image_path is not None,
    )


def search_log(
    *, session: Session, query: LogQuery, limit: int = 100, offset: int = 0
) -> tuple[list[LoggedSearch], int]:
    """A page of logged searches, newest first, and how many there are in all."""
    total = session.scalar(_where(select(func.count(SearchLogEntry.id)), query)) or 0
    stmt = _where(select(SearchLogEntry), query)
    stmt = stmt.order_by(SearchLogEntry.created_at.desc(), SearchLogEntry.id.desc())
    rows = session.scalars(stmt.limit(limit).offset(offset))
    return [_logged(row) for row in rows], int(total)


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    p99: float
    mean: float
    max: float


@dataclass(frozen=True)
class SearchStats:
    """Figures over the searches of one `LogQuery`."""

    searches: int
    zero_results: int
    errors: int
    latency_ms: Percentiles | None  # None when there was no search
    volume: list[tuple[datetime, int]]  # (bucket start, searches), empty buckets included
    top_labels: list[tuple[str, int]]  # detected label, instances
    top_products: list[tuple[str, int]]  # sku, searches that returned it
    titles: dict[str, str] = field(default_factory=dict)  # sku -> title, for top_products

    @property
    def zero_result_rate(self) -> float | None:
        """Share of the successful searches that returned no product."""
        answered = self.searches - self.errors
        return self.zero_results / answered if answered else None


def percentiles(values: Sequence[float]) -> Percentiles | None:
    """p50/p95/p99 (linear interpolation), mean and max; None for no values."""
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    return Percentiles(p50=p50, p95=p95, p99=p99, mean=float(arr.mean()), max=float(arr.max()))


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    """The start (UTC) of the hour or day `moment` falls in."""
    moment = moment.astimezone(UTC)
    if bucket == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _filled(
    counts: Counter[datetime], query: LogQuery, bucket: Bucket
) -> list[tuple[datetime, int]]:
    """Counts per bucket from the range's first to last bucket, with the empty ones as 0."""
    if not counts and (query.since is None or query.until is None):
        return []
    first = bucket_start(query.since, bucket) if query.since is not None else min(counts)
    last = (
        bucket_start(query.until - timedelta(microseconds=1), bucket)
        if query.until is not None
        else max(counts)
    )
    step = BUCKETS[bucket]
    if (last - first) / step > MAX_FILLED_BUCKETS:
        return sorted(counts.items())
    out, moment = [], first
    while moment <= last:
        out.append((moment, counts.get(moment, 0)))
        moment += step
    return out


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    volume: Counter[datetime] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    products: Counter[str] = field(default_factory=Counter)
    zero: int = 0
    errors: int = 0


def _rows(session: Session, query: LogQuery) -> Iterator[Any]:
    stmt = _where(
        select(
            SearchLogEntry.created_at,
            SearchLogEntry.latency_ms,
            SearchLogEntry.product_count,
            SearchLogEntry.labels,
            SearchLogEntry.top_products,
            SearchLogEntry.status,
        ),
        query,
    )
    yield from session.execute(stmt.execution_options(yield_per=2000))


def _tally(session: Session, query: LogQuery, bucket: Bucket) -> _Tally:
    tally = _Tally()
    for created_at, latency, product_count, labels, top, status in _rows(session, query):
        tally.volume[bucket_start(created_at, bucket)] += 1
        if status != 200:
            tally.errors += 1
            continue
        tally.latencies.append(float(latency))
        tally.zero += product_count == 0
        tally.labels.update({str(k): int(v) for k, v in (labels or {}).items()})
        tally.products.update(str(s) for s in (top or {}).get("skus", []))
    return tally


def _product_titles(
    session: Session, counts: Counter[str], merchant: str | None, top: int
) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The `top` most returned skus that are (still) in scope, with their titles."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    chosen: list[tuple[str, int]] = []
    titles: dict[str, str] = {}
    for chunk in catalog.chunks(ranked):
        stmt = select(Product.sku, Product.title).where(Product.sku.in_([s for s, _ in chunk]))
        if merchant is not None:
            stmt = stmt.where(Product.merchant == merchant)
        known = {sku: title for sku, title in session.execute(stmt)}
        for sku, count in chunk:
            if sku in known and len(chosen) < top:
                chosen.append((sku, count))
                titles[sku] = known[sku]
        if len(chosen) >= top:
            break
    return chosen, titles


def search_stats(
    *, session: Session, query: LogQuery, bucket: Bucket = "day", top: int = 10
) -> SearchStats:
    """Volume per hour or day, latency percentiles, zero-result rate, top labels and products.

    Failed searches (status other than 200) count in the volume and in `errors` only. For a
    merchant, only its own products are ranked.
    """
    if bucket not in BUCKETS:
        raise InvalidInput(f"bucket must be one of {sorted(BUCKETS)}, not {bucket!r}")
    tally = _tally(session, query, bucket)
    products, titles = _product_titles(session, tally.products, query.merchant, top)
    return SearchStats(
        searches=sum(tally.volume.values()),
        zero_results=tally.zero,
        errors=tally.errors,
        latency_ms=percentiles(tally.latencies),
        volume=_filled(tally.volume, query, bucket),
        top_labels=sorted(tally.labels.items(), key=lambda kv: (-kv[1], kv[0]))[:top],
        top_products=products,
        titles=titles,
    )
