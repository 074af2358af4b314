"""One indexer run at a time: an exclusive, non-blocking file lock released by the OS on exit,
and on PostgreSQL an advisory lock as well, so runs on different hosts exclude each other."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from search.errors import IndexerBusy

log = logging.getLogger(__name__)

# Advisory locks are per database; the schema in the key keeps schemas apart.
_LOCK_KEY = "hashtext(current_schema() || '/roomlens-indexer')"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold `path` locked for the block; raise `IndexerBusy` if another process holds it.

    The kernel drops the lock when the process dies, so a `kill -9` never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexerBusy(f"another indexer run holds {path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@contextmanager
def database_lock(engine: Engine) -> Iterator[None]:
    """On PostgreSQL, hold a session advisory lock on a connection kept open for the block
    (the server drops it when the process dies); a no-op on other databases."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        if not conn.execute(text(f"SELECT pg_try_advisory_lock({_LOCK_KEY})")).scalar():
            raise IndexerBusy("another indexer run holds the database's advisory lock")
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text(f"SELECT pg_advisory_unlock({_LOCK_KEY})"))
            conn.commit()


@contextmanager
def run_lock(path: Path, engine: Engine | None = None) -> Iterator[None]:
    """The file lock at `path`, then the database lock of `engine` when given."""
    with file_lock(path):
        if engine is None:
            yield
            return
        with database_lock(engine):
            yield


def lock_is_free(path: Path, engine: Engine | None = None) -> bool:
    """Whether no indexer run holds the locks right now (takes and drops them)."""
    try:
        with run_lock(path, engine):
            return True
    except IndexerBusy:
        return False
