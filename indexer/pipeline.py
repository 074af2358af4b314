"""The indexer: a staged pipeline (feed, load, analyse, write, publish), one run at a time.

The database is the source of truth. Each batch of images commits its instances with their
vectors, the images' content hash and stamp, and the run's progress in one transaction; the
index version is derived from the database at the end and published atomically beside the
live one (`indexer.publish`). Instances an image had before are retired, not deleted, so the
version being served keeps resolving until the switch. A run killed at any moment loses at
most the batch in flight: the next run skips what was committed (same stamp or content hash,
instances current for the embedder) and ends in the state a clean run gives.

Work is keyed by image content and embedder identity: an image is processed again when its
bytes change (stamp, then sha256), when its instances come from another embedder, when it
failed before, or with `--full`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from indexer import runs
from indexer.engines import Batching, ImageEngine, LocalEngine
from indexer.lock import run_lock
from indexer.publish import PublishTarget, publish
from indexer.report import EXIT_CODES, IndexReport, Progress, RunStatus
from indexer.sources import parse_feed
from indexer.stages import ImageJob, ImageResult, IndexModels, StageConfig
from search import catalog
from search.config import Settings
from search.db import make_engine, make_session_factory
from search.fetch import Fetcher, FetchPolicy
from search.index_store import open_index_store
from search.models.base import EmbedderId
from search.models.registry import embedder_identity
from search.timing import Timer

__all__ = [
    "EXIT_CODES",
    "IndexModels",
    "IndexOptions",
    "IndexReport",
    "publish_index",
    "reindex_products",
    "run_index",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOptions:
    full: bool = False  # process every image again (an interrupted --full run is resumed)
    progress: bool = True
    limit: int | None = None  # index only the first N products of the feed
    batch_size: int | None = None  # images per write transaction; default settings.index's
    read_workers: int = 4  # threads reading, hashing and decoding images
    # Threads running the models, on `model_batch` images at a time. None: one per core with
    # one intra-op thread each when the run builds its models, else 1 (given models keep
    # the threads they were built with).
    model_workers: int | None = None
    model_batch: int = 4
    keep_versions: int = 2  # index version folders kept after publishing
    max_removed_fraction: float = 0.5  # refuse to remove a larger share of the catalog
    fetch: FetchPolicy | None = None  # None: the settings' (`Settings.fetch.policy()`)
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: start a local Ray (engine "ray")
    ray_actors: int = 1  # model actors on the Ray cluster
    ray_cpus_per_actor: float = 1.0


def run_index(
    feed: Path,
    *,
    settings: Settings,
    options: IndexOptions | None = None,
    models: IndexModels | None = None,
) -> IndexReport:
    """Bring the database and the index up to date with `feed` and publish the result.

    Raises `IndexerBusy` when another run holds the lock; any other error is recorded in the
    run history (status "failed", or "interrupted" for KeyboardInterrupt) and re-raised.
    """
    return _execute(_Scope(str(feed), feed=Path(feed)), settings, options, models)


def reindex_products(
    skus: Sequence[str],
    *,
    settings: Settings,
    options: IndexOptions | None = None,
    models: IndexModels | None = None,
) -> IndexReport:
    """Segment and embed these products' images again now, whatever their state, and publish
    a new index version: one run in the history (feed "products: ..."), under the lock."""
    label = "products: " + ", ".join(skus[:10]) + (" ..." if len(skus) > 10 else "")
    return _execute(_Scope(label, skus=tuple(skus)), settings, options, models)


def publish_index(
    *,
    settings: Settings,
    options: IndexOptions | None = None,
    models: IndexModels | None = None,
) -> IndexReport:
    """Publish a version from the stored vectors now (e.g. after products were deleted):
    no image is read; one run in the history (feed "publish"), under the lock."""
    return _execute(_Scope("publish", skus=()), settings, options, models)


@dataclass(frozen=True)
class _Scope:
    """What a run covers: a feed to sync first, and every image or only some products'."""

    label: str  # index_runs.feed
    feed: Path | None = None
    skus: tuple[str, ...] | None = None  # None: every image; else these, processed again


def _execute(
    scope: _Scope,
    settings: Settings,
    options: IndexOptions | None,
    models: IndexModels | None,
) -> IndexReport:
    options = options or IndexOptions()
    engine = make_engine(settings.database_url)
    try:
        with run_lock(settings.index.dir / "indexer.lock", engine):
            run = _Run(scope, settings, options, make_session_factory(engine))
            return run.execute(models)
    finally:
        engine.dispose()


