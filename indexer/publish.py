"""The publish stage: derive a new index version from the database and make it the live one.

It works on either index store (`search.index_store`): FAISS version folders switched by the
`CURRENT` file, or Milvus collections switched by an alias. Order, each step safe to crash
after:
1. build the index from every active vector of the embedder into a new version and save it
   (readers never look at a version until the pointer names it);
2. switch the pointer atomically (servers move over at their next search or poll);
3. record the build as committed and purge the instances retired by *earlier* runs (the ones
   retired by this run stay until the next one, for servers still on the previous version);
4. delete versions older than the `keep` newest.

When the published version already holds exactly the active vectors (nothing changed), no
new version is written: the run keeps it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from search import catalog
from search.errors import IndexNotReady
from search.index import IndexMeta, new_version_id, utc_now_iso
from search.index_store import IndexStore
from search.models.base import EmbedderId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishTarget:
    """Where and for what a version is published."""

    store: IndexStore
    run_id: int
    keep_versions: int = 2


@dataclass(frozen=True)
class Published:
    version: str
    vector_count: int
    factory: str
    new: bool  # False when the published version already matched the database


def publish(
    sessions: sessionmaker[Session], embedder: EmbedderId, target: PublishTarget
) -> Published:
    """Bring the live index version in line with the database (see the module docstring)."""
    with sessions() as session:
        stats = catalog.vector_stats(session=session, embedder=embedder.name)
        unchanged = _matching_version(session, embedder, target.store, stats)
    if unchanged is not None:
        log.info("index version %s already holds the %d vectors", unchanged.version, stats[0])
        _finish(sessions, target, None)
        return unchanged
    return _build_and_switch(sessions, embedder, target, stats[0])


def _stats_counts(stats: tuple[int, int]) -> dict[str, int]:
    return {"vectors": stats[0], "max_vector_id": stats[1]}


def _matching_version(
    session: Session, embedder: EmbedderId, store: IndexStore, stats: tuple[int, int]
) -> Published | None:
    """The published version when its committed build recorded exactly these vector stats."""
    version = store.current()
    if version is None:
        return None
    build = catalog.get_build(session=session, version=version)
    if build is None or build.status != "committed" or build.embedder != embedder.name:
        return None
    recorded = {k: build.counts.get(k) for k in ("vectors", "max_vector_id")}
    try:
        meta = store.read_meta(version)
    except IndexNotReady:
        return None
    if recorded != _stats_counts(stats) or meta.count != stats[0] or meta.dim != embedder.dim:
        return None
    return Published(version, meta.count, meta.factory, new=False)


def _build_and_switch(
    sessions: sessionmaker[Session],
    embedder: EmbedderId,
    target: PublishTarget,
    expected: int,
) -> Published:
    store = target.store
    version = new_version_id()
    factory = store.choose_factory(expected, embedder.dim)
    with sessions() as session, session.begin():
        catalog.fail_running_builds(session=session)
        build_id = catalog.start_build(
            session=session,
            version=version,
            embedder=embedder.name,
            dim=embedder.dim,
            factory=factory,
        ).id
    needed = store.training_size(factory, embedder.dim)
    sample = _training_sample(sessions, embedder, needed) if needed else None
    index = store.create(version, embedder.dim, factory, train=sample)
    top = 0
    with sessions() as session:
        for ids, vectors in catalog.iter_vectors(
            session=session, embedder=embedder.name, dim=embedder.dim
        ):
            index.add(ids, vectors)
            top = max(top, int(ids[-1]))
    meta = IndexMeta(
        embedder=embedder.name,
        dim=embedder.dim,
        metric="ip",
        count=index.ntotal,
        factory=factory,
        version=version,
        indexed_at=utc_now_iso(),
        extra={"run_id": target.run_id},
    )
    store.save(index, meta)
    store.publish(version)
    _finish(sessions, target, (build_id, index.ntotal, (index.ntotal, top)))
    return Published(version, index.ntotal, factory, new=True)


def _training_sample(
    sessions: sessionmaker[Session], embedder: EmbedderId, size: int, seed: int = 0
) -> np.ndarray:
    """`size` stored vectors drawn uniformly (reservoir sampling over one pass)."""
    rng = np.random.default_rng(seed)
    sample = np.empty((size, embedder.dim), dtype=np.float32)
    seen = 0
    with sessions() as session:
        for _, vectors in catalog.iter_vectors(
            session=session, embedder=embedder.name, dim=embedder.dim
        ):
            for vector in vectors:
                if seen < size:
                    sample[seen] = vector
                else:
                    slot = int(rng.integers(0, seen + 1))
                    if slot < size:
                        sample[slot] = vector
                seen += 1
    return sample[: min(seen, size)]


def _finish(
    sessions: sessionmaker[Session],
    target: PublishTarget,
    build: tuple[int, int, tuple[int, int]] | None,
) -> None:
    """Commit the build record (when one was made), purge old retired rows, prune versions."""
    with sessions() as session, session.begin():
        if build is not None:
            build_id, count, stats = build
            catalog.finish_build(
                session=session,
                build_id=build_id,
                vector_count=count,
                counts={**_stats_counts(stats), "run_id": target.run_id},
            )
        purged = catalog.purge_retired(session=session, before_run=target.run_id)
    if purged:
        log.info("purged %d instances retired by earlier runs", purged)
    deleted = target.store.prune(keep=target.keep_versions)
    if deleted:
        log.info("deleted %d old index versions", len(deleted))
