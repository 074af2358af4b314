"""FAISS vector index helpers: a typed wrapper, versioned on-disk layout and an exact reference.

Vectors are L2-normalised float32 embeddings and the metric is inner product, so scores are
cosine similarities. This module knows nothing of torch, images or SQL: it maps int64 ids
(catalog row ids) to vectors and back.

On-disk layout (one folder per index version, switched atomically by a pointer file)::

    ROOT/
        CURRENT                      # one line: the published version id
        20250101T120000123456Z-3fa9c1/
            vectors.faiss            # faiss.write_index of an IndexIDMap2
            index.json               # sidecar: IndexMeta + file size, written last
        20250102T...Z-.../

A version folder is written once by `save_index` and then published with `publish_current`;
a server reads `current_version_dir(root)` (or `load_current(root)`) and can swap to a newer
version without a restart. Old versions are never modified, so a crash while writing a new
version leaves the published one loadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import faiss
import numpy as np
import numpy.typing as npt

from search.errors import IndexNotReady, ModelMismatch
from search.types import Vectors

logger = logging.getLogger(__name__)

IdArray = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]

VECTORS_FILE = "vectors.faiss"
SIDECAR_FILE = "index.json"
CURRENT_FILE = "CURRENT"
SIDECAR_FORMAT = 1
METRIC = "ip"
BUILD_HINT = "run `roomlens index FEED.jsonl` to build one"

#: Up to this many vectors an exact "Flat" index is used; beyond it an IVF one, and beyond
#: `IVF_FLAT_MAX_BYTES` of raw vectors a compressed one (see `choose_factory`). HNSW stays
#: available by naming its factory.
FLAT_MAX_VECTORS = 300_000
IVF_FLAT_MAX_BYTES = 8 * 2**30  # raw float32 vectors held in memory by "IVF...,Flat"
COMPRESSED_DIM = 512  # PCA output dimensions of the compressed index (PQ: 2 per 4-bit code)
HNSW_FACTORY = "HNSW32,Flat"
IVF_NPROBE = 32  # inverted lists visited per query (bench/ann_1m.py: recall@10 >= 0.95)
IVF_TRAIN_PER_LIST = 40  # training vectors per inverted list (faiss warns below 39)
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GENERATED_RE = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{6}$")  # what new_version_id makes


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class IndexMeta:
    """What an index was built from: recorded in the `index.json` sidecar next to the vectors."""

    embedder: str
    dim: int
    metric: str
    count: int
    factory: str
    version: str
    indexed_at: str  # ISO-8601 UTC, e.g. "2025-01-01T12:00:00+00:00"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def to_json(self) -> str:
        """The fields as a JSON object string (sorted keys, stable output)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexMeta:
        """Parse a dict made by `to_dict`; unknown keys are ignored, bad types raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"index metadata must be a JSON object, got {type(data).__name__}")
        try:
            meta = cls(
                embedder=_require(data, "embedder", str),
                dim=_require(data, "dim", int),
                metric=_require(data, "metric", str),
                count=_require(data, "count", int),
                factory=_require(data, "factory", str),
                version=_require(data, "version", str),
                indexed_at=_require(data, "indexed_at", str),
                extra=dict(data.get("extra") or {}),
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"invalid index metadata: {exc}") from exc
        if meta.dim < 1 or meta.count < 0:
            raise ValueError(f"invalid index metadata: dim={meta.dim}, count={meta.count}")
        return meta

    @classmethod
    def from_json(cls, text: str) -> IndexMeta:
        """Parse a string made by `to_json`; raises ValueError when it is not valid metadata."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"index metadata is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _require(data: dict[str, Any], key: str, kind: type) -> Any:
    """`data[key]`, checked to be of `kind` (bool is not accepted as int)."""
    if key not in data:
        raise KeyError(f"missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"field {key!r} must be {kind.__name__}, got {value!r}")
    return value


def utc_now_iso() -> str:
    """The current time as ISO-8601 UTC with seconds precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def new_version_id() -> str:
    """A fresh version id that sorts by creation time, e.g. "20250101T120000123456Z-3fa9c1"."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond:06d}Z-{secrets.token_hex(3)}"


def is_generated_version(version: str) -> bool:
    """Whether `version` has the form `new_version_id` makes (and so sorts by time)."""
    return _GENERATED_RE.match(version) is not None


# --------------------------------------------------------------------------- factories


def choose_factory(
    n: int,
    dim: int,
    *,
    flat_max: int = FLAT_MAX_VECTORS,
    ivf_flat_max_bytes: int = IVF_FLAT_MAX_BYTES,
) -> str:
    """The faiss factory string for `n` vectors of `dim` dimensions (thresholds: README).

    Up to `flat_max` (300k) vectors an exact brute-force "Flat" index is used: no training,
    exact results, deletions supported, and a query costs n*dim multiply-adds (300k x 2560
    floats is ~3 GB and tens of ms per query on 2 cores). Beyond that the linear scan gets
    too slow, so "IVF{nlist},Flat" is used (nlist ~ sqrt(n), a power of 2): k-means cells
    over the raw vectors, of which `IVF_NPROBE` are scanned per query; it needs a training
    sample (`training_size`) and costs no memory beyond the vectors (9.5 GB at 1M x 2560).
    Once those raw vectors would exceed `ivf_flat_max_bytes` (8 GiB: 838k vectors of 2560-d)
    they no longer fit beside the rest of a 24 GiB server, so a compressed index is used:
    "PCAR{d},IVF{nlist},PQ{d/2}x4fs,Refine(SQfp16)" (`search.ann`): a PCA to
    `COMPRESSED_DIM` dimensions with a random rotation, IVF cells and 4-bit fast-scan PQ
    codes in memory (~140 bytes a vector), the top candidates re-ranked by exact inner
    product from float16 vectors memory-mapped from disk. HNSW ("HNSW32,Flat") answers
    faster but builds far slower on embeddings this wide (~2 hours at 1M on 2 cores) and
    holds the raw vectors too (bench/ann_1m.py measures it; bench/ann_10m.py the rest).
    """
    if n < 0 or dim < 1:
        raise ValueError(f"choose_factory needs n >= 0 and dim >= 1, got n={n}, dim={dim}")
    if n <= flat_max:
        return "Flat"
    nlist = min(max(2 ** round(math.log2(math.sqrt(n))), 256), 65_536)
    if n * dim * 4 <= ivf_flat_max_bytes:
        return f"IVF{nlist},Flat"
    reduced = min(COMPRESSED_DIM, dim - dim % 2)
    pca = f"PCAR{reduced}," if reduced >= 2 else ""
    return f"{pca}IVF{nlist},PQ{max(reduced // 2, 1)}x4fs,Refine(SQfp16)"


def training_size(factory: str, dim: int) -> int:
    """How many sample vectors `FaissIndex.create` needs to train `factory` (0: none)."""
    from search.ann import build_compressed, is_refine_factory

    if is_refine_factory(factory):
        inner = build_compressed(dim, factory)
    else:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if inner.is_trained:
        return 0
    ivf = faiss.extract_index_ivf(inner)
    return int(ivf.nlist) * IVF_TRAIN_PER_LIST


def training_record(sample: Vectors) -> dict[str, Any]:
    """What the sidecar records of a training sample: its size and a digest of its bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(sample).data).hexdigest()
    return {"vectors": int(sample.shape[0]), "sha256": digest[:16]}


def _build_faiss(dim: int, factory: str) -> Any:
    """A new, empty IndexIDMap2 over `faiss.index_factory(dim, factory, inner product)`."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if "IDMap" in factory:
        raise ValueError(f"factory {factory!r} must not contain IDMap: it is added here")
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"faiss cannot build factory {factory!r}: {exc}") from exc
    hnsw = _hnsw_of(inner)
    if hnsw is not None:
        hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.efSearch = HNSW_EF_SEARCH
    _with_direct_map(inner)
    return faiss.IndexIDMap2(inner)