class _Run:
    """One run: its history row, its timers and its report."""

    def __init__(
        self,
        scope: _Scope,
        settings: Settings,
        options: IndexOptions,
        sessions: sessionmaker[Session],
    ) -> None:
        self.scope = scope
        self.settings = settings
        self.options = options
        self.sessions = sessions
        self.timer = Timer()
        self.report = IndexReport()
        self.own_models = False
        self.started = time.perf_counter()
        with sessions() as session, session.begin():
            self.resume_full = options.full and runs.should_resume_full(session=session)
            row = runs.start_run(session=session, feed=scope.label, full=options.full)
            self.run_id = row.id
        self.report.run_id = self.run_id
        log.info("index run %d started: %s", self.run_id, scope.label)

    def execute(self, models: IndexModels | None) -> IndexReport:
        try:
            if self.scope.feed is not None:
                with self.timer.stage("feed"):
                    self._sync_catalog(self.scope.feed)
            with self.timer.stage("models"):
                models, embedder = self._models(models)
            if self.scope.skus != ():  # () is publish only
                self._process_images(embedder, self._engine(models))
            with self.timer.stage("publish"):
                self._publish(embedder)
        except KeyboardInterrupt:
            self._end("interrupted", "interrupted (signal)")
            raise
        except BaseException as exc:
            self._end("failed", f"{type(exc).__name__}: {exc}")
            raise
        self._end("partial" if self.report.problems.any else "succeeded")
        return self.report

    # --- feed --------------------------------------------------------------------------------

    def _sync_catalog(self, feed: Path) -> None:
        parsed = parse_feed(feed)
        failures = self.report.problems
        for err in parsed.errors:
            log.warning("%s line %d: %s", feed, err.line, err.reason)
            failures.add_feed(err.line, err.reason)
        limit = self.options.limit
        items = parsed.items[:limit] if limit is not None else parsed.items
        with self.sessions() as session, session.begin():
            self.report.products = catalog.upsert_products(session=session, items=items)
            self._remove_missing(session, [item.sku for item in items], len(parsed.errors))
            if self.options.full and not self.resume_full:
                catalog.reset_images(session=session)
                runs.update_progress(
                    session=session,
                    run_id=self.run_id,
                    progress={runs.FULL_RESET: True},
                    counts=self.report.counts(),
                )
        if self.resume_full:
            log.info("resuming the interrupted --full run: images it redid are kept")

    def _remove_missing(self, session: Session, skus: list[str], bad_lines: int) -> None:
        """Remove the products the feed no longer has, unless that looks like a broken feed."""
        notes = self.report.problems.notes
        missing = catalog.skus_not_in(session=session, skus=skus)
        if not missing:
            return
        if bad_lines:
            # A line that failed to parse may be a product that still exists: keep everything.
            notes.append(
                f"feed has {bad_lines} bad lines: {len(missing)} products missing from it were kept"
            )
            return
        stored = self.report.products.total + len(missing) - self.report.products.inserted
        if len(missing) > self.options.max_removed_fraction * stored:
            notes.append(
                f"the feed lacks {len(missing)} of {stored} products, more than "
                f"{self.options.max_removed_fraction:.0%}: none removed (a truncated feed?); "
                "pass --max-removed-fraction 1 to remove them"
            )
            return
        catalog.remove_products(session=session, skus=missing)
        self.report.removed_products = len(missing)

    # --- images ------------------------------------------------------------------------------

    def _models(self, models: IndexModels | None) -> tuple[IndexModels | None, EmbedderId]:
        """The models this process runs (built unless given), and the embedder whose name
        keys the vectors. The Ray engine's workers build their own; publishing needs none."""
        local = self.options.engine == "local" and self.scope.skus != ()
        if models is None and local:
            workers = self._model_workers(given=False)
            models = IndexModels.build(self.settings.models, workers=workers)
            self.own_models = True
        embedder = models.embedder if models else embedder_identity(self.settings.models)
        return models, embedder

    def _model_workers(self, *, given: bool) -> int:
        if self.options.model_workers is not None:
            return self.options.model_workers
        return 1 if given else max(1, os.cpu_count() or 1)

    def _engine(self, models: IndexModels | None) -> ImageEngine:
        config = StageConfig.from_settings(self.settings)
        batching = Batching(
            size=self.options.batch_size or self.settings.index.batch_size,
            model_batch=self.options.model_batch,
            model_workers=self._model_workers(given=not self.own_models),
            read_workers=self.options.read_workers,
        )
        fetch = self.options.fetch or self.settings.fetch.policy()
        if self.options.engine == "ray":
            from indexer.engine_ray import RayEngine

            options = replace(self.options, fetch=fetch)
            return RayEngine(self.settings.models, config, options, batching)
        assert models is not None
        return LocalEngine(models, config, Fetcher(fetch), batching)

    def _process_images(self, embedder: EmbedderId, engine: ImageEngine) -> None:
        with self.sessions() as session:
            total = sum(catalog.catalog_counts(session=session).images.values())
        self.report.images_total = total
        progress = Progress(total, self.options.progress, full=self.options.full)
        start = time.perf_counter()
        try:
            for batch in engine.results(self._jobs(embedder.name)):
                for result in batch:
                    for stage, ms in result.timings_ms.items():
                        self.timer.add(stage, ms)
                with self.timer.stage("write"), self.sessions() as session, session.begin():
                    self._write(session, batch)
                    progress.update(batch, self.report)
                    runs.update_progress(
                        session=session,
                        run_id=self.run_id,
                        progress=progress.snapshot(self.report),
                        counts=self.report.counts(),
                    )
        finally:
            progress.close()
            self.report.images_s = time.perf_counter() - start

    def _jobs(self, embedder: str) -> Iterator[ImageJob]:
        """Every catalog image, in id order, read page by page (a short session each); or,
        for a run over some products, their images, to be processed whatever their state."""
        if self.scope.skus is not None:
            with self.sessions() as session:
                products = catalog.get_products(session=session, skus=self.scope.skus)
                images = [(p.sku, image) for p in products for image in p.images]
            for sku, im in images:
                yield ImageJob(im.id, sku, im.resolved, im.content_hash, im.source_stamp, True)
            return
        after = 0
        while True:
            with self.sessions() as session:
                page = catalog.scan_images(session=session, embedder=embedder, after_id=after)
            if not page:
                return
            for state in page:
                yield ImageJob.from_state(state)
            after = page[-1].image_id

    def _write(self, session: Session, batch: list[ImageResult]) -> None:
        report = self.report
        found = [r for r in batch if r.outcome == "ok"]
        ids = iter(catalog.next_vector_ids(session=session, n=sum(len(r.instances) for r in found)))
        for r in batch:
            if r.outcome == "unchanged":
                report.images_unchanged += 1
                if r.stamp != r.job.stamp or r.content_hash != r.job.content_hash:
                    catalog.update_image_source(
                        session=session,
                        image_id=r.job.image_id,
                        source_stamp=r.stamp,
                        content_hash=r.content_hash,
                    )
            elif r.outcome == "failed":
                reason = r.error or "failed"
                report.problems.add_image(r.job.sku, r.job.ref, reason)
                catalog.set_image_result(
                    session=session, image_id=r.job.image_id, status="failed", error=reason
                )
            else:
                rows = [replace(inst, vector_id=next(ids)) for inst in r.instances]
                catalog.replace_instances(
                    session=session, image_id=r.job.image_id, instances=rows, retire_run=self.run_id
                )
                catalog.set_image_result(
                    session=session,
                    image_id=r.job.image_id,
                    status="ok" if rows else "no_instance",
                    content_hash=r.content_hash,
                    source_stamp=r.stamp,
                    width=r.width,
                    height=r.height,
                )
                report.images_processed += 1
                report.instances += len(rows)

    # --- publish and history -----------------------------------------------------------------

    def _publish(self, embedder: EmbedderId) -> None:
        store = open_index_store(self.settings.index)
        try:
            target = PublishTarget(store, self.run_id, self.options.keep_versions)
            published = publish(self.sessions, embedder, target)
        finally:
            store.close()
        self.report.version = published.version
        self.report.vector_count = published.vector_count
        self.report.new_version = published.new

    def _end(self, status: RunStatus, error: str | None = None) -> None:
        report = self.report
        report.status = status
        report.timings_ms = dict(self.timer.ms)
        report.elapsed_s = time.perf_counter() - self.started
        end = runs.RunEnd(
            status=status,
            counts=report.counts(),
            failures=report.problems.to_json(),
            timings_ms=report.timings_ms,
            version=report.version,
            error=error,
        )
        try:
            with self.sessions() as session, session.begin():
                runs.finish_run(session=session, run_id=self.run_id, end=end)
        except Exception:  # the database may be what failed; the run stays "running"
            log.exception("could not record the end of run %d", self.run_id)
        log.info("index run %d %s in %.1f s", self.run_id, status, report.elapsed_s)
