"""The index a server serves: loaded once, swapped atomically when a new version is published.

`LiveIndex.get()` asks the index store which version is current (the `CURRENT` file of the
FAISS store on each call; the Milvus alias at most every `poll_s` seconds). When it names a
new version, the first caller loads it while every other caller keeps getting the version
already loaded, so a large index loading never holds searches up; the swap is one reference
assignment. A new version that fails to load (deleted, truncated, built by another embedder)
is logged, the old one stays in service, and the load is tried again after `retry_s`. So does
a store that cannot be asked (Milvus down): the loaded version keeps answering.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from search.errors import IndexNotReady, RoomlensError
from search.index import FaissIndex, IndexMeta, VectorIndex
from search.index_store import FileIndexStore, IndexStore

log = logging.getLogger(__name__)

RETRY_S = 30.0


@dataclass(frozen=True)
class LoadedIndex:
    version: str
    index: VectorIndex
    meta: IndexMeta


class LiveIndex:
    """Follows the store's current version; a search always sees one whole version.

    `store` is an `IndexStore`, or the root folder of a FAISS file store.
    """

    def __init__(
        self,
        store: IndexStore | Path,
        *,
        embedder: str,
        dim: int,
        retry_s: float = RETRY_S,
        poll_s: float | None = None,
    ) -> None:
        self.store: IndexStore = FileIndexStore(store) if isinstance(store, Path) else store
        self.embedder = embedder
        self.dim = dim
        self.retry_s = retry_s
        self.poll_s = self.store.poll_s if poll_s is None else poll_s
        self._loaded: LoadedIndex | None = None
        self._checked = -math.inf  # when the store was last asked (time.monotonic)
        self._lock = threading.Lock()
        self._failed: tuple[str, float, RoomlensError] | None = None  # version, when, why

    def get(self) -> LoadedIndex:
        """The current version, loading it first if it is new (see the module docstring).

        Raises `IndexNotReady` (or `ModelMismatch`) only when no version is loaded yet.
        """
        loaded = self._loaded
        now = time.monotonic()
        if loaded is not None and now - self._checked < self.poll_s:
            return loaded
        try:
            version = self.store.current()
        except RoomlensError as exc:
            if loaded is None:
                raise
            log.warning("cannot ask %s for the current version (%s)", self.store.describe(), exc)
            return loaded
        self._checked = now
        if version is None:
            if loaded is not None:
                return loaded  # the pointer went away: keep serving what we have
            raise IndexNotReady(
                f"no index has been built in {self.store.describe()}; "
                "run `roomlens index FEED.jsonl`"
            )
        if loaded is not None and loaded.version == version:
            return loaded
        if loaded is None:
            with self._lock:  # nothing to serve meanwhile: wait for the first load
                return self._load(version, raise_errors=True)
        if not self._lock.acquire(blocking=False):
            return loaded  # another caller is loading the new version
        try:
            return self._load(version, raise_errors=False)
        finally:
            self._lock.release()

    def _load(self, version: str, *, raise_errors: bool) -> LoadedIndex:
        """Load `version` unless it is loaded already or failed lately; hold `_lock`."""
        current = self._loaded
        if current is not None and current.version == version:
            return current
        failed = self._failed
        if failed is not None and failed[0] == version and time.monotonic() < failed[1]:
            if current is None or raise_errors:
                raise failed[2]
            return current
        try:
            index, meta = self.store.load(
                version, expected_embedder=self.embedder, expected_dim=self.dim
            )
            if isinstance(index, FaissIndex):
                index.to_gpu()  # a GPU replica for searching when faiss sees one; else a no-op
        except RoomlensError as exc:
            self._failed = (version, time.monotonic() + self.retry_s, exc)
            if current is None or raise_errors:
                raise
            log.error(
                "cannot load index %s (%s); still serving %s", version, exc, current.meta.version
            )
            return current
        self._failed = None
        self._loaded = LoadedIndex(version, index, meta)
        log.info("serving index version %s (%d vectors)", meta.version, meta.count)
        return self._loaded

    def peek(self) -> LoadedIndex | None:
        """The loaded version without asking the store (for health checks)."""
        return self._loaded