def _with_direct_map(inner: Any) -> None:
    """Give an IVF index the direct map its vectors are reconstructed through (the id map
    reconstructs by position; an IVF without one raises "direct map not initialized")."""
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
        ivf.make_direct_map()


def _hnsw_of(inner: Any) -> Any | None:
    """The `faiss.HNSW` structure of an HNSW index, or None for other index types."""
    inner = faiss.downcast_index(inner)
    return inner.hnsw if isinstance(inner, faiss.IndexHNSW) else None


# --------------------------------------------------------------------------- validation


def as_vectors(vectors: npt.ArrayLike, dim: int, *, name: str = "vectors") -> Vectors:
    """`vectors` as a C-contiguous float32 (n, dim) array; a 1-D (dim,) input becomes (1, dim).

    Raises ValueError for the wrong shape or for NaN/inf values.
    """
    arr = np.asarray(vectors)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return out


def as_ids(ids: npt.ArrayLike, *, name: str = "ids") -> IdArray:
    """`ids` as a 1-D C-contiguous int64 array of non-negative integers (-1 is the pad id)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} do not fit in int64")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if out.size and out.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks padding in results)")
    return out


@dataclass(frozen=True)
class NewBatch:
    """A batch to add, checked: its ids, vectors, and the ids sorted (`order` sorts them)."""

    ids: IdArray
    vectors: Vectors
    order: IdArray
    sorted_ids: IdArray


def new_batch(ids: npt.ArrayLike, vectors: npt.ArrayLike, dim: int) -> NewBatch:
    """`ids` and `vectors` validated for an `add`: as many ids as vectors, no id twice
    (ValueError otherwise). Whether the ids are stored already is the index's to check."""
    id_arr = as_ids(ids)
    vec = as_vectors(vectors, dim)
    if vec.shape[0] != id_arr.shape[0]:
        raise ValueError(f"{id_arr.shape[0]} ids for {vec.shape[0]} vectors")
    order = np.argsort(id_arr, kind="stable")
    ordered = id_arr[order]
    dup = ordered[1:][ordered[1:] == ordered[:-1]]
    if dup.size:
        raise ValueError(f"duplicate ids in batch: {_preview(np.unique(dup))}")
    return NewBatch(id_arr, vec, order, ordered)


