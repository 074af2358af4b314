"""The schema: Alembic migration up and down on SQLite and PostgreSQL, engine set-up, cascades."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, delete, func, inspect, select
from sqlalchemy.orm import Session

import merchant.tables  # noqa: F401  (its tables are part of the schema the migrations build)
from search.db import (
    ALEMBIC_INI,
    SQLITE_BUSY_TIMEOUT_MS,
    Base,
    IndexBuild,
    InstanceRow,
    Product,
    ProductImage,
    alembic_config,
    make_engine,
    migrate,
)

TABLES = {
    "products",
    "product_images",
    "instances",
    "index_builds",
    "counters",
    "index_runs",
    "api_keys",
    "search_log",
}
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_creates_the_tables(blank_db_url: str) -> None:
    assert not table_names(blank_db_url) & TABLES
    migrate(blank_db_url)
    assert TABLES | {"alembic_version"} <= table_names(blank_db_url)
    assert revision(blank_db_url) == HEAD


def test_migration_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_downgrade_drops_the_tables_and_upgrade_again(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "base")
    assert not table_names(db_url) & TABLES
    assert revision(db_url) is None
    migrate(db_url)
    assert table_names(db_url) >= TABLES
    assert revision(db_url) == HEAD


def test_each_revision_downgrades_one_step(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "0001")
    assert revision(db_url) == "0001"
    assert not table_names(db_url) & {"index_runs", "api_keys", "search_log"}
    migrate(db_url)
    assert revision(db_url) == HEAD and table_names(db_url) >= TABLES


def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    migrate(db_url)
    assert revision(db_url) == HEAD


def test_url_from_x_argument(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x' / 'cli.db'}"
    config = Config(str(ALEMBIC_INI), cmd_opts=argparse.Namespace(x=[f"url={url}"]))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    assert table_names(url) >= TABLES


@pytest.mark.parametrize("url", ["sqlite://", "postgresql+psycopg://u@h/db"])
def test_offline_sql(url: str) -> None:
    buffer = io.StringIO()
    config = alembic_config(url)
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE products" in sql
    assert "INSERT INTO counters" in sql


def _product_with_instance(session: Session) -> Product:
    product = Product(sku="A-1", title="Sofa", category="sofa")
    image = ProductImage(position=0, source="a.jpg", resolved="/data/a.jpg")
    image.instances.append(
        InstanceRow(
            label="sofa",
            score=0.9,
            x0=0,
            y0=0,
            x1=10,
            y1=10,
            mask_rle={"size": [10, 10], "counts": "x"},
            mask_area=100,
            vector_id=7,
            embedder="e",
        )
    )
    product.images.append(image)
    session.add(product)
    session.commit()
    return product


def test_foreign_key_cascade_removes_images_and_instances(session: Session) -> None:
    product = _product_with_instance(session)
    session.execute(delete(Product).where(Product.id == product.id))  # the database cascades
    session.commit()
    assert session.scalar(select(func.count()).select_from(ProductImage)) == 0
    assert session.scalar(select(func.count()).select_from(InstanceRow)) == 0


def test_orm_delete_cascades_too(session: Session) -> None:
    session.delete(_product_with_instance(session))
    session.commit()
    assert session.scalar(select(func.count()).select_from(InstanceRow)) == 0


def test_timestamps_are_utc_aware(session: Session) -> None:
    paris = timezone(timedelta(hours=2))
    build = IndexBuild(
        version="v1",
        embedder="e",
        dim=4,
        factory="Flat",
        started_at=datetime(2026, 5, 1, 12, tzinfo=paris),
    )
    session.add(build)
    session.commit()
    session.expire_all()
    loaded = session.get(IndexBuild, build.id)
    assert loaded is not None
    assert loaded.started_at == datetime(2026, 5, 1, 10, tzinfo=UTC)
    assert loaded.started_at.tzinfo is not None
    assert loaded.started_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(session: Session) -> None:
    session.add(
        IndexBuild(version="v", embedder="e", dim=4, factory="F", started_at=datetime(2026, 1, 1))
    )
    with pytest.raises(Exception, match="naive datetime"):
        session.flush()


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'roomlens.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
    finally:
        engine.dispose()
    assert (tmp_path / "new" / "dir").is_dir()


def test_in_memory_sqlite_works() -> None:
    engine = make_engine("sqlite://")
    try:
        Base.metadata.create_all(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
