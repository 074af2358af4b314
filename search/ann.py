"""The compressed index for catalogs whose flat vectors would not fit in memory.

Factory strings of the form ``"PCAR512,IVF4096,PQ256x4fs,Refine(SQfp16)"`` (faiss's own
syntax for an `IndexRefine`): the part before ``Refine`` is built by faiss and held in memory
(a PCA to fewer dimensions with a random rotation, IVF cells and 4-bit fast-scan PQ codes:
128 bytes a vector instead of 10 KB), and the full vectors are kept on disk as float16
(``SQfp16``) or float32 (``Flat``), memory-mapped (`search.ann_store`). A query takes the
`k_factor * k` best candidates by their codes, reads those candidates' full vectors and
re-ranks them by exact inner product, so the scores are true cosines (to float16 precision).

faiss's `IndexRefine` keeps the refine vectors in memory and cannot remove ids; here the
compressed index stores the external ids itself (an IVF does, no `IndexIDMap` needed) and a
row table maps each id to its row in the vectors file, so `add` appends a row and `remove`
marks the id's row dead: its code stays in the inverted lists and is skipped when candidates
are mapped to rows. (faiss 1.15's fast-scan lists mis-encode vectors added after a
`remove_ids`, so codes are never removed in place.) Saving writes the live rows only
(renaming the build's file when nothing was removed) next to ``vectors.faiss``, and after
removals re-encodes the inverted lists from those rows, without retraining; the sidecar
describes both files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from search.ann_store import VectorStore
from search.index import (
    SIDECAR_FILE,
    FaissIndex,
    IdArray,
    Scores,
    _fsync_file,
    _isin_sorted,
    _pad_results,
    _preview,
    as_ids,
    as_vectors,
    new_batch,
)
from search.types import Vectors

logger = logging.getLogger(__name__)

REFINE_FILE = "refine.vectors"  # rows of full vectors, dtype per the sidecar
REFINE_IDS_FILE = "refine_ids.npy"  # the id of each row (int64)
#: candidates re-ranked per result wanted (k_factor * k); see bench/ann_10m.py
K_FACTOR = 20
STORES = {"SQfp16": "float16", "Flat": "float32"}
_REFINE_RE = re.compile(r"^(?P<base>.+),Refine\((?P<store>[A-Za-z0-9]+)\)$")


def is_refine_factory(factory: str) -> bool:
    """Whether `factory` names a compressed index re-ranked from an on-disk store."""
    return _REFINE_RE.match(factory) is not None


def split_refine(factory: str) -> tuple[str, str]:
    """(faiss factory of the compressed part, store dtype) of a ``...,Refine(X)`` factory."""
    match = _REFINE_RE.match(factory)
    if match is None or match["store"] not in STORES:
        raise ValueError(
            f"factory {factory!r} is not '<faiss factory>,Refine(X)' with X in {sorted(STORES)}"
        )
    return match["base"], STORES[match["store"]]


def build_compressed(dim: int, factory: str) -> Any:
    """A new, untrained inner-product faiss index for the compressed part of `factory`."""
    base, _ = split_refine(factory)
    if "IDMap" in base or "Refine" in base:
        raise ValueError(f"factory {factory!r} must not contain IDMap or a second Refine")
    try:
        index = faiss.index_factory(dim, base, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"faiss cannot build factory {base!r}: {exc}") from exc
    if faiss.try_extract_index_ivf(index) is None:
        raise ValueError(f"the compressed part of {factory!r} must be an IVF index")
    return index


class RefinedIndex(FaissIndex):
    """`VectorIndex` over compressed IVF codes re-ranked from memory-mapped full vectors."""

    def __init__(
        self, index: Any, factory: str, store: VectorStore, row_ids: IdArray | None = None
    ) -> None:
        """Wrap a trained compressed faiss `index` (ids are external ids) and its `store`."""
        self._wrap(index, factory, 0, inner=index)
        self.k_factor = K_FACTOR
        self.store = store
        rows = np.empty(0, np.int64) if row_ids is None else np.asarray(row_ids, np.int64)
        if rows.shape != (store.rows,):
            raise ValueError(f"{rows.size} row ids for a store of {store.rows} rows")
        self._row_ids = rows  # row -> id, -1 once removed
        self._set_map()

    @classmethod
    def build(cls, dim: int, factory: str, *, train: Vectors, workdir: Path | None) -> RefinedIndex:
        """A new, empty compressed index trained on the sample `train` (checked by
        `FaissIndex.create`, which calls this)."""
        _, dtype = split_refine(factory)
        index = build_compressed(dim, factory)
        index.train(train)
        return cls(index, factory, VectorStore(dim, dtype, workdir=workdir))

    @property
    def ntotal(self) -> int:
        """Number of stored (live) vectors."""
        return int(self._map_ids.size)

    @property
    def dead_codes(self) -> int:
        """Codes of removed vectors still in the inverted lists (dropped at the next save)."""
        return int(self._index.ntotal) - self.ntotal

    # ------------------------------------------------------------------ id <-> row

    def _set_map(self) -> None:
        """Rebuild the sorted id -> row table from the row ids."""
        live = np.flatnonzero(self._row_ids >= 0)
        order = np.argsort(self._row_ids[live], kind="stable")
        self._map_rows = live[order]
        self._map_ids = self._row_ids[self._map_rows]

    def _stored_sorted(self) -> IdArray:
        return self._map_ids

    def _rows_of(self, ids: IdArray) -> IdArray:
        """The row of each id (-1 for ids not stored, including the -1 pad)."""
        if self._map_ids.size == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._map_ids, ids), self._map_ids.size - 1)
        return np.where(self._map_ids[pos] == ids, self._map_rows[pos], -1)

    # ------------------------------------------------------------------ mutation

    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Store `vectors` under `ids`. Raises ValueError for duplicate or already-stored ids."""
        batch = new_batch(ids, vectors, self.dim)
        id_arr, vec, order, new_sorted = batch.ids, batch.vectors, batch.order, batch.sorted_ids
        if id_arr.size == 0:
            return
        present = _isin_sorted(new_sorted, self._map_ids)
        if present.any():
            raise ValueError(f"ids already in the index: {_preview(new_sorted[present])}")
        self._index.add_with_ids(vec, id_arr)
        first = self.store.append(vec)
        self._row_ids = np.concatenate([self._row_ids, id_arr])
        pos = np.searchsorted(self._map_ids, new_sorted)
        self._map_ids = np.insert(self._map_ids, pos, new_sorted)
        self._map_rows = np.insert(self._map_rows, pos, first + order)

    def remove(self, ids: npt.ArrayLike) -> int:
        """Delete `ids` (unknown ids are ignored) and return how many vectors were removed.

        They are not found from now on; their codes and rows are dropped at the next save.
        """
        id_arr = np.unique(as_ids(ids))
        rows = self._rows_of(id_arr)
        known = rows[rows >= 0]
        if known.size == 0:
            return 0
        self._row_ids[known] = -1
        self._set_map()
        return int(known.size)

    # ------------------------------------------------------------------ queries

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[Scores, IdArray]:
        """Top-k by exact inner product among the `k_factor * k` best candidates by code."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        q = as_vectors(queries, self.dim, name="queries")
        k_eff = min(int(k), self.ntotal)
        if q.shape[0] == 0 or k_eff == 0:
            return _pad_results(
                np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64), k
            )
        wanted = min(int(self._index.ntotal), max(k_eff, k_eff * self.k_factor))
        ivf = faiss.SearchParametersIVF(nprobe=self.nprobe)  # type: ignore[call-arg]
        params = faiss.SearchParametersPreTransform(index_params=ivf)  # type: ignore[call-arg]
        _, candidates = self._index.search(q, wanted, params=params)
        rows = self._rows_of(candidates.astype(np.int64, copy=False))
        scores = np.full((q.shape[0], k_eff), -np.inf, dtype=np.float32)
        out_ids = np.full((q.shape[0], k_eff), -1, dtype=np.int64)
        for i in range(q.shape[0]):
            found = np.unique(rows[i][rows[i] >= 0])  # a re-added id may have two codes
            if found.size == 0:
                continue
            sims = self.store.gather(found) @ q[i]
            top = np.argsort(-sims, kind="stable")[:k_eff]
            scores[i, : top.size] = sims[top]
            out_ids[i, : top.size] = self._row_ids[found[top]]
        return _pad_results(scores, out_ids, int(k))

    def ids(self) -> IdArray:
        """Every stored id, in storage (row) order."""
        return self._row_ids[self._row_ids >= 0]

    def reconstruct(self, ids: npt.ArrayLike) -> Vectors:
        """The stored full vectors (n, dim) of `ids`, as float32 (float16-exact for SQfp16)."""
        id_arr = as_ids(ids)
        rows = self._rows_of(id_arr)
        if (rows < 0).any():
            raise ValueError(f"ids not in the index: {_preview(np.unique(id_arr[rows < 0]))}")
        return np.ascontiguousarray(self.store.gather(rows), dtype=np.float32)

    def to_gpu(self, device: int = 0) -> bool:
        """Compressed indexes search on the CPU (re-ranking reads the memory-mapped store)."""
        logger.info("%s searches on the CPU", self.factory)
        return False

    def _sync_gpu(self) -> None:
        pass

    # ------------------------------------------------------------------ files

    def save_files(self, directory: Path) -> dict[str, Any]:
        """Write the live full vectors and their ids into `directory` and drop removed codes;
        returns what the sidecar records about them (``refine``)."""
        with contextlib.suppress(FileNotFoundError):  # overwriting in place: "not ready"
            (directory / SIDECAR_FILE).unlink()
        live = self._row_ids >= 0
        size = self.store.seal(directory / REFINE_FILE, live)
        self._row_ids = self._row_ids[live]
        self._set_map()
        if self.dead_codes:
            self._reencode()
        ids_path = directory / REFINE_IDS_FILE
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{REFINE_IDS_FILE}.", suffix=".tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, self._row_ids)
            _fsync_file(Path(tmp))
            os.replace(tmp, ids_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return {
            "file": REFINE_FILE,
            "dtype": self.store.dtype_name,
            "rows": int(self._row_ids.size),
            "bytes": size,
            "ids_file": REFINE_IDS_FILE,
            "ids_bytes": ids_path.stat().st_size,
            "k_factor": self.k_factor,
        }

    def _reencode(self) -> None:
        """Refill the inverted lists from the live rows (same training), dropping dead codes."""
        logger.info("re-encoding %s without %d removed vectors", self.factory, self.dead_codes)
        self._index.reset()
        for start in range(0, self._row_ids.size, 65_536):
            rows = np.arange(start, min(start + 65_536, self._row_ids.size))
            self._index.add_with_ids(self.store.gather(rows), self._row_ids[rows])

    @classmethod
    def open_files(
        cls, index: Any, factory: str, directory: Path, refine: dict[str, Any]
    ) -> RefinedIndex:
        """The index saved in `directory`: `index` read from ``vectors.faiss`` plus the
        memory-mapped store the sidecar's `refine` entry describes. ValueError when a file is
        missing or does not match."""
        _, dtype = split_refine(factory)
        path, ids_path = directory / REFINE_FILE, directory / REFINE_IDS_FILE
        for file, key in ((path, "bytes"), (ids_path, "ids_bytes")):
            if not file.is_file():
                raise ValueError(f"{file} is missing")
            if refine.get(key) is not None and file.stat().st_size != refine[key]:
                raise ValueError(f"{file} is not the size its sidecar records")
        if refine.get("dtype", dtype) != dtype:
            raise ValueError(f"store dtype {refine.get('dtype')!r} != {dtype!r} of {factory!r}")
        row_ids = np.load(ids_path)
        store = VectorStore.open(path, int(index.d), dtype)
        out = cls(index, factory, store, row_ids)
        out.k_factor = int(refine.get("k_factor", K_FACTOR))
        if out.dead_codes:
            raise ValueError(f"{index.ntotal} codes but {out.ntotal} stored vectors")
        return out