def lookup_ids(ids: npt.ArrayLike) -> IdArray:
    """`ids` to look up: int64, sorted, each once; negative ones (never stored) dropped."""
    values = np.unique(np.asarray(ids, dtype=np.int64).ravel())
    return values[values >= 0]


def l2_normalize(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit L2 norm as float32 (all-zero rows stay zero)."""
    arr = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    return np.ascontiguousarray(arr / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _pad_results(scores: Scores, ids: IdArray, k: int) -> tuple[Scores, IdArray]:
    """Results widened to k columns, with score -inf wherever the id is -1."""
    m, got = ids.shape
    out_scores = np.full((m, k), -np.inf, dtype=np.float32)
    out_ids = np.full((m, k), -1, dtype=np.int64)
    out_scores[:, :got] = scores
    out_ids[:, :got] = ids
    out_scores[out_ids < 0] = -np.inf
    return out_scores, out_ids


# --------------------------------------------------------------------------- index


@runtime_checkable
class VectorIndex(Protocol):
    """An id -> vector store that answers top-k inner-product queries."""

    dim: int

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        ...

    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Store `vectors` (n, dim) under `ids` (n,); ids must be new."""
        ...

    def remove(self, ids: npt.ArrayLike) -> int:
        """Delete these ids (unknown ones are ignored); returns how many were removed."""
        ...

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[Scores, IdArray]:
        """Top-k (scores (m, k) float32, ids (m, k) int64), best first, padded -inf / -1."""
        ...

    def ids(self) -> IdArray:
        """Every stored id (int64)."""
        ...

    def reconstruct(self, ids: npt.ArrayLike) -> Vectors:
        """The stored vectors (n, dim) of these ids."""
        ...

    def __contains__(self, item: object) -> bool:
        """Whether this id is stored."""
        ...

    def present(self, ids: npt.ArrayLike) -> IdArray:
        """The ones of `ids` that are stored, sorted and each once (one lookup for all)."""
        ...


class FaissIndex:
    """`VectorIndex` on a `faiss.IndexIDMap2` over a factory-built inner-product index.

    Concurrent `search` calls are safe (faiss searches are read-only and the HNSW search
    depth is passed per call); `add`/`remove` must not run concurrently with anything else.
    A serving process should swap whole index objects (load a new version, then replace the
    reference) instead of mutating the one being searched.

    `to_gpu()` keeps a GPU replica for searching when faiss has GPUs; the CPU index stays the
    source of truth for mutations, reconstruction and saving.
    """

    def __init__(self, index: Any, factory: str, *, ef_search: int = HNSW_EF_SEARCH) -> None:
        """Wrap an existing `faiss.IndexIDMap2` built from `factory` (see `create`)."""
        # no faiss.downcast_index here: it returns a non-owning proxy, and the owning one
        # (which also keeps the inner index alive) would be garbage-collected.
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"expected a faiss.IndexIDMap2, got {type(index).__name__}")
        self._wrap(index, factory, ef_search, inner=index.index)
        if self._is_ivf:
            _with_direct_map(index.index)  # versions saved before IVF indexes had one

    def _wrap(self, index: Any, factory: str, ef_search: int, *, inner: Any) -> None:
        """The state every index object holds: `index` (searched, saved), and `inner`, the
        index its kind is read from (the id map's inner index, or `index` itself)."""
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError("expected an inner-product index (metric 'ip')")
        self._index = index
        self.dim: int = int(index.d)
        self.factory = factory
        self.ef_search = ef_search
        self.nprobe = IVF_NPROBE
        self._is_hnsw = _hnsw_of(inner) is not None
        self._is_ivf = faiss.try_extract_index_ivf(inner) is not None
        self._gpu: Any | None = None
        self._gpu_resources: Any | None = None
        self._gpu_device = 0
        self._sorted_ids: IdArray | None = None
        #: the training sample's record (`training_record`), kept in the sidecar
        self.training: dict[str, Any] | None = None

    @classmethod
    def create(
        cls,
        dim: int,
        factory: str = "Flat",
        *,
        train: npt.ArrayLike | None = None,
        workdir: Path | None = None,
    ) -> FaissIndex:
        """A new empty index of `dim` dimensions (factory from `choose_factory`).

        A factory that needs training (IVF) is trained on `train`, a sample of the vectors
        to come (`training_size` of them); ValueError without one. A compressed factory
        ("...,Refine(SQfp16)", `search.ann`) writes its full vectors to a file in `workdir`
        (default: the temp folder; best the version folder, so a save renames it in place).
        """
        from search.ann import RefinedIndex, is_refine_factory

        index = None if is_refine_factory(factory) else _build_faiss(dim, factory)
        if index is not None and index.is_trained:
            return cls(index, factory)
        if train is None:
            raise ValueError(f"factory {factory!r} needs training vectors (train=...)")
        sample = as_vectors(train, dim, name="training vectors")
        logger.info("training %s on %d vectors", factory, sample.shape[0])
        out: FaissIndex
        if index is None:
            out = RefinedIndex.build(dim, factory, train=sample, workdir=workdir)
        else:
            index.train(sample)
            out = cls(index, factory)
        out.training = training_record(sample)
        return out

    # ------------------------------------------------------------------ properties

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return int(self._index.ntotal)

    @property
    def is_hnsw(self) -> bool:
        """True when the inner index is an HNSW graph (no native deletion, approximate)."""
        return self._is_hnsw

    @property
    def on_gpu(self) -> bool:
        """True when searches run on a GPU replica."""
        return self._gpu is not None

    @property
    def faiss_index(self) -> Any:
        """The underlying CPU `faiss.IndexIDMap2` (for saving; do not mutate directly)."""
        return self._index

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, factory={self.factory!r}, ntotal={self.ntotal})"

    # ------------------------------------------------------------------ mutation

    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Store `vectors` under `ids`. Raises ValueError for duplicate or already-stored ids."""
        batch = new_batch(ids, vectors, self.dim)
        id_arr, vec, new_sorted = batch.ids, batch.vectors, batch.sorted_ids
        if id_arr.size == 0:
            return
        existing = self._stored_sorted()
        present = _isin_sorted(new_sorted, existing)
        if present.any():
            raise ValueError(f"ids already in the index: {_preview(new_sorted[present])}")
        self._index.add_with_ids(vec, id_arr)
        pos = np.searchsorted(existing, new_sorted)
        self._sorted_ids = np.insert(existing, pos, new_sorted)
        self._sync_gpu()

    def remove(self, ids: npt.ArrayLike) -> int:
        """Delete `ids` (unknown ids are ignored) and return how many vectors were removed.

        Flat indexes delete in place. HNSW graphs cannot delete (faiss `remove_ids` is not
        implemented for them), and an IVF under the id map cannot either (the id map assumes
        the inner index renumbers what follows a removal, which IVF lists do not: the kept
        vectors came back under the wrong ids). Both are rebuilt from the kept vectors, the
        IVF on its trained cells: as slow as adding them again; batch removals.
        """
        id_arr = np.unique(as_ids(ids))
        if id_arr.size == 0 or self.ntotal == 0:
            return 0
        existing = self._stored_sorted()
        to_remove = id_arr[_isin_sorted(id_arr, existing)]
        if to_remove.size == 0:
            return 0
        if self.is_hnsw or self._is_ivf:
            removed = self._rebuild_without(to_remove)
        else:
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(to_remove)))
        self._sorted_ids = existing[~_isin_sorted(existing, to_remove)]
        self._sync_gpu()
        return removed

    def _rebuild_without(self, to_remove: IdArray) -> int:
        """Replace the faiss index by a fresh one holding every vector except `to_remove`."""
        all_ids = self.ids()
        keep = all_ids[~np.isin(all_ids, to_remove)]
        logger.info(
            "rebuilding %s index to remove %d of %d vectors",
            self.factory,
            all_ids.size - keep.size,
            all_ids.size,
        )
        fresh = self._empty_like()
        for start in range(0, keep.size, 65_536):
            chunk = keep[start : start + 65_536]
            fresh.add_with_ids(self._index.reconstruct_batch(chunk), chunk)
        removed = self.ntotal - int(fresh.ntotal)
        self._index = fresh
        return removed

    def _empty_like(self) -> Any:
        """A new, empty id-mapped index like this one: an IVF keeps its trained cells."""
        if not self._is_ivf:
            return _build_faiss(self.dim, self.factory)
        inner = faiss.clone_index(self._index.index)
        inner.reset()
        _with_direct_map(inner)
        return faiss.IndexIDMap2(inner)

    # ------------------------------------------------------------------ queries

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[Scores, IdArray]:
        """Top-k by inner product: (scores (m, k) float32, ids (m, k) int64), best first.

        Rows with fewer than k results are padded with score -inf and id -1. A 1-D query
        of shape (dim,) is treated as one query.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        q = as_vectors(queries, self.dim, name="queries")
        k_eff = min(k, self.ntotal)
        if q.shape[0] == 0 or k_eff == 0:
            return _pad_results(
                np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64), k
            )
        target = self._gpu if self._gpu is not None else self._index
        if self.is_hnsw and self._gpu is None:
            ef = max(self.ef_search, k_eff)
            params = faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
            scores, ids = target.search(q, k_eff, params=params)
        elif self._is_ivf and self._gpu is None:
            ivf = faiss.SearchParametersIVF(nprobe=self.nprobe)  # type: ignore[call-arg]
            scores, ids = target.search(q, k_eff, params=ivf)
        else:
            scores, ids = target.search(q, k_eff)
        return _pad_results(scores.astype(np.float32, copy=False), ids.astype(np.int64), k)

    def ids(self) -> IdArray:
        """Every stored id, in storage order."""
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, int | np.integer):
            return False
        existing = self._stored_sorted()
        pos = int(np.searchsorted(existing, item))
        return pos < existing.size and int(existing[pos]) == int(item)

    def present(self, ids: npt.ArrayLike) -> IdArray:
        """The ones of `ids` that are stored, sorted and each once."""
        wanted = lookup_ids(ids)
        return wanted[_isin_sorted(wanted, self._stored_sorted())]

    def reconstruct(self, ids: npt.ArrayLike) -> Vectors:
        """The stored vectors (n, dim) of `ids`; raises ValueError naming any unknown id."""
        id_arr = as_ids(ids)
        if id_arr.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        missing = id_arr[~_isin_sorted(id_arr, self._stored_sorted())]
        if missing.size:
            raise ValueError(f"ids not in the index: {_preview(np.unique(missing))}")
        out = self._index.reconstruct_batch(id_arr)
        return np.ascontiguousarray(out, dtype=np.float32)

    # ------------------------------------------------------------------ GPU

    def to_gpu(self, device: int = 0) -> bool:
        """Search on a GPU replica when faiss sees a GPU; returns whether one is now used.

        Without GPUs (or with faiss-cpu) this logs and keeps searching on the CPU. HNSW
        indexes have no GPU implementation and stay on the CPU as well.
        """
        if self._gpu is not None:
            return True
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            logger.info("no faiss GPU available; index stays on the CPU")
            return False
        if self.is_hnsw:
            logger.info("faiss has no GPU HNSW; %s index stays on the CPU", self.factory)
            return False
        try:
            resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(resources, device, self._index)
        except (RuntimeError, AttributeError) as exc:
            logger.warning("could not move index to GPU %d (%s); staying on the CPU", device, exc)
            self._gpu, self._gpu_resources = None, None
            return False
        self._gpu_resources, self._gpu_device = resources, device
        logger.info("searching %s on GPU %d", self, device)
        return True

    def to_cpu(self) -> None:
        """Drop the GPU replica; searches run on the CPU again."""
        self._gpu, self._gpu_resources = None, None

    def save_files(self, directory: Path) -> dict[str, Any] | None:
        """Write files beside ``vectors.faiss`` before it is written (compressed indexes:
        `search.ann`); returns the sidecar's ``refine`` entry, or None when there are none."""
        return None

    def _sync_gpu(self) -> None:
        """Re-copy the CPU index to the GPU after a mutation (only when a replica exists)."""
        if self._gpu is not None and self._gpu_resources is not None:
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, self._gpu_device, self._index)

    # ------------------------------------------------------------------ helpers

    def _stored_sorted(self) -> IdArray:
        """Sorted copy of the stored ids, cached between mutations."""
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self.ids())
        return self._sorted_ids


