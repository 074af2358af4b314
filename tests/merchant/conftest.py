"""A small real catalog of two merchants, indexed once per session with the offline models.

Twelve IKEA products (sofas, armchairs, tables, chairs) alternate between merchants `acme`
(even positions) and `birch` (odd ones). Four more make the admin queries tell something:
`X-DUP-ACME` (acme) and `X-DUP-BIRCH` (birch) reuse the photo of the first product (acme),
so they are near-duplicates of it, within one merchant and across two; `X-BROKEN` (birch)
points at a file that is not an image ("failed"); `X-BLANK` (acme) is a plain white picture
in which the segmenter finds nothing ("no_instance").

Tests never write to that database: `catalog_copy(url)` copies its rows into a fresh,
migrated database (SQLite or PostgreSQL) and `index_copy` its index folder. The models are
loaded once (`loaded_state`), and `searches` holds four real room searches on the catalog.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Integer, insert, select, text
from sqlalchemy.orm import Session

from api.state import AppState, build_state
from indexer.pipeline import IndexModels, IndexOptions, IndexReport, run_index
from search.config import IndexSettings, Settings
from search.db import Base, make_engine, make_session_factory, migrate
from search.models.base import Segmenter
from search.service import SearchOptions
from search.types import Box, Instance, SearchResult
from tests.app_states import state_for

CATEGORIES = ("sofa", "armchair", "table", "chair_stool_bench")
PER_CATEGORY = 3
MERCHANTS = ("acme", "birch")
DUP_ACME, DUP_BIRCH, BROKEN, BLANK = "X-DUP-ACME", "X-DUP-BIRCH", "X-BROKEN", "X-BLANK"


class NothingOnBlank:
    """The offline segmenter, except that a uniform picture holds no object (as a detector
    would say); the lite segmenter otherwise always returns the whole product."""

    def __init__(self, inner: Segmenter) -> None:
        self.inner = inner
        self.name = inner.name

    def segment(self, image: Image.Image) -> list[Instance]:
        return self.inner.segment(image)

    def segment_product(self, image: Image.Image) -> list[Instance]:
        low, high = image.convert("L").getextrema()
        if low == high:
            return []
        return self.inner.segment_product(image)


@dataclass(frozen=True)
class IndexedCatalog:
    db_url: str
    index_dir: Path
    feed: Path
    report: IndexReport
    products: list[dict[str, Any]]  # feed lines, in feed order

    def skus(self, merchant: str | None = None) -> set[str]:
        return {p["sku"] for p in self.products if merchant is None or p["merchant"] == merchant}

    def merchant_of(self, sku: str) -> str:
        return next(p["merchant"] for p in self.products if p["sku"] == sku)

    @property
    def first(self) -> dict[str, Any]:
        return self.products[0]


def _feed_lines(sample_dir: Path, tmp: Path) -> list[dict[str, Any]]:
    catalog = [json.loads(line) for line in (sample_dir / "catalog.jsonl").open()]
    chosen = [
        p for c in CATEGORIES for p in [q for q in catalog if q["category"] == c][:PER_CATEGORY]
    ]
    products = []
    for i, line in enumerate(chosen):
        product = {**line, "image": str(sample_dir / line["image"])}
        product.update(merchant=MERCHANTS[i % 2], price=100.0 + 10 * i, currency="EUR")
        products.append(product)
    first = products[0]
    (tmp / "broken.jpg").write_bytes(b"this is not a picture")
    Image.new("RGB", (320, 240), (255, 255, 255)).save(tmp / "blank.png")
    extra = [
        (DUP_ACME, "acme", first["image"], first["category"]),
        (DUP_BIRCH, "birch", first["image"], first["category"]),
        (BROKEN, "birch", str(tmp / "broken.jpg"), "table"),
        (BLANK, "acme", str(tmp / "blank.png"), "sofa"),
    ]
    for sku, merchant, image, category in extra:
        title = f"{sku} test product"
        products.append(
            {"sku": sku, "title": title, "category": category, "image": image, "merchant": merchant}
        )
    return products


@pytest.fixture(scope="session")
def loaded_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppState]:
    """The app state with the offline models, loaded once for every admin test; `state_for`
    points it at another database and index."""
    tmp = tmp_path_factory.mktemp("admin-state")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'unused.db'}", index=IndexSettings(dir=tmp / "index")
    )
    state = build_state(settings)
    yield state
    state.engine.dispose()


@pytest.fixture(scope="session")
def index_models(loaded_state: AppState) -> IndexModels:
    """The loaded models, with a segmenter that finds nothing on a blank picture."""
    service = loaded_state.service
    return IndexModels(NothingOnBlank(service.segmenter), service.embedder)


@pytest.fixture(scope="session")
def indexed_catalog(
    tmp_path_factory: pytest.TempPathFactory, sample_dir: Path, index_models: IndexModels
) -> IndexedCatalog:
    tmp = tmp_path_factory.mktemp("admin-catalog")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'roomlens.db'}", index=IndexSettings(dir=tmp / "index")
    )
    products = _feed_lines(sample_dir, tmp)
    feed = tmp / "feed.jsonl"
    feed.write_text("".join(json.dumps(p) + "\n" for p in products))
    migrate(settings.database_url)
    options = IndexOptions(progress=False)
    report = run_index(feed, settings=settings, options=options, models=index_models)
    return IndexedCatalog(settings.database_url, settings.index.dir, feed, report, products)


def copy_rows(source_url: str, target_url: str) -> None:
    """Every row of every table from one migrated database into another (empty) one."""
    source, target = make_engine(source_url), make_engine(target_url)
    try:
        with source.connect() as src, target.begin() as dst:
            for table in reversed(Base.metadata.sorted_tables):  # e.g. the seeded counter
                dst.execute(table.delete())
            for table in Base.metadata.sorted_tables:
                rows = [dict(row) for row in src.execute(select(table)).mappings()]
                if rows:
                    dst.execute(insert(table), rows)
            if target.dialect.name == "postgresql":  # explicit ids: move the sequences on
                for table in Base.metadata.sorted_tables:
                    if "id" in table.c and isinstance(table.c.id.type, Integer):
                        dst.execute(
                            text(
                                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
                            )
                        )
    finally:
        source.dispose()
        target.dispose()


@pytest.fixture
def catalog_copy(indexed_catalog: IndexedCatalog) -> Callable[[str], str]:
    """Copy the indexed catalog's rows into the (migrated, empty) database at a URL."""

    def copy(url: str) -> str:
        copy_rows(indexed_catalog.db_url, url)
        return url

    return copy


