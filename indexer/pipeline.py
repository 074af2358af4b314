"""The indexer: a staged pipeline (read, decode, segment, crop, embed, write, publish).

Incremental and resumable: each batch of images commits its instances and vectors to the
database, which is the source of truth; an index version is derived from the database at the
end and published atomically beside the live one. A run killed at any point loses at most
the batch in flight, and the next run picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from indexer.lock import run_lock
from indexer.sources import FeedLineError, parse_feed
from search import catalog
from search.config import Settings
from search.crops import crop_instance
from search.db import make_engine, make_session_factory
from search.errors import RoomlensError
from search.images import decode_image
from search.index import (
    FaissIndex,
    IndexMeta,
    choose_factory,
    new_version_id,
    publish_current,
    save_index,
    utc_now_iso,
    version_dir,
)
from search.masks import encode_rle
from search.models.base import Embedder, Segmenter
from search.models.registry import build_embedder, build_segmenter
from search.timing import Timer
from search.types import Instance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexOptions:
    full: bool = False
    progress: bool = True
    limit: int | None = None  # index only the first N products of the feed
    batch_size: int | None = None  # default: settings.index.batch_size
    read_workers: int = 2


@dataclass(frozen=True)
class IndexModels:
    segmenter: Segmenter
    embedder: Embedder


@dataclass
class IndexReport:
    feed_errors: list[FeedLineError] = field(default_factory=list)
    products: catalog.UpsertCounts = field(default_factory=catalog.UpsertCounts)
    removed_products: int = 0
    images_processed: int = 0
    images_unchanged: int = 0
    image_failures: list[tuple[str, str]] = field(default_factory=list)  # (sku, reason)
    instances: int = 0
    version: str | None = None
    vector_count: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def failures(self) -> int:
        return len(self.feed_errors) + len(self.image_failures)

    def images_per_second(self) -> float:
        return self.images_processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"products: {self.products.inserted} new, {self.products.updated} changed, "
            f"{self.products.unchanged} unchanged, {self.removed_products} removed",
            f"images: {self.images_processed} processed, {self.images_unchanged} unchanged, "
            f"{len(self.image_failures)} failed; {self.instances} instances",
            f"index version {self.version}: {self.vector_count} vectors",
            f"time: {self.elapsed_s:.1f} s ({self.images_per_second():.2f} images/s); "
            + ", ".join(f"{k} {v / 1000:.1f} s" for k, v in self.timings_ms.items()),
        ]
        lines += [f"feed line {e.line}: {e.reason}" for e in self.feed_errors[:20]]
        lines += [f"image of {sku}: {reason}" for sku, reason in self.image_failures[:20]]
        if self.failures > 40:
            lines.append(f"... {self.failures - 40} more failures")
        return "\n".join(lines)


@dataclass
class _Work:
    """One image travelling through the stages."""

    image_id: int
    sku: str
    path: str
    old_hash: str | None
    data: bytes | None = None
    content_hash: str | None = None
    image: Image.Image | None = None
    error: str | None = None
    instances: list[catalog.NewInstance] = field(default_factory=list)


def run_index(
    feed: Path,
    *,
    settings: Settings,
    options: IndexOptions | None = None,
    models: IndexModels | None = None,
) -> IndexReport:
    """Bring the database and the index up to date with `feed`; publish a new index version."""
    options = options or IndexOptions()
    started = time.perf_counter()
    report = IndexReport()
    timer = Timer()
    with run_lock(settings.index.dir / "indexer.lock"):
        engine = make_engine(settings.database_url)
        try:
            sessions = make_session_factory(engine)
            with timer.stage("feed"):
                _sync_catalog(feed, sessions, options, report)
            models = models or IndexModels(
                build_segmenter(settings.models), build_embedder(settings.models)
            )
            runner = _Runner(settings, options, models, sessions, timer, report)
            runner.process_images()
            with timer.stage("publish"):
                runner.publish()
        finally:
            engine.dispose()
    report.timings_ms = timer.ms
    report.elapsed_s = time.perf_counter() - started
    log.info("index run done in %.1f s", report.elapsed_s)
    return report


def _sync_catalog(
    feed: Path, sessions: sessionmaker[Session], options: IndexOptions, report: IndexReport
) -> None:
    parsed = parse_feed(feed)
    report.feed_errors = parsed.errors
    for err in parsed.errors:
        log.warning("%s line %d: %s", feed, err.line, err.reason)
    items = parsed.items[: options.limit] if options.limit is not None else parsed.items
    with sessions() as session, session.begin():
        report.products = catalog.upsert_products(session=session, items=items)
        if parsed.errors:
            # A line that failed to parse may be a product that still exists: keep everything.
            log.warning("feed has %d bad lines: no product is removed", len(parsed.errors))
        else:
            skus = [item.sku for item in items]
            removed = catalog.remove_products_not_in(session=session, skus=skus, allow_empty=True)
            report.removed_products = len(removed)
        if options.full:
            catalog.reset_images(session=session)


class _Runner:
    def __init__(
        self,
        settings: Settings,
        options: IndexOptions,
        models: IndexModels,
        sessions: sessionmaker[Session],
        timer: Timer,
        report: IndexReport,
    ) -> None:
        self.settings = settings
        self.options = options
        self.models = models
        self.sessions = sessions
        self.timer = timer
        self.report = report
        self.batch_size = options.batch_size or settings.index.batch_size

    def process_images(self) -> None:
        embedder = self.models.embedder.name
        with self.sessions() as session:
            todo = [
                _Work(img.id, img.product.sku, img.resolved, img.content_hash)
                for img in catalog.images_to_process(
                    session=session, embedder=embedder, retry_failed=True
                )
            ]
        log.info("%d images to process", len(todo))
        bar = tqdm(total=len(todo), unit="img", desc="indexing", disable=not self.options.progress)
        with ThreadPoolExecutor(self.options.read_workers) as pool:
            for batch in _batches(todo, self.batch_size):
                loaded = list(pool.map(_read_and_decode, batch))
                self._process_batch(loaded)
                bar.update(len(batch))
        bar.close()

    def _process_batch(self, batch: list[_Work]) -> None:
        for work in batch:
            self.timer.add("read+decode", work.__dict__.pop("_ms", 0.0))
        ready = [w for w in batch if w.error is None]
        self._segment_and_embed(ready)
        with self.timer.stage("write"), self.sessions() as session, session.begin():
            self._write(session, batch)

    def _segment_and_embed(self, batch: list[_Work]) -> None:
        crops: list[Image.Image] = []
        owners: list[tuple[_Work, int]] = []
        for work in batch:
            assert work.image is not None
            try:
                with self.timer.stage("segment"):
                    instances = self.models.segmenter.segment_product(work.image)
                with self.timer.stage("crop"):
                    for inst in instances:
                        crops.append(self._crop(work.image, inst))
                        work.instances.append(_new_instance(inst, self.models.embedder.name))
                        owners.append((work, len(work.instances) - 1))
            except (RoomlensError, ValueError) as exc:
                work.error = f"segmentation failed: {exc}"
                work.instances.clear()
        if not crops:
            return
        with self.timer.stage("embed"):
            vectors = self.models.embedder.embed(crops)
        for (work, i), vector in zip(owners, vectors, strict=True):
            if work.error is None:
                work.instances[i] = _with_vector(work.instances[i], vector)

    def _crop(self, image: Image.Image, inst: Instance) -> Image.Image:
        models = self.settings.models
        return crop_instance(image, inst, margin=models.crop_margin, mode=models.crop_mode)

    def _write(self, session: Session, batch: list[_Work]) -> None:
        new = [w for w in batch if w.error is None and w.instances]
        ids = iter(catalog.next_vector_ids(session=session, n=sum(len(w.instances) for w in new)))
        for work in batch:
            if work.error is not None:
                self.report.image_failures.append((work.sku, work.error))
                catalog.set_image_result(
                    session=session, image_id=work.image_id, status="failed", error=work.error
                )
                continue
            rows = [_with_id(inst, next(ids)) for inst in work.instances]
            catalog.replace_instances(session=session, image_id=work.image_id, instances=rows)
            width, height = work.image.size if work.image is not None else (None, None)
            catalog.set_image_result(
                session=session,
                image_id=work.image_id,
                status="ok" if rows else "no_instance",
                content_hash=work.content_hash,
                width=width,
                height=height,
            )
            self.report.images_processed += 1
            self.report.instances += len(rows)

    def publish(self) -> None:
        """Build a new index version from every stored vector and make it the live one."""
        embedder = self.models.embedder
        version = new_version_id()
        with self.sessions() as session, session.begin():
            catalog.fail_running_builds(session=session)
            total = catalog.catalog_counts(session=session).vectors
            factory = choose_factory(total, embedder.dim)
            build = catalog.start_build(
                session=session,
                version=version,
                embedder=embedder.name,
                dim=embedder.dim,
                factory=factory,
            )
            build_id = build.id
        index = FaissIndex.create(embedder.dim, factory)
        with self.sessions() as session:
            for ids, vectors in catalog.iter_vectors(
                session=session, embedder=embedder.name, dim=embedder.dim
            ):
                index.add(ids, vectors)
        indexed_at = utc_now_iso()
        meta = IndexMeta(
            embedder=embedder.name,
            dim=embedder.dim,
            metric="ip",
            count=index.ntotal,
            factory=factory,
            version=version,
            indexed_at=indexed_at,
        )
        root = self.settings.index.dir
        save_index(index, version_dir(root, version), meta)
        with self.sessions() as session, session.begin():
            catalog.finish_build(
                session=session,
                build_id=build_id,
                vector_count=index.ntotal,
                counts=self._counts(),
            )
        publish_current(root, version)
        self.report.version = version
        self.report.vector_count = index.ntotal

    def _counts(self) -> dict[str, int]:
        r = self.report
        return {
            "images_processed": r.images_processed,
            "images_failed": len(r.image_failures),
            "feed_errors": len(r.feed_errors),
            "instances": r.instances,
            "removed_products": r.removed_products,
        }


def _batches(items: Sequence[_Work], size: int) -> Iterator[list[_Work]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _read_and_decode(work: _Work) -> _Work:
    """Read stage (runs in a worker thread): bytes, content hash and the decoded image."""
    start = time.perf_counter()
    try:
        work.data = Path(work.path).read_bytes()
        work.content_hash = hashlib.sha256(work.data).hexdigest()
        work.image = decode_image(work.data)
    except OSError as exc:
        work.error = f"cannot read {work.path}: {exc.strerror or exc}"
    except RoomlensError as exc:
        work.error = str(exc)
    finally:
        work.data = None
        work.__dict__["_ms"] = (time.perf_counter() - start) * 1000.0
    return work


def _new_instance(inst: Instance, embedder: str) -> catalog.NewInstance:
    return catalog.NewInstance(
        label=inst.label,
        score=inst.score,
        box=inst.box,
        mask_rle=encode_rle(inst.mask),
        mask_area=inst.mask_area,
        embedder=embedder,
    )


def _with_vector(inst: catalog.NewInstance, vector: np.ndarray) -> catalog.NewInstance:
    return replace(inst, vector=np.ascontiguousarray(vector, dtype=np.float32).tobytes())


def _with_id(inst: catalog.NewInstance, vector_id: int) -> catalog.NewInstance:
    return replace(inst, vector_id=vector_id)