def _isin_sorted(values: IdArray, sorted_ref: IdArray) -> npt.NDArray[np.bool_]:
    """Element-wise membership of `values` in the sorted array `sorted_ref`."""
    if sorted_ref.size == 0:
        return np.zeros(values.shape, dtype=bool)
    pos = np.searchsorted(sorted_ref, values)
    pos = np.minimum(pos, sorted_ref.size - 1)
    return np.asarray(sorted_ref[pos] == values)


def _preview(ids: IdArray, limit: int = 10) -> str:
    """A short printable list of ids, e.g. "[1, 2, 3] (+5 more)"."""
    shown = [int(i) for i in ids[:limit]]
    more = f" (+{ids.size - limit} more)" if ids.size > limit else ""
    return f"{shown}{more}"


# --------------------------------------------------------------------------- reference


def brute_force_search(
    database: npt.ArrayLike, db_ids: npt.ArrayLike, queries: npt.ArrayLike, k: int
) -> tuple[Scores, IdArray]:
    """Exact top-k inner-product search in numpy, with the same output as `FaissIndex.search`.

    Scores are computed in float64 and returned as float32; ties are broken by position in
    `database` (earlier first). Queries are processed in chunks to bound memory.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    db = np.asarray(database, dtype=np.float64)
    if db.ndim != 2:
        raise ValueError(f"database must be 2-D, got shape {db.shape}")
    ids = np.asarray(db_ids, dtype=np.int64)
    if ids.shape != (db.shape[0],):
        raise ValueError(f"db_ids must have shape ({db.shape[0]},), got {ids.shape}")
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    if q.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"queries must have shape (m, {db.shape[1]}), got {q.shape}")
    n, k_eff = db.shape[0], min(k, db.shape[0])
    out_scores = np.empty((q.shape[0], k_eff), dtype=np.float32)
    out_ids = np.empty((q.shape[0], k_eff), dtype=np.int64)
    chunk = max(1, (1 << 24) // max(n, 1))
    for start in range(0, q.shape[0], chunk):
        sims = q[start : start + chunk] @ db.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k_eff]
        out_scores[start : start + chunk] = np.take_along_axis(sims, order, axis=1)
        out_ids[start : start + chunk] = ids[order]
    return _pad_results(out_scores, out_ids, k)


# --------------------------------------------------------------------------- persistence


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so renames inside it are durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    """fsync a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_path(directory: Path, name: str) -> Iterator[Path]:
    """A temporary file path next to `directory/name`, removed if still there afterwards."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    path = Path(tmp)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a fsynced temp file and `os.replace`."""
    with _temp_path(path.parent, path.name) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_index(index: FaissIndex, directory: Path, meta: IndexMeta) -> None:
    """Write `vectors.faiss` then the `index.json` sidecar into `directory`, each atomically.

    Each file goes to a fsynced temp file in `directory` and is moved into place with
    `os.replace`; the sidecar goes last, so a reader that sees `index.json` also sees the
    complete vectors it describes. The sidecar records the vectors file's size, which
    `load_index` checks. `meta` must describe `index` (dim, count, factory, metric "ip"),
    otherwise ValueError.

    Write each version into a new folder (`new_version_id`) and `publish_current` it:
    overwriting the published folder in place is allowed but not crash-safe (the old sidecar
    is removed first, so a crash leaves that folder "not ready" rather than inconsistent).
    """
    check_meta_matches(index, index.factory, meta)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vectors_path, sidecar_path = directory / VECTORS_FILE, directory / SIDECAR_FILE
    if sidecar_path.exists():
        logger.warning("overwriting the index in %s in place; prefer a new version", directory)
    refine = index.save_files(directory)  # first: it may re-encode the faiss index
    with _temp_path(directory, VECTORS_FILE) as tmp_vectors:
        faiss.write_index(index.faiss_index, str(tmp_vectors))
        _fsync_file(tmp_vectors)
        size = tmp_vectors.stat().st_size
        with contextlib.suppress(FileNotFoundError):
            sidecar_path.unlink()
        os.replace(tmp_vectors, vectors_path)
    payload: dict[str, Any] = {**meta.to_dict(), "format": SIDECAR_FORMAT, "vectors_bytes": size}
    if refine is not None:
        payload["refine"] = refine
    if index.training is not None:
        payload["training"] = index.training
    _atomic_write_text(sidecar_path, json.dumps(payload, sort_keys=True, indent=2) + "\n")
    logger.info("saved index %s (%d vectors) to %s", meta.version, meta.count, directory)


