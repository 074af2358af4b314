"""Crash safety: `roomlens index` killed with SIGKILL mid-run, then run again, ends in exactly
the state a clean run gives; a run that dies while publishing is caught up by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from indexer.doctor import Expected, run_doctor
from indexer.pipeline import IndexOptions, run_index
from indexer.stages import IndexModels
from search.config import Settings
from search.db import IndexBuild, IndexRun, make_engine, make_session_factory, migrate
from search.index_store import FileIndexStore, open_index_store
from search.milvus_index import MilvusIndexStore
from tests.indexer.conftest import FeedDir, make_settings, read_state

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
OPTIONS = IndexOptions(progress=False, batch_size=2)


def _latest_run(settings: Settings) -> IndexRun | None:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return session.scalars(select(IndexRun).order_by(IndexRun.id.desc()).limit(1)).first()
    finally:
        engine.dispose()


def _all_runs(settings: Settings) -> list[IndexRun]:
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(IndexRun).order_by(IndexRun.id)))
    finally:
        engine.dispose()


def _start_indexer(settings: Settings, feed: Path) -> subprocess.Popen[bytes]:
    index = settings.index
    env = {
        **os.environ,
        "ROOMLENS_DATABASE_URL": settings.database_url,
        "ROOMLENS_INDEX__DIR": str(index.dir),
        "ROOMLENS_INDEX__BACKEND": index.backend,
        "ROOMLENS_INDEX__MILVUS_URI": index.milvus_uri,  # the test's milvus-lite server
        "ROOMLENS_INDEX__MILVUS_PREFIX": index.milvus_prefix,
    }
    command = [sys.executable, "-m", "roomlens.cli_index", "index", str(feed)]
    command += ["--batch-size", "1", "--model-batch", "1", "--model-workers", "1", "--no-progress"]
    # Lowest priority, so that on a loaded machine this test's poller still sees the first
    # commit long before the indexer finishes its six images.
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.nice(19),
    )


def current_version(settings: Settings) -> str | None:
    return open_index_store(settings.index).current()


def _kill_after_first_batch(settings: Settings, process: subprocess.Popen[bytes]) -> IndexRun:
    """SIGKILL the indexer once its run row shows a committed image; returns that row after."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        run = _latest_run(settings)
        if run is not None and run.pid == process.pid and run.counts.get("images_processed"):
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            killed = _latest_run(settings)
            assert killed is not None and killed.status == "running"
            return killed
        time.sleep(0.02)
    process.kill()
    raise AssertionError("the indexer never committed a batch")


@pytest.mark.parametrize("settings", ["faiss", "milvus"], indirect=True)
def test_kill_9_mid_run_then_run_again_equals_a_clean_run(
    settings: Settings,
    tmp_path: Path,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:10]]
    run_index(feed.write(skus[:6]), settings=settings, options=OPTIONS, models=index_models)
    served = current_version(settings)

    # the next feed changes two photos, drops one product and adds four
    feed.replace_image(skus[1], with_sku=skus[8])
    feed.replace_image(skus[2], with_sku=skus[9])
    path = feed.write(skus[1:10])
    process = _start_indexer(settings, path)
    killed = _kill_after_first_batch(settings, process)
    committed = killed.counts["images_processed"]
    assert process.returncode == -signal.SIGKILL and 1 <= committed < 6
    assert current_version(settings) == served, "the live version is untouched"
    expected = Expected(index_models.embedder.name, index_models.embedder.dim)
    broken = run_doctor(settings, expected)
    assert broken.exit_code == 1, broken.summary()
    assert any("not in the index" in str(f) for f in broken.errors), broken.summary()

    resumed = run_index(path, settings=settings, options=OPTIONS, models=index_models)
    assert resumed.status == "succeeded"
    assert resumed.images_processed == 6 - committed, "what the killed run committed is kept"
    statuses = [r.status for r in _all_runs(settings)]
    assert statuses == ["succeeded", "interrupted", "succeeded"]

    clean = make_settings(f"sqlite:///{tmp_path / 'clean.db'}", tmp_path / "clean", like=settings)
    migrate(clean.database_url)
    run_index(path, settings=clean, options=OPTIONS, models=index_models)
    state = read_state(settings)
    state.assert_consistent()
    state.assert_same_as(read_state(clean))
    healed = run_doctor(settings, expected)
    assert healed.exit_code == 0, healed.summary()


@pytest.mark.parametrize("settings", ["faiss", "milvus"], indirect=True)
def test_a_run_that_dies_while_publishing_is_caught_up_by_the_next(
    settings: Settings,
    feed: FeedDir,
    catalog_rows: list[dict[str, Any]],
    index_models: IndexModels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    skus = [row["sku"] for row in catalog_rows[:3]]
    run_index(feed.write(skus[:2]), settings=settings, options=OPTIONS, models=index_models)
    served = current_version(settings)

    def no_space(store: object, version: str) -> None:
        raise OSError(28, "No space left on device")  # the switch of the pointer fails

    store_class = MilvusIndexStore if settings.index.backend == "milvus" else FileIndexStore
    monkeypatch.setattr(store_class, "publish", no_space)
    with pytest.raises(OSError):
        run_index(feed.write(skus), settings=settings, options=OPTIONS, models=index_models)
    monkeypatch.undo()
    run = _latest_run(settings)
    assert run is not None and (run.status, run.error) == (
        "failed",
        "OSError: [Errno 28] No space left on device",
    )
    assert current_version(settings) == served
    expected = Expected(index_models.embedder.name, index_models.embedder.dim)
    assert run_doctor(settings, expected).exit_code == 1

    again = run_index(feed.path, settings=settings, options=OPTIONS, models=index_models)
    assert (again.status, again.images_processed, again.new_version) == ("succeeded", 0, True)
    read_state(settings).assert_consistent()
    assert run_doctor(settings, expected).exit_code == 0
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        statuses = session.scalars(select(IndexBuild.status).order_by(IndexBuild.id)).all()
    engine.dispose()
    assert statuses == ["committed", "failed", "committed"]
