"""Shared fixtures.

Databases: `db_url` runs a test twice, on SQLite (a file in tmp_path) and on PostgreSQL
(marker `postgres`), each freshly migrated; `blank_db_url` is the same but empty (not
migrated); `engine`, `session_factory` and `session` are built on `db_url`.

PostgreSQL: `ROOMLENS_TEST_POSTGRES_URL` (default below). Each test gets its own empty schema
(dropped afterwards) on that database, so parallel test runs never see each other's tables;
the URL it gets selects that schema through `options=-csearch_path=...`. The tests are
skipped only when nothing listens at the server's address.
"""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from search.db import make_engine, make_session_factory, migrate

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ikea"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The IKEA evaluation data set (catalog.jsonl, images/, rooms/), read-only."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"sample data set not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


# --- databases -------------------------------------------------------------------------------


def _server_listening(url: str) -> str | None:
    """None if something accepts TCP connections at the URL's host:port, else why not."""
    parsed = make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5432
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as exc:
        return f"PostgreSQL not reachable at {host}:{port} ({exc}); set ROOMLENS_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The PostgreSQL server URL for tests; skips when the server is unreachable."""
    url = os.environ.get("ROOMLENS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    reason = _server_listening(url)
    if reason is not None:
        pytest.skip(reason)
    return url


def _admin_engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def _drop_schema(admin: Engine, schema: str) -> None:
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SET lock_timeout = '5s'")
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except OperationalError as exc:  # a connection some test left open in a transaction
        warnings.warn(f"could not drop test schema {schema}: {exc}", stacklevel=1)


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A URL whose search_path is a new, empty schema (dropped after the test)."""
    schema = f"roomlens_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = _admin_engine(postgres_server_url)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(postgres_server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _drop_schema(admin, schema)
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (nothing migrated): SQLite file, then PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'roomlens.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def db_url(blank_db_url: str) -> str:
    """A clean database migrated to head, on SQLite and on PostgreSQL."""
    migrate(blank_db_url)
    return blank_db_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session on the migrated test database; rolled back and closed afterwards."""
    with session_factory() as session:
        yield session


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One milvus-lite server for the whole session (tests/milvus_server.py); each test
    keeps to its own collection prefix."""
    from tests.milvus_server import lite_server

    with lite_server(tmp_path_factory.mktemp("milvus")) as uri:
        yield uri