def check_meta_matches(index: VectorIndex, factory: str, meta: IndexMeta) -> None:
    """Raise ValueError when `meta` does not describe `index` (built from `factory`)."""
    problems = []
    if meta.count != index.ntotal:
        problems.append(f"count {meta.count} != ntotal {index.ntotal}")
    if meta.dim != index.dim:
        problems.append(f"dim {meta.dim} != index dim {index.dim}")
    if meta.metric != METRIC:
        problems.append(f"metric {meta.metric!r} != {METRIC!r}")
    if meta.factory != factory:
        problems.append(f"factory {meta.factory!r} != index factory {factory!r}")
    if problems:
        raise ValueError("IndexMeta does not match the index: " + "; ".join(problems))


def read_meta(directory: Path) -> IndexMeta:
    """The sidecar of the index in `directory`; IndexNotReady when missing or unreadable."""
    meta, _, _ = _read_sidecar(Path(directory))
    return meta


def _read_sidecar(directory: Path) -> tuple[IndexMeta, int | None, dict[str, Any]]:
    """(metadata, recorded vectors file size, the whole JSON) from `directory/index.json`."""
    sidecar = directory / SIDECAR_FILE
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndexNotReady(f"no index in {directory}; {BUILD_HINT}") from None
    except OSError as exc:
        raise IndexNotReady(f"cannot read {sidecar} ({exc}); {BUILD_HINT}") from exc
    try:
        data = json.loads(text)
        meta = IndexMeta.from_dict(data)
    except ValueError as exc:
        raise IndexNotReady(f"corrupt index sidecar {sidecar} ({exc}); {BUILD_HINT}") from exc
    size = data.get("vectors_bytes")
    return meta, size if isinstance(size, int) and not isinstance(size, bool) else None, data


