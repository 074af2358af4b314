"""The index a server serves: loaded once, swapped atomically when a new version is published."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from search.errors import IndexNotReady
from search.index import FaissIndex, IndexMeta, current_version_dir, load_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedIndex:
    directory: Path
    index: FaissIndex
    meta: IndexMeta


class LiveIndex:
    """Follows the `CURRENT` pointer under `root`; a search always sees one whole version."""

    def __init__(self, root: Path, *, embedder: str, dim: int) -> None:
        self.root = root
        self.embedder = embedder
        self.dim = dim
        self._loaded: LoadedIndex | None = None
        self._lock = threading.Lock()

    def get(self) -> LoadedIndex:
        """The current version, reloading first if a newer one was published."""
        directory = current_version_dir(self.root)
        if directory is None:
            raise IndexNotReady(
                f"no index has been built under {self.root}; run `roomlens index FEED.jsonl`"
            )
        loaded = self._loaded
        if loaded is not None and loaded.directory == directory:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.directory != directory:
                index, meta = load_index(
                    directory, expected_embedder=self.embedder, expected_dim=self.dim
                )
                self._loaded = LoadedIndex(directory, index, meta)
                log.info("serving index version %s (%d vectors)", meta.version, meta.count)
            return self._loaded

    def peek(self) -> LoadedIndex | None:
        """The loaded version without touching the disk (for health checks)."""
        return self._loaded
