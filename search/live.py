"""The index a server serves: loaded once, swapped atomically when a new version is published.

`LiveIndex.get()` reads the `CURRENT` pointer on each call. When it names a new version, the
first caller loads it while every other caller keeps getting the version already loaded, so
a large index loading never holds searches up; the swap is one reference assignment. A new
version that fails to load (deleted, truncated, built by another embedder) is logged, the
old one stays in service, and the load is tried again after `retry_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from search.errors import IndexNotReady, RoomlensError
from search.index import FaissIndex, IndexMeta, current_version_dir, load_index

log = logging.getLogger(__name__)

RETRY_S = 30.0


@dataclass(frozen=True)
class LoadedIndex:
    directory: Path
    index: FaissIndex
    meta: IndexMeta


class LiveIndex:
    """Follows the `CURRENT` pointer under `root`; a search always sees one whole version."""

    def __init__(self, root: Path, *, embedder: str, dim: int, retry_s: float = RETRY_S) -> None:
        self.root = root
        self.embedder = embedder
        self.dim = dim
        self.retry_s = retry_s
        self._loaded: LoadedIndex | None = None
        self._lock = threading.Lock()
        self._failed: tuple[Path, float, RoomlensError] | None = None  # directory, when, why

    def get(self) -> LoadedIndex:
        """The current version, loading it first if it is new (see the module docstring).

        Raises `IndexNotReady` (or `ModelMismatch`) only when no version is loaded yet.
        """
        directory = current_version_dir(self.root)
        loaded = self._loaded
        if directory is None:
            if loaded is not None:
                return loaded  # the pointer went away: keep serving what we have
            raise IndexNotReady(
                f"no index has been built under {self.root}; run `roomlens index FEED.jsonl`"
            )
        if loaded is not None and loaded.directory == directory:
            return loaded
        if loaded is None:
            with self._lock:  # nothing to serve meanwhile: wait for the first load
                return self._load(directory, raise_errors=True)
        if not self._lock.acquire(blocking=False):
            return loaded  # another caller is loading the new version
        try:
            return self._load(directory, raise_errors=False)
        finally:
            self._lock.release()

    def _load(self, directory: Path, *, raise_errors: bool) -> LoadedIndex:
        """Load `directory` unless it is loaded already or failed lately; hold `_lock`."""
        current = self._loaded
        if current is not None and current.directory == directory:
            return current
        failed = self._failed
        if failed is not None and failed[0] == directory and time.monotonic() < failed[1]:
            if current is None or raise_errors:
                raise failed[2]
            return current
        try:
            index, meta = load_index(
                directory, expected_embedder=self.embedder, expected_dim=self.dim
            )
            index.to_gpu()  # a GPU replica for searching when faiss sees one; else a no-op
        except RoomlensError as exc:
            self._failed = (directory, time.monotonic() + self.retry_s, exc)
            if current is None or raise_errors:
                raise
            log.error(
                "cannot load index %s (%s); still serving %s", directory, exc, current.meta.version
            )
            return current
        self._failed = None
        self._loaded = LoadedIndex(directory, index, meta)
        log.info("serving index version %s (%d vectors)", meta.version, meta.count)
        return self._loaded

    def peek(self) -> LoadedIndex | None:
        """The loaded version without touching the disk (for health checks)."""
        return self._loaded