def load_index(
    directory: Path,
    *,
    expected_embedder: str | None = None,
    expected_dim: int | None = None,
) -> tuple[FaissIndex, IndexMeta]:
    """Load the index version in `directory`, checking the sidecar before the vectors file.

    Raises ModelMismatch when the sidecar's embedder or dim differs from the expected ones
    (checked before reading `vectors.faiss`), and IndexNotReady when a file is missing,
    truncated or does not match its sidecar.
    """
    directory = Path(directory)
    meta, size, data = _read_sidecar(directory)
    check_expected(meta, directory, expected_embedder, expected_dim)
    vectors_path = directory / VECTORS_FILE
    try:
        actual_size = vectors_path.stat().st_size
    except FileNotFoundError:
        raise IndexNotReady(f"{vectors_path} is missing; {BUILD_HINT}") from None
    if size is not None and actual_size != size:
        raise IndexNotReady(
            f"{vectors_path} is {actual_size} bytes but its sidecar says {size} "
            f"(incomplete or replaced); {BUILD_HINT}"
        )
    from search.ann import RefinedIndex, is_refine_factory

    try:
        raw = faiss.read_index(str(vectors_path))
        if is_refine_factory(meta.factory):
            index: FaissIndex = RefinedIndex.open_files(
                raw, meta.factory, directory, dict(data.get("refine") or {})
            )
        else:
            index = FaissIndex(raw, meta.factory)
    except (RuntimeError, ValueError, OSError) as exc:
        raise IndexNotReady(f"cannot read {vectors_path} ({exc}); {BUILD_HINT}") from exc
    training = data.get("training")
    index.training = dict(training) if isinstance(training, dict) else None
    if index.dim != meta.dim or index.ntotal != meta.count:
        raise IndexNotReady(
            f"{vectors_path} holds {index.ntotal} vectors of dim {index.dim} but its sidecar "
            f"says {meta.count} of dim {meta.dim}; {BUILD_HINT}"
        )
    logger.info("loaded index %s (%d vectors) from %s", meta.version, meta.count, directory)
    return index, meta


