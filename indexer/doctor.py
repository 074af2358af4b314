"""`roomlens doctor`: check that the database and the published index agree, and say what is
wrong and what to do about it.

Errors: no published index or one that does not load (missing files or collection, sidecar
or metadata count, other embedder), on either index store (FAISS files or Milvus); vector ids
in the database but not in the index or the other way round; vectors that differ between the
two (a sample); instances without a vector; "ok" images without any.
Warnings: images not processed yet or failed, instances of another embedder, runs that were
interrupted or failed, a published version without a committed build record. While a run
holds the lock the database is ahead of the index by design: differences are reported as
warnings and the exit code says "busy".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from indexer.lock import lock_is_free
from indexer.runs import latest_runs
from search import catalog
from search.config import Settings
from search.db import InstanceRow, ProductImage, make_engine, make_session_factory
from search.errors import RoomlensError
from search.exit_codes import ExitCode
from search.index import IndexMeta, VectorIndex
from search.index_store import IndexStore, open_index_store

log = logging.getLogger(__name__)

Level = Literal["ok", "warning", "error"]
SAMPLE_SHOWN = 5


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.check}: {self.message}"


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    busy: bool = False

    def add(self, level: Level, check: str, message: str) -> None:
        self.findings.append(Finding(level, check, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def exit_code(self) -> int:
        """0 healthy; 1 something is wrong; 75 a run is in progress (check again later)."""
        if self.busy:
            return ExitCode.BUSY
        return ExitCode.ERROR if self.errors else ExitCode.OK

    def summary(self) -> str:
        lines = [str(f) for f in self.findings]
        verdict = (
            "a run is in progress"
            if self.busy
            else (f"{len(self.errors)} problem(s)" if self.errors else "healthy")
        )
        return "\n".join([*lines, verdict])


@dataclass(frozen=True)
class Expected:
    """The configured embedder the index must have been built with."""

    embedder: str
    dim: int


def run_doctor(settings: Settings, expected: Expected, *, sample: int = 256) -> DoctorReport:
    """Every check, against the database and the index store (FAISS or Milvus) that
    `settings` point at."""
    report = DoctorReport()
    engine = make_engine(settings.database_url)
    store = open_index_store(settings.index)
    try:
        report.busy = not lock_is_free(settings.index.dir / "indexer.lock", engine)
        with make_session_factory(engine)() as session:
            _check_runs(session, report)
            _check_images(session, expected, report)
            loaded = _check_index(store, expected, report)
            if loaded is not None:
                _check_agreement(session, expected, loaded, report, sample)
    finally:
        store.close()
        engine.dispose()
    return report


def _sample(ids: Sequence[int] | np.ndarray) -> str:
    shown = [int(i) for i in list(ids)[:SAMPLE_SHOWN]]
    more = f" (+{len(ids) - SAMPLE_SHOWN} more)" if len(ids) > SAMPLE_SHOWN else ""
    return f"{shown}{more}"


def _check_runs(session: Session, report: DoctorReport) -> None:
    recent = latest_runs(session=session, limit=1)
    if not recent:
        report.add("warning", "runs", "no indexer run recorded yet")
        return
    run = recent[0]
    done = f"{run.progress.get('done', 0)}/{run.progress.get('total', '?')} images"
    if run.status == "running" and report.busy:
        report.add("warning", "runs", f"run {run.id} is in progress ({done})")
    elif run.status in ("running", "interrupted"):
        report.add(
            "warning", "runs", f"run {run.id} was interrupted after {done}; the next run resumes"
        )
    elif run.status == "failed":
        report.add("warning", "runs", f"run {run.id} failed: {run.error}")
    else:
        report.add("ok", "runs", f"last run {run.id} {run.status} at {run.finished_at}")


def _check_images(session: Session, expected: Expected, report: DoctorReport) -> None:
    counts = catalog.catalog_counts(session=session)
    images = counts.images
    report.add(
        "ok",
        "catalog",
        f"{counts.products} products, images {images}, {counts.vectors} vectors, "
        f"{counts.retired} retired instances waiting for the next run to purge them",
    )
    if images.get("pending"):
        report.add("warning", "images", f"{images['pending']} images not processed yet")
    if images.get("failed"):
        errors = session.scalars(
            select(ProductImage.error).where(ProductImage.status == "failed").limit(3)
        )
        report.add("warning", "images", f"{images['failed']} images failed, e.g. {list(errors)}")
    active = catalog.active_instances()
    empty = (
        select(func.count())
        .select_from(ProductImage)
        .where(
            ProductImage.status == "ok",
            ~select(InstanceRow.id).where(InstanceRow.image_id == ProductImage.id, active).exists(),
        )
    )
    if n := session.scalar(empty):
        report.add("error", "images", f"{n} images marked ok have no instance: run index again")
    broken = (
        select(func.count())
        .select_from(InstanceRow)
        .where(active, or_(InstanceRow.vector_id.is_(None), InstanceRow.vector.is_(None)))
    )
    if n := session.scalar(broken):
        report.add("error", "instances", f"{n} instances lack a vector id or a vector")
    other = (
        select(func.count())
        .select_from(InstanceRow)
        .where(active, InstanceRow.embedder != expected.embedder)
    )
    if n := session.scalar(other):
        report.add(
            "warning",
            "instances",
            f"{n} instances were embedded by another embedder than {expected.embedder!r}: "
            "run index to re-embed them",
        )


def _check_index(
    store: IndexStore, expected: Expected, report: DoctorReport
) -> tuple[VectorIndex, IndexMeta] | None:
    try:
        index, meta = store.load_current(
            expected_embedder=expected.embedder, expected_dim=expected.dim
        )
        versions = store.list_versions()
    except RoomlensError as exc:
        report.add("error", "index", str(exc))
        return None
    report.add(
        "ok",
        "index",
        f"version {meta.version} in {store.describe()}, {meta.count} vectors, "
        f"{meta.factory}, embedder {meta.embedder}, indexed at {meta.indexed_at}; "
        f"{len(versions)} saved versions",
    )
    return index, meta


def _check_agreement(
    session: Session,
    expected: Expected,
    loaded: tuple[VectorIndex, IndexMeta],
    report: DoctorReport,
    sample: int,
) -> None:
    index, meta = loaded
    build = catalog.get_build(session=session, version=meta.version)
    if build is None or build.status != "committed":
        report.add(
            "warning",
            "builds",
            f"published version {meta.version} has no committed build record "
            f"({build.status if build else 'none'}): the run that made it stopped early",
        )
    db_ids = np.asarray(catalog.vector_ids(session=session, embedder=expected.embedder))
    ix_ids = np.sort(index.ids())
    missing = np.setdiff1d(db_ids, ix_ids)
    extra = np.setdiff1d(ix_ids, db_ids)
    level: Level = "warning" if report.busy else "error"
    if missing.size:
        report.add(
            level,
            "agreement",
            f"{missing.size} database vectors are not in the index {_sample(missing)}: "
            "run index to publish them",
        )
    if extra.size:
        report.add(
            level,
            "agreement",
            f"{extra.size} index vectors are no longer in the database {_sample(extra)}: "
            "run index to publish a version without them",
        )
    if not missing.size and not extra.size:
        report.add("ok", "agreement", f"the index holds exactly the {db_ids.size} database vectors")
    _compare_vectors(session, index, np.intersect1d(db_ids, ix_ids), report, sample)


def _compare_vectors(
    session: Session, index: VectorIndex, common: np.ndarray, report: DoctorReport, sample: int
) -> None:
    if not common.size or sample < 1:
        return
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(common, size=min(sample, common.size), replace=False))
    rows = session.execute(
        select(InstanceRow.vector_id, InstanceRow.vector).where(
            InstanceRow.vector_id.in_([int(i) for i in chosen])
        )
    ).all()
    stored = {int(vid): raw or b"" for vid, raw in rows if vid is not None}
    ids = np.asarray(sorted(stored), dtype=np.int64)
    in_index = index.reconstruct(ids)
    same = [
        len(stored[int(i)]) == index.dim * 4
        and np.allclose(np.frombuffer(stored[int(i)], dtype=np.float32), row, atol=1e-5)
        for i, row in zip(ids, in_index, strict=True)
    ]
    differ = ids[~np.asarray(same, dtype=bool)]
    if differ.size:
        report.add(
            "error",
            "vectors",
            f"{differ.size} of {ids.size} sampled vectors differ between the database and the "
            f"index {_sample(differ)}: run index --full",
        )
    else:
        report.add("ok", "vectors", f"{ids.size} sampled vectors are identical in both")
