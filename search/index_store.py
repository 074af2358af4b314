"""Where index versions live: the `IndexStore` seam and the embedded FAISS-file store.

An index store holds immutable index *versions* and a pointer naming the published one.
A writer creates a version (`create`), fills it (`VectorIndex.add`), completes it (`save`),
then switches the pointer (`publish`); readers ask which version is published (`current`)
and load it (`load`). A version that was never saved is never listed, loaded or published,
so a writer that dies half-way leaves the published version untouched.

Two stores implement the seam:

* `FileIndexStore` (backend "faiss", the default): FAISS files in version folders under a
  root, the `CURRENT` file as the pointer (see `search.index`).
* `search.milvus_index.MilvusIndexStore` (backend "milvus"): one Milvus collection per
  version and a collection alias as the pointer.

`open_index_store(settings.index)` picks one; `pymilvus` is imported only for "milvus".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy.typing as npt

from search.errors import IndexNotReady
from search.index import (
    BUILD_HINT,
    FaissIndex,
    IndexMeta,
    VectorIndex,
    choose_factory,
    current_version,
    list_versions,
    load_current,
    load_index,
    prune_versions,
    publish_current,
    read_meta,
    save_index,
    training_size,
    version_dir,
)

if TYPE_CHECKING:
    from search.config import IndexSettings

log = logging.getLogger(__name__)


@runtime_checkable
class IndexStore(Protocol):
    """Versioned vector indexes with an atomically switched "current" pointer."""

    backend: str
    #: how long a server may keep answering from its loaded version before asking the
    #: store which version is current again (0: ask on every search)
    poll_s: float

    def describe(self) -> str:
        """Where the versions live, for messages (a folder, or a Milvus URI and prefix)."""
        ...

    def choose_factory(self, n: int, dim: int) -> str:
        """The index type for `n` vectors of `dim` dimensions (recorded as `IndexMeta.factory`)."""
        ...

    def training_size(self, factory: str, dim: int) -> int:
        """How many sample vectors `create` needs to train `factory` (0: none)."""
        ...

    def create(
        self, version: str, dim: int, factory: str, *, train: npt.ArrayLike | None = None
    ) -> VectorIndex:
        """A new, empty index for `version`, not visible to readers until `save`."""
        ...

    def save(self, index: VectorIndex, meta: IndexMeta) -> None:
        """Complete version `meta.version` holding `index` (made by `create`); ValueError when
        `meta` does not describe it. Only saved versions are listed, loaded or published."""
        ...

    def publish(self, version: str) -> None:
        """Atomically make the saved `version` the current one (IndexNotReady if not saved)."""
        ...

    def current(self) -> str | None:
        """The published version id, or None when nothing is published."""
        ...

    def read_meta(self, version: str) -> IndexMeta:
        """The metadata of the saved `version`; IndexNotReady when it is missing or broken."""
        ...

    def load(
        self,
        version: str,
        *,
        expected_embedder: str | None = None,
        expected_dim: int | None = None,
    ) -> tuple[VectorIndex, IndexMeta]:
        """The saved `version`, ready to search. ModelMismatch when it was built by another
        embedder or dimension (checked before the vectors are read); IndexNotReady when it
        is missing, incomplete or unreadable."""
        ...

    def load_current(
        self, *, expected_embedder: str | None = None, expected_dim: int | None = None
    ) -> tuple[VectorIndex, IndexMeta]:
        """`load` of the published version; IndexNotReady when none is published."""
        ...

    def list_versions(self) -> list[str]:
        """Saved version ids, oldest first (generated ids sort by time)."""
        ...

    def prune(self, *, keep: int) -> list[str]:
        """Delete old versions, keeping the `keep` newest saved ones and the published one, and
        the unfinished leftovers of crashed writers; returns the ids deleted, oldest first."""
        ...

    def close(self) -> None:
        """Release connections (a no-op for files); the store reconnects when used again."""
        ...


class FileIndexStore:
    """`IndexStore` over FAISS files: a folder per version under `root`, the `CURRENT` file."""

    backend = "faiss"
    poll_s = 0.0  # reading CURRENT is one small file read

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FileIndexStore({str(self.root)!r})"

    def describe(self) -> str:
        return str(self.root)

    def choose_factory(self, n: int, dim: int) -> str:
        return choose_factory(n, dim)

    def training_size(self, factory: str, dim: int) -> int:
        return training_size(factory, dim)

    def create(
        self, version: str, dim: int, factory: str, *, train: npt.ArrayLike | None = None
    ) -> FaissIndex:
        version_dir(self.root, version)  # validates the id
        # a compressed index's full vectors go to a file under the root: the same file
        # system as the version folder, so saving renames it into place
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(self.root)
        return FaissIndex.create(dim, factory, train=train, workdir=self.root)

    def save(self, index: VectorIndex, meta: IndexMeta) -> None:
        if not isinstance(index, FaissIndex):
            raise ValueError(f"the file store saves FaissIndex objects, not {type(index)}")
        save_index(index, version_dir(self.root, meta.version), meta)

    def publish(self, version: str) -> None:
        publish_current(self.root, version)

    def current(self) -> str | None:
        return current_version(self.root)

    def read_meta(self, version: str) -> IndexMeta:
        return read_meta(version_dir(self.root, version))

    def load(
        self,
        version: str,
        *,
        expected_embedder: str | None = None,
        expected_dim: int | None = None,
    ) -> tuple[FaissIndex, IndexMeta]:
        directory = version_dir(self.root, version)
        if not directory.is_dir():
            raise IndexNotReady(f"index version {version} is gone from {self.root}; {BUILD_HINT}")
        return load_index(directory, expected_embedder=expected_embedder, expected_dim=expected_dim)

    def load_current(
        self, *, expected_embedder: str | None = None, expected_dim: int | None = None
    ) -> tuple[FaissIndex, IndexMeta]:
        return load_current(
            self.root, expected_embedder=expected_embedder, expected_dim=expected_dim
        )

    def list_versions(self) -> list[str]:
        return list_versions(self.root)

    def prune(self, *, keep: int) -> list[str]:
        return prune_versions(self.root, keep=keep)

    def close(self) -> None:
        pass


def open_index_store(settings: IndexSettings) -> IndexStore:
    """The store `settings.backend` names: FAISS files under `settings.dir`, or Milvus."""
    if settings.backend == "milvus":
        from search.milvus_index import MilvusIndexStore  # pymilvus only when configured

        return MilvusIndexStore.from_settings(settings)
    return FileIndexStore(settings.dir)


def _remove_stale_builds(root: Path) -> None:
    """Delete the vectors files of compressed builds that died before saving (up to the size
    of the whole catalog each). A build only starts under the indexer lock, so no other
    build is writing one."""
    from search.ann_store import stale_pending_files

    for stale in stale_pending_files(root):
        size = stale.stat().st_size
        stale.unlink(missing_ok=True)
        log.warning("removed %s (%d bytes) left by a build that did not finish", stale, size)
