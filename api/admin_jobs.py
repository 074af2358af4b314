"""Index work started from the admin API, with the models the app has already loaded.

`ReindexJobs` runs `indexer.pipeline.run_index` in a background thread and remembers each
job in this process; its progress is read from the `index_runs` row the run writes.
`reindex_product` and `publish_now` apply one product change to the served index at once
(`indexer.pipeline.reindex_products` / `publish_index`: a run in the history each).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from api.state import AppState
from indexer import pipeline
from indexer.lock import lock_is_free
from indexer.sources import feed_format
from merchant import admin
from search.db import IndexRun, utcnow
from search.errors import FeedError, IndexerBusy, InvalidInput, NotFound

log = logging.getLogger(__name__)

MAX_JOBS_KEPT = 50


def lock_path(state: AppState) -> Path:
    return state.settings.index.dir / "indexer.lock"


def index_models(state: AppState) -> pipeline.IndexModels:
    """The app's loaded segmenter and embedder, for the indexer."""
    return pipeline.IndexModels(state.service.segmenter, state.service.embedder)


@dataclass
class ReindexJob:
    """One background index run started through the API."""

    id: str
    feed: Path
    full: bool
    started_at: datetime = field(default_factory=utcnow)
    status: str = "running"  # running | succeeded | partial | failed
    finished_at: datetime | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    run_id: int | None = None  # the run's index_runs id, once it has finished
    thread: threading.Thread | None = field(default=None, repr=False)


def _summary(report: pipeline.IndexReport) -> dict[str, Any]:
    return {
        **report.counts(),
        "version": report.version,
        "new_version": report.new_version,
        "elapsed_s": round(report.elapsed_s, 2),
        "timings_ms": {k: round(v, 1) for k, v in report.timings_ms.items()},
        "notes": list(report.problems.notes),
    }


def resolve_feed(state: AppState, feed: str | None) -> Path:
    """The feed to index: the one asked for, else the `index.feed` setting; checked readable."""
    chosen = feed or state.settings.index.feed
    if not chosen:
        raise InvalidInput("no feed given and no ROOMLENS_INDEX__FEED setting")
    path = Path(chosen)
    feed_format(path)
    if not path.is_file():
        raise FeedError(f"cannot read feed {path}: no such file")
    return path


class ReindexJobs:
    """The background index runs of this process (the newest `MAX_JOBS_KEPT`)."""

    def __init__(self) -> None:
        self._jobs: dict[str, ReindexJob] = {}
        self._lock = threading.Lock()

    def start(self, state: AppState, feed: Path, full: bool = False) -> ReindexJob:
        """Start a run in a background thread; `IndexerBusy` when one is running anywhere."""
        with self._lock:
            if any(job.status == "running" for job in self._jobs.values()):
                raise IndexerBusy("an index run started from the API is still running")
            if not lock_is_free(lock_path(state), state.engine):  # another process indexing
                raise IndexerBusy("another indexer run holds the lock")
            job = ReindexJob(id=uuid.uuid4().hex[:12], feed=feed, full=full)
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-MAX_JOBS_KEPT]:
                del self._jobs[old]
        job.thread = threading.Thread(
            target=self._run, args=(job, state), name=f"reindex-{job.id}", daemon=True
        )
        job.thread.start()
        log.info("reindex job %s started on %s (full=%s)", job.id, feed, full)
        return job

    def _run(self, job: ReindexJob, state: AppState) -> None:
        options = pipeline.IndexOptions(full=job.full, progress=False)
        try:
            report = pipeline.run_index(
                job.feed, settings=state.settings, options=options, models=index_models(state)
            )
        except Exception as exc:  # the job records any failure; the thread must not die loud
            log.exception("reindex job %s failed", job.id)
            job.error, job.status = str(exc) or type(exc).__name__, "failed"
        else:
            job.summary, job.run_id = _summary(report), report.run_id
            job.status = "partial" if report.status == "partial" else "succeeded"
        job.finished_at = utcnow()

    def get(self, job_id: str) -> ReindexJob:
        """A job of this process; `NotFound` for an unknown (or long forgotten) id."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no reindex job {job_id!r} in this server process")
        return job


def job_run(state: AppState, job: ReindexJob) -> IndexRun | None:
    """The `index_runs` row of a job: its own once finished, else the first run of its feed
    that started since the job did (None until the run has recorded itself)."""
    with state.session_factory() as session:
        if job.run_id is not None:
            return session.get(IndexRun, job.run_id)
        runs = admin.runs_since(session=session, started=job.started_at)
    wanted = os.path.realpath(job.feed)
    same_feed = [run for run in runs if os.path.realpath(run.feed) == wanted]
    return same_feed[0] if same_feed else None


# --- one product, at once --------------------------------------------------------------------


def _options() -> pipeline.IndexOptions:
    return pipeline.IndexOptions(progress=False)


def reindex_product(state: AppState, sku: str) -> pipeline.IndexReport:
    """Segment and embed one product's images now and publish a new index version.

    `IndexerBusy` (409) while another run holds the lock.
    """
    return pipeline.reindex_products(
        [sku], settings=state.settings, options=_options(), models=index_models(state)
    )


def publish_now(state: AppState) -> pipeline.IndexReport:
    """Publish a new index version from the stored vectors (e.g. after a delete)."""
    return pipeline.publish_index(
        settings=state.settings, options=_options(), models=index_models(state)
    )