@pytest.fixture
def catalog_db(db_url: str, catalog_copy: Callable[[str], str]) -> str:
    """A fresh copy of the indexed catalog, on SQLite and on PostgreSQL."""
    return catalog_copy(db_url)


@pytest.fixture
def db(catalog_db: str) -> Iterator[Session]:
    """A session on this test's copy of the indexed catalog."""
    engine = make_engine(catalog_db)
    try:
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


@pytest.fixture
def index_copy(indexed_catalog: IndexedCatalog, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the catalog's index folder."""
    target = tmp_path / "index"
    shutil.copytree(indexed_catalog.index_dir, target)
    yield target


@dataclass(frozen=True)
class Searched:
    result: SearchResult
    photo: bytes


@pytest.fixture(scope="session")
def searches(
    indexed_catalog: IndexedCatalog, loaded_state: AppState, sample_dir: Path
) -> list[Searched]:
    """Four real searches on the catalog: a whole room (segmented), two regions of rooms,
    and a region that returns no product (min_score 0.999). Regions keep the cost down."""
    settings = Settings(
        database_url=indexed_catalog.db_url, index=IndexSettings(dir=indexed_catalog.index_dir)
    )
    state = state_for(loaded_state, settings)
    rooms = sorted((sample_dir / "rooms").glob("*.jpg"))[:3]
    plan = [(rooms[1], False, None), (rooms[0], True, None), (rooms[2], True, None)]
    plan.append((rooms[0], True, 0.999))
    out = []
    for room, region, min_score in plan:
        image = Image.open(room).convert("RGB")
        w, h = image.size
        box = Box(w * 0.25, h * 0.25, w * 0.75, h * 0.75) if region else None
        options = SearchOptions(k=5, min_score=min_score, region=box)
        out.append(Searched(state.service.search(image, options), room.read_bytes()))
    state.engine.dispose()
    assert len(out[0].result.groups) > 1, "the whole room shows several objects"
    assert all(g.products for s in out[:3] for g in s.result.groups[:1])
    assert not any(g.products for g in out[3].result.groups)
    return out
