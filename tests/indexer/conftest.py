"""Shared fixtures for the indexer tests: real models (built once), small real feeds, and
helpers that read back what a run left in the database and the index."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from indexer.stages import IndexModels
from search.config import IndexSettings, Settings
from search.db import InstanceRow, Product, ProductImage, make_engine, make_session_factory
from search.index import VectorIndex
from search.index_store import open_index_store
from tests.milvus_server import unique_prefix


@pytest.fixture(scope="session")
def index_models() -> IndexModels:
    """The configured (offline) segmenter and embedder with real weights, built once."""
    return IndexModels.build(Settings().models)


@pytest.fixture(scope="session")
def catalog_rows(sample_dir: Path) -> list[dict[str, Any]]:
    """The first 40 products of the IKEA catalog (their images are small JPEGs)."""
    with (sample_dir / "catalog.jsonl").open() as lines:
        return [json.loads(line) for _, line in zip(range(40), lines, strict=False)]


class FeedDir:
    """A feed file in a temp folder, its images copied beside it (so tests can change them)."""

    def __init__(self, root: Path, sample_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
        self.root = root
        self.sample_dir = sample_dir
        self.rows = {row["sku"]: dict(row) for row in rows}
        (root / "images").mkdir(parents=True, exist_ok=True)
        self.path = root / "feed.jsonl"

    def image_path(self, sku: str) -> Path:
        return self.root / "images" / f"{sku}.jpg"

    def write(self, skus: Sequence[str], **overrides: dict[str, Any]) -> Path:
        """Write a JSONL feed of these products (relative image paths); copy missing images."""
        with self.path.open("w") as feed:
            for sku in skus:
                row = {**self.rows[sku], **overrides.get(sku, {})}
                target = self.image_path(sku)
                if not target.exists():
                    shutil.copyfile(self.sample_dir / self.rows[sku]["image"], target)
                row["image"] = f"images/{sku}.jpg"
                feed.write(json.dumps(row) + "\n")
        return self.path

    def replace_image(self, sku: str, with_sku: str) -> None:
        """Give `sku` the photo of `with_sku`, at the same path."""
        shutil.copyfile(self.sample_dir / self.rows[with_sku]["image"], self.image_path(sku))


def make_settings(db_url: str, root: Path, *, like: Settings | None = None) -> Settings:
    """Settings on this database and an index under `root`, on the index backend of `like`
    (FAISS when None; on Milvus, the same server under a new collection prefix)."""
    index = IndexSettings(dir=root / "index")
    if like is not None and like.index.backend == "milvus":
        index = milvus_index_settings(root, like.index.milvus_uri)
    return Settings(database_url=db_url, index=index)


def milvus_index_settings(root: Path, uri: str) -> IndexSettings:
    """The Milvus backend on the server at `uri`, under a collection prefix of its own; the
    indexer lock stays under `root`. Servers ask for the current version on every search."""
    return IndexSettings(
        dir=root / "index",
        backend="milvus",
        milvus_uri=uri,
        milvus_prefix=unique_prefix(),
        milvus_poll_s=0.0,
    )


def backend_settings(request: pytest.FixtureRequest, db_url: str, root: Path) -> Settings:
    """`make_settings` on the index backend a test asks for with
    `@pytest.mark.parametrize("settings", ["faiss", "milvus"], indirect=True)` (FAISS when it
    does not). Milvus runs on SQLite only: the database code is the same for both backends."""
    backend = getattr(request, "param", "faiss")
    if backend == "faiss":
        return make_settings(db_url, root)
    if not db_url.startswith("sqlite"):
        pytest.skip("the Milvus backend is tested on SQLite (the database side is shared)")
    uri: str = request.getfixturevalue("milvus_uri")
    return Settings(database_url=db_url, index=milvus_index_settings(root, uri))


@pytest.fixture
def feed(tmp_path: Path, sample_dir: Path, catalog_rows: list[dict[str, Any]]) -> FeedDir:
    """An empty feed folder over the first catalog rows, in this test's temp folder."""
    return FeedDir(tmp_path / "feed", sample_dir, catalog_rows)


@pytest.fixture
def settings(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Settings:
    """Settings on the test's database (SQLite or PostgreSQL) and an index in its temp folder
    (FAISS files, or Milvus when the test parametrizes `settings` indirectly with "milvus")."""
    return backend_settings(request, db_url, tmp_path)


@dataclass
class IndexState:
    """What a run left: per sku the stored vectors (by id order), DB ids and index ids."""

    vectors: dict[str, np.ndarray]
    db_ids: list[int]
    index_ids: list[int]
    index: VectorIndex
    version: str

    def assert_consistent(self) -> None:
        assert self.db_ids == self.index_ids, "the index holds exactly the database's vectors"
        stored = np.stack([v for vs in self.vectors.values() for v in vs])
        ids = np.asarray(self.db_ids)
        assert np.allclose(np.sort(stored, axis=0), np.sort(self.index.reconstruct(ids), axis=0))

    def assert_same_as(self, other: IndexState) -> None:
        """Same products, same instance count per image, the same vectors per product."""
        assert sorted(self.vectors) == sorted(other.vectors)
        for sku, mine in self.vectors.items():
            theirs = other.vectors[sku]
            assert mine.shape == theirs.shape, sku
            assert np.allclose(mine, theirs, atol=1e-4), sku


def read_state(settings: Settings) -> IndexState:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(Product.sku, InstanceRow.vector_id, InstanceRow.vector)
                .join(ProductImage, ProductImage.product_id == Product.id)
                .join(InstanceRow, InstanceRow.image_id == ProductImage.id)
                .where(InstanceRow.retired_in_run.is_(None))
                .order_by(Product.sku, InstanceRow.vector_id)
            ).all()
            skus = session.scalars(select(Product.sku)).all()
    finally:
        engine.dispose()
    vectors: dict[str, list[np.ndarray]] = {sku: [] for sku in skus}
    for sku, _, raw in rows:
        vectors[sku].append(np.frombuffer(raw, dtype=np.float32))
    index, meta = open_index_store(settings.index).load_current()  # open while `index` is used
    return IndexState(
        vectors={k: np.stack(v) if v else np.zeros((0, 1)) for k, v in vectors.items()},
        db_ids=sorted(int(r[1]) for r in rows),
        index_ids=sorted(int(i) for i in index.ids()),
        index=index,
        version=meta.version,
    )