def check_expected(meta: IndexMeta, where: object, embedder: str | None, dim: int | None) -> None:
    """Raise ModelMismatch when the metadata's embedder/dim differ from the configured ones
    (`where` names the index in the message: its folder, or its Milvus collection)."""
    if (embedder is None or meta.embedder == embedder) and (dim is None or meta.dim == dim):
        return
    want = f"embedder {embedder!r}" if embedder is not None else "the configured embedder"
    if dim is not None:
        want += f" (dim {dim})"
    raise ModelMismatch(
        f"index in {where} was built with embedder {meta.embedder!r} (dim {meta.dim}) "
        f"but {want} is configured; rebuild it with `roomlens index FEED.jsonl` "
        f"or configure embedder {meta.embedder!r}"
    )


# --------------------------------------------------------------------------- versions


def _check_version(version: str) -> None:
    """Raise ValueError for version ids that are not a plain folder name."""
    if not _VERSION_RE.match(version) or version in {".", ".."}:
        raise ValueError(f"invalid index version id {version!r}")


def version_dir(root: Path, version: str) -> Path:
    """The folder of `version` under `root`."""
    _check_version(version)
    return Path(root) / version


def list_versions(root: Path) -> list[str]:
    """Version ids under `root` that hold a sidecar, oldest first (ids sort by time)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and _VERSION_RE.match(p.name) and (p / SIDECAR_FILE).is_file()
    )


def publish_current(root: Path, version: str) -> None:
    """Atomically point `root/CURRENT` at `version` (whose folder must hold a saved index)."""
    target = version_dir(root, version)
    if not (target / SIDECAR_FILE).is_file():
        raise IndexNotReady(f"cannot publish {version}: {target} holds no saved index")
    _atomic_write_text(Path(root) / CURRENT_FILE, version + "\n")
    logger.info("published index version %s in %s", version, root)


def current_version(root: Path) -> str | None:
    """The version id named by `root/CURRENT`, or None when nothing is published."""
    try:
        version = (Path(root) / CURRENT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        _check_version(version)
    except ValueError:
        logger.warning("ignoring invalid %s in %s: %r", CURRENT_FILE, root, version)
        return None
    return version


def current_version_dir(root: Path) -> Path | None:
    """The folder of the published version, or None when none is published or it is gone."""
    version = current_version(root)
    if version is None:
        return None
    target = Path(root) / version
    if not target.is_dir():
        logger.warning("%s names %s but %s does not exist", CURRENT_FILE, version, target)
        return None
    return target


def load_current(
    root: Path,
    *,
    expected_embedder: str | None = None,
    expected_dim: int | None = None,
) -> tuple[FaissIndex, IndexMeta]:
    """`load_index` of the published version under `root`.

    Falls back to an index saved directly in `root` (unversioned layout); raises
    IndexNotReady when there is neither.
    """
    root = Path(root)
    target = current_version_dir(root)
    if target is None:
        if not (root / SIDECAR_FILE).is_file():
            raise IndexNotReady(f"no published index in {root}; {BUILD_HINT}")
        target = root
    return load_index(target, expected_embedder=expected_embedder, expected_dim=expected_dim)


def prune_versions(root: Path, *, keep: int = 2) -> list[str]:
    """Delete old version folders under `root`; returns the ids deleted, oldest first.

    Keeps the `keep` newest complete versions and the published one whatever its age;
    deletes the older complete ones, folders without a sidecar (a run that crashed while
    writing) older than the newest complete version, and leftover temp files in `root`. A
    server that loaded a deleted version keeps it in memory and moves on at the next switch.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(root)
    if not root.is_dir():
        return []
    complete = list_versions(root)
    protected = set(complete[-keep:]) | {current_version(root) or ""}
    newest = complete[-1] if complete else ""
    doomed = [
        p
        for p in sorted(root.iterdir())
        if p.is_dir()
        and _VERSION_RE.match(p.name)
        and p.name not in protected
        and (p.name in complete or (_GENERATED_RE.match(p.name) and p.name < newest))
    ]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        logger.info("deleted old index version %s", path.name)
    for tmp in root.glob(f".{CURRENT_FILE}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return [p.name for p in doomed]
