"""One indexer run at a time: an exclusive, non-blocking file lock released by the OS on exit."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search.errors import IndexerBusy


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
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
