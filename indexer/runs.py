"""The run history (`index_runs`): one row per `roomlens index`, followed live by an admin page.

A run is "running" while it works, with `progress` updated in the same transaction as each
batch it commits (so the row never claims work the database does not hold), and ends
"succeeded", "partial" (finished, but some feed lines or images failed, or removals were
skipped), "failed" (an error stopped it) or "interrupted" (stopped by a signal, or found
still "running" by the next run after its process died).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from search.db import IndexRun, utcnow

MAX_LISTED_FAILURES = 1000  # per kind, in the row; the counts stay exact


@dataclass
class Failures:
    """What went wrong in a run, for the history row and the report."""

    feed: list[dict[str, Any]] = field(default_factory=list)  # {"line", "reason"}
    images: list[dict[str, Any]] = field(default_factory=list)  # {"sku", "image", "reason"}
    notes: list[str] = field(default_factory=list)  # e.g. removals skipped, and why
    feed_total: int = 0
    images_total: int = 0

    def add_feed(self, line: int, reason: str) -> None:
        self.feed_total += 1
        if len(self.feed) < MAX_LISTED_FAILURES:
            self.feed.append({"line": line, "reason": reason})

    def add_image(self, sku: str, image: str, reason: str) -> None:
        self.images_total += 1
        if len(self.images) < MAX_LISTED_FAILURES:
            self.images.append({"sku": sku, "image": image, "reason": reason})

    @property
    def any(self) -> bool:
        return bool(self.feed_total or self.images_total or self.notes)

    def to_json(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "feed_total": self.feed_total,
            "images": self.images,
            "images_total": self.images_total,
            "notes": self.notes,
        }


def start_run(*, session: Session, feed: str, full: bool) -> IndexRun:
    """Record a run that starts now; runs left "running" by a dead process become
    "interrupted" (call it holding the indexer lock, so none of them is alive)."""
    interrupt_stale_runs(session=session)
    run = IndexRun(feed=feed, full=full, status="running", pid=os.getpid())
    session.add(run)
    session.flush()
    return run


def interrupt_stale_runs(*, session: Session) -> int:
    """Mark every "running" run as "interrupted"; returns how many."""
    stmt = (
        update(IndexRun)
        .where(IndexRun.status == "running")
        .values(status="interrupted", finished_at=utcnow(), error="the process stopped")
    )
    result = session.execute(stmt, execution_options={"synchronize_session": False})
    return int(cast(CursorResult[Any], result).rowcount)


def update_progress(
    *, session: Session, run_id: int, progress: Mapping[str, Any], counts: Mapping[str, Any]
) -> None:
    """Store the progress and the counts so far (in the caller's transaction)."""
    session.execute(
        update(IndexRun)
        .where(IndexRun.id == run_id)
        .values(progress=dict(progress), counts=dict(counts)),
        execution_options={"synchronize_session": False},
    )


@dataclass(frozen=True)
class RunEnd:
    """How a run ended, for `finish_run`."""

    status: str
    counts: Mapping[str, Any]
    failures: Mapping[str, Any]
    timings_ms: Mapping[str, float]
    version: str | None = None
    error: str | None = None


def finish_run(*, session: Session, run_id: int, end: RunEnd) -> None:
    """Close a run with its final status, counts, failures and per-stage timings."""
    session.execute(
        update(IndexRun)
        .where(IndexRun.id == run_id)
        .values(
            status=end.status,
            finished_at=utcnow(),
            counts=dict(end.counts),
            failures=dict(end.failures),
            timings_ms={k: round(v, 1) for k, v in end.timings_ms.items()},
            version=end.version,
            error=end.error,
        ),
        execution_options={"synchronize_session": False},
    )


def latest_runs(*, session: Session, limit: int = 20) -> list[IndexRun]:
    """The most recent runs, newest first."""
    stmt = select(IndexRun).order_by(IndexRun.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def get_run(*, session: Session, run_id: int) -> IndexRun | None:
    return session.get(IndexRun, run_id)


FULL_RESET = "full_reset"  # progress key: this --full run has queued every image again


def should_resume_full(*, session: Session) -> bool:
    """True when the last run was a `--full` run that queued every image and then did not
    finish: a new `--full` run resumes it (what it redid is not redone) instead of restarting.

    Call it before `start_run`."""
    previous = session.scalars(select(IndexRun).order_by(IndexRun.id.desc()).limit(1)).first()
    return (
        previous is not None
        and previous.full
        and previous.status in ("running", "interrupted", "failed")
        and bool((previous.progress or {}).get(FULL_RESET))
    )
