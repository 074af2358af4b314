"""`roomlens doctor` finds each way the database and the index can disagree, and says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from indexer.doctor import DoctorReport, Expected, run_doctor
from indexer.lock import file_lock
from indexer.pipeline import IndexOptions, run_index
from indexer.stages import IndexModels
from roomlens.cli_index import main as cli_main
from search.config import Settings
from search.db import InstanceRow, ProductImage, make_engine, make_session_factory
from search.index import CURRENT_FILE
from search.index_store import open_index_store
from search.milvus_index import MilvusIndexStore
from tests.indexer.conftest import FeedDir, backend_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def indexed(
    request: pytest.FixtureRequest,
    db_url: str,
    tmp_path: Path,
    sample_dir: Path,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> Settings:
    """Three products indexed, on FAISS files (or on Milvus: parametrize `indexed` with it)."""
    feed = FeedDir(tmp_path / "feed", sample_dir, catalog_rows)
    settings = backend_settings(request, db_url, tmp_path)
    path = feed.write([row["sku"] for row in catalog_rows[:3]])
    run_index(path, settings=settings, options=IndexOptions(progress=False), models=index_models)
    return settings


def _doctor(settings: Settings, models: IndexModels, embedder: str | None = None) -> DoctorReport:
    expected = Expected(embedder or models.embedder.name, models.embedder.dim)
    return run_doctor(settings, expected)


def _execute(settings: Settings, statement: Any) -> None:
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session, session.begin():
        session.execute(statement)
    engine.dispose()


def _messages(report: DoctorReport) -> str:
    return "\n".join(str(f) for f in report.errors)


@pytest.mark.parametrize("indexed", ["faiss", "milvus"], indirect=True)
def test_a_healthy_catalog(indexed: Settings, index_models: IndexModels) -> None:
    report = _doctor(indexed, index_models)
    assert report.exit_code == 0 and not report.errors, report.summary()
    assert "the index holds exactly the 3 database vectors" in report.summary()
    assert "3 sampled vectors are identical" in report.summary()


@pytest.mark.parametrize("indexed", ["faiss", "milvus"], indirect=True)
def test_vectors_missing_on_either_side(indexed: Settings, index_models: IndexModels) -> None:
    first = select(InstanceRow.id).order_by(InstanceRow.id).limit(1).scalar_subquery()
    _execute(indexed, delete(InstanceRow).where(InstanceRow.id == first))
    report = _doctor(indexed, index_models)
    assert report.exit_code == 1
    assert "1 index vectors are no longer in the database [1]" in _messages(report)
    assert "1 images marked ok have no instance" in _messages(report)


def test_vectors_that_differ(indexed: Settings, index_models: IndexModels) -> None:
    _execute(indexed, update(InstanceRow).values(vector=b"\0" * 4 * index_models.embedder.dim))
    report = _doctor(indexed, index_models)
    assert "3 of 3 sampled vectors differ" in _messages(report)


@pytest.mark.parametrize("indexed", ["faiss", "milvus"], indirect=True)
def test_no_index_or_another_embedder(indexed: Settings, index_models: IndexModels) -> None:
    other = _doctor(indexed, index_models, embedder="efficientnet-lite2")
    assert f"built with embedder '{index_models.embedder.name}'" in _messages(other)
    _execute(indexed, update(ProductImage).values(status="pending"))
    store = open_index_store(indexed.index)
    if isinstance(store, MilvusIndexStore):
        store.client.drop_alias(store.alias)
    else:
        (indexed.index.dir / CURRENT_FILE).unlink()
    report = _doctor(indexed, index_models)
    assert "no published index" in _messages(report)
    assert any("3 images not processed yet" in str(f) for f in report.findings)


def test_a_run_in_progress_and_the_command_line(
    indexed: Settings,
    index_models: IndexModels,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with file_lock(indexed.index.dir / "indexer.lock"):
        assert _doctor(indexed, index_models).exit_code == 75
    monkeypatch.setenv("ROOMLENS_DATABASE_URL", indexed.database_url)
    monkeypatch.setenv("ROOMLENS_INDEX__DIR", str(indexed.index.dir))
    assert cli_main(["doctor"]) == 0
    assert cli_main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "healthy" in out and "succeeded" in out
