"""The Milvus backend: a `VectorIndex` over one Milvus collection and an `IndexStore` that
keeps one collection per index version behind a collection alias.

Layout in the Milvus database (PREFIX is `settings.index.milvus_prefix`, "roomlens")::

    PREFIX_v_<version>     one collection per version ("-" in the id becomes "_"): an INT64
                           primary key `id` (the catalog vector id) and a FLOAT_VECTOR
                           `vector`, an inner-product index; the collection property
                           "roomlens.meta" holds the `IndexMeta` JSON, written last
    PREFIX_current         an alias naming the published version's collection

A version is written by `create` + `add` + `save` (flush, check the row count, then write the
metadata property) and published by moving the alias (`alter_alias`, atomic on the server);
servers search the collection they loaded by name, so a response always names the version
that answered it, and they move to the alias's new target at their next poll. A collection
without the metadata property is a build that never finished: never listed, loaded or
published, and dropped by `prune` once a newer version is saved.

The same code runs on a Milvus cluster (`http://host:19530`) and on milvus-lite, the
embedded Milvus from PyPI (a path ending in `.db`, or `milvus-lite server --port ...`).
Differences the code allows for: a cluster keeps duplicate primary keys where lite
overwrites, and its delete answer does not count what was really deleted, so `add` and
`remove` look ids up first; a cluster caps a search's or a query's limit at 16,384 (lite does
not), so searches ask for at most `MAX_TOPK` and `ids()` pages with a query iterator; a
cluster refuses to drop a collection an alias names (lite drops both), which `prune` never
asks for. See the README ("Milvus") for what lite lacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from search.errors import IndexNotReady
from search.index import (
    BUILD_HINT,
    FLAT_MAX_VECTORS,
    HNSW_EF_SEARCH,
    IVF_NPROBE,
    METRIC,
    SIDECAR_FORMAT,
    IdArray,
    IndexMeta,
    Scores,
    VectorIndex,
    _pad_results,
    _preview,
    as_ids,
    as_vectors,
    check_expected,
    check_meta_matches,
    is_generated_version,
    lookup_ids,
    new_batch,
)
from search.types import Vectors

if TYPE_CHECKING:
    from search.config import IndexSettings

logger = logging.getLogger(__name__)

META_PROPERTY = "roomlens.meta"
ID_FIELD = "id"
VECTOR_FIELD = "vector"
MAX_TOPK = 16_384  # Milvus's cap on a search's limit (and a query's offset + limit)
BATCH = 1_000  # rows per insert / get / delete request
ITER_BATCH = 10_000  # ids per page when listing every id
DEFAULT_NPROBE = IVF_NPROBE

_MILVUS_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")


# --------------------------------------------------------------------------- names, factories


def collection_name(prefix: str, version: str) -> str:
    """The collection that holds `version`: PREFIX_v_<version with "-" as "_">."""
    if not _MILVUS_VERSION_RE.match(version):
        raise ValueError(
            f"invalid index version id {version!r} for Milvus (letters, digits and '-' only)"
        )
    return f"{prefix}_v_{version.replace('-', '_')}"


def version_of(prefix: str, name: str) -> str | None:
    """The version id a collection name encodes, or None for a collection that is not ours."""
    head = f"{prefix}_v_"
    if not name.startswith(head) or len(name) == len(head):
        return None
    version = name[len(head) :].replace("_", "-")
    return version if _MILVUS_VERSION_RE.match(version) else None


def alias_name(prefix: str) -> str:
    """The alias that names the published version's collection."""
    return f"{prefix}_current"


def milvus_factory(n: int, dim: int) -> str:
    """The Milvus index type for `n` vectors: exact "FLAT" up to `FLAT_MAX_VECTORS`, beyond it
    "IVF_FLAT,nlist=N" with nlist ~ sqrt(n) as `search.index.choose_factory` picks for FAISS
    (Milvus trains it on the server, per sealed segment; nothing to sample here)."""
    if n < 0 or dim < 1:
        raise ValueError(f"milvus_factory needs n >= 0 and dim >= 1, got n={n}, dim={dim}")
    if n <= FLAT_MAX_VECTORS:
        return "FLAT"
    nlist = 2 ** round(math.log2(math.sqrt(n)))
    return f"IVF_FLAT,nlist={min(max(nlist, 256), 65_536)}"


def parse_factory(factory: str) -> tuple[str, dict[str, int]]:
    """("IVF_FLAT", {"nlist": 1024}) from "IVF_FLAT,nlist=1024"; ValueError when malformed."""
    kind, *pairs = [part.strip() for part in factory.split(",")]
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", kind):
        raise ValueError(f"invalid Milvus index type {factory!r} (e.g. FLAT, IVF_FLAT,nlist=1024)")
    params: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier() or not value.isdigit():
            raise ValueError(f"invalid Milvus index parameter {pair!r} in {factory!r}")
        params[key] = int(value)
    return kind, params


@contextlib.contextmanager
def _reading(what: str) -> Iterator[None]:
    """Milvus errors on the read path as `IndexNotReady` (the API answers 503, not 500)."""
    try:
        yield
    except MilvusException as exc:
        raise IndexNotReady(f"Milvus cannot {what}: {exc}") from exc


# --------------------------------------------------------------------------- index


class MilvusIndex:
    """`VectorIndex` over one Milvus collection (id INT64 primary key, vector FLOAT_VECTOR).

    `ntotal` is counted once when the collection is opened and kept up to date by `add` and
    `remove`: a published version is never written to, and one writer fills a new one.
    Searches are safe from many threads; `add`/`remove` must not run concurrently.
    """

    def __init__(
        self, client: MilvusClient, collection: str, dim: int, factory: str, *, ntotal: int
    ) -> None:
        self._client = client
        self.collection = collection
        self.dim = dim
        self.factory = factory
        self.index_type, self.index_params = parse_factory(factory)
        self.nprobe = DEFAULT_NPROBE
        self.ef_search = HNSW_EF_SEARCH
        self._ntotal = ntotal

    def __repr__(self) -> str:
        return f"MilvusIndex({self.collection!r}, dim={self.dim}, factory={self.factory!r})"

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return self._ntotal

    def __len__(self) -> int:
        return self._ntotal

    def count(self) -> int:
        """The row count as the server has it now (one query), e.g. to check a build."""
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    # ------------------------------------------------------------------ mutation

    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Store `vectors` under `ids`. Raises ValueError for duplicate or already-stored ids."""
        batch = new_batch(ids, vectors, self.dim)
        id_arr, vec = batch.ids, batch.vectors
        if id_arr.size == 0:
            return
        present = self._present(id_arr)
        if present.size:
            raise ValueError(f"ids already in the index: {_preview(present)}")
        for start in range(0, id_arr.size, BATCH):
            chunk = zip(id_arr[start : start + BATCH], vec[start : start + BATCH], strict=True)
            rows = [{ID_FIELD: int(i), VECTOR_FIELD: v} for i, v in chunk]
            self._client.insert(self.collection, rows)
        self._ntotal += int(id_arr.size)

    def remove(self, ids: npt.ArrayLike) -> int:
        """Delete `ids` (unknown ids are ignored) and return how many vectors were removed."""
        id_arr = np.unique(as_ids(ids))
        if id_arr.size == 0 or self._ntotal == 0:
            return 0
        present = self._present(id_arr)
        for start in range(0, present.size, BATCH):
            chunk = [int(i) for i in present[start : start + BATCH]]
            self._client.delete(self.collection, ids=chunk)
        self._ntotal -= int(present.size)
        return int(present.size)

    # ------------------------------------------------------------------ queries

    def search(self, queries: npt.ArrayLike, k: int) -> tuple[Scores, IdArray]:
        """Top-k by inner product: (scores (m, k) float32, ids (m, k) int64), best first.

        Padded with -inf / -1 past `ntotal`, and past `MAX_TOPK` (16,384), the most one
        Milvus search returns. A 1-D query of shape (dim,) is one query.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        q = as_vectors(queries, self.dim, name="queries")
        k_eff = min(k, self._ntotal, MAX_TOPK)
        m = q.shape[0]
        if m == 0 or k_eff == 0:
            return _pad_results(np.empty((m, 0), np.float32), np.empty((m, 0), np.int64), k)
        scores = np.full((m, k_eff), -np.inf, dtype=np.float32)
        found = np.full((m, k_eff), -1, dtype=np.int64)
        per_call = max(1, min(1024, (1 << 20) // k_eff))  # bounds one answer's size
        params = self._search_params(k_eff)
        with _reading(f"search {self.collection}"):
            for start in range(0, m, per_call):
                answer = self._client.search(
                    self.collection,
                    data=list(q[start : start + per_call]),
                    limit=k_eff,
                    anns_field=VECTOR_FIELD,
                    search_params=params,
                    output_fields=[ID_FIELD],
                )
                for row, hits in enumerate(answer, start=start):
                    got = list(hits)[:k_eff]
                    found[row, : len(got)] = [int(h[ID_FIELD]) for h in got]
                    scores[row, : len(got)] = [float(h["distance"]) for h in got]
        return _pad_results(scores, found, k)

    def _search_params(self, k: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if "nlist" in self.index_params:
            params["nprobe"] = min(self.nprobe, self.index_params["nlist"])
        if self.index_type.startswith("HNSW"):
            params["ef"] = max(self.ef_search, k)
        return {"metric_type": METRIC.upper(), "params": params}

    def ids(self) -> IdArray:
        """Every stored id (in no particular order)."""
        pages: list[IdArray] = []
        with _reading(f"list the ids of {self.collection}"):
            iterator = self._client.query_iterator(
                self.collection, batch_size=ITER_BATCH, filter="", output_fields=[ID_FIELD]
            )
            try:
                while page := iterator.next():
                    pages.append(np.fromiter((r[ID_FIELD] for r in page), dtype=np.int64))
            finally:
                iterator.close()
        return np.concatenate(pages) if pages else np.empty(0, dtype=np.int64)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, bool) or not isinstance(item, int | np.integer) or item < 0:
            return False
        return self._present(np.asarray([item], dtype=np.int64)).size > 0

    def reconstruct(self, ids: npt.ArrayLike) -> Vectors:
        """The stored vectors (n, dim) of `ids`; raises ValueError naming any unknown id."""
        id_arr = as_ids(ids)
        if id_arr.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        stored: dict[int, Any] = {}
        with _reading(f"read vectors from {self.collection}"):
            for chunk in _chunks(np.unique(id_arr)):
                for row in self._client.get(
                    self.collection, ids=chunk, output_fields=[ID_FIELD, VECTOR_FIELD]
                ):
                    stored[int(row[ID_FIELD])] = row[VECTOR_FIELD]
        missing = [int(i) for i in id_arr if int(i) not in stored]
        if missing:
            raise ValueError(f"ids not in the index: {_preview(np.unique(missing))}")
        out = np.stack([np.asarray(stored[int(i)], dtype=np.float32) for i in id_arr])
        return np.ascontiguousarray(out, dtype=np.float32)

    def present(self, ids: npt.ArrayLike) -> IdArray:
        """The ones of `ids` stored in the collection, sorted and each once."""
        return self._present(lookup_ids(ids))

    def _present(self, ids: IdArray) -> IdArray:
        """The ones of `ids` stored in the collection, sorted."""
        found: list[int] = []
        with _reading(f"look ids up in {self.collection}"):
            for chunk in _chunks(np.unique(ids)):
                rows = self._client.get(self.collection, ids=chunk, output_fields=[ID_FIELD])
                found.extend(int(r[ID_FIELD]) for r in rows)
        return np.asarray(sorted(found), dtype=np.int64)


def _chunks(ids: IdArray) -> Iterator[list[int]]:
    for start in range(0, ids.size, BATCH):
        yield [int(i) for i in ids[start : start + BATCH]]


# --------------------------------------------------------------------------- store


class MilvusIndexStore:
    """`IndexStore` on Milvus: a collection per version, the alias PREFIX_current as pointer.

    The client connects on first use, so a server starts while Milvus is down and answers
    "index not ready" until it is up. Read errors become `IndexNotReady`; write errors (a
    build, a publish) propagate as pymilvus' `MilvusException`, failing the indexer run.
    """

    backend = "milvus"

    def __init__(
        self,
        uri: str,
        *,
        token: str = "",
        db_name: str = "",
        prefix: str = "roomlens",
        poll_s: float = 1.0,
    ) -> None:
        self.uri = uri
        self.prefix = prefix
        self.alias = alias_name(prefix)
        self.poll_s = poll_s
        self._token = token
        self._db_name = db_name
        self._client_obj: MilvusClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: IndexSettings) -> MilvusIndexStore:
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        return cls(
            settings.milvus_target(),
            token=token,
            db_name=settings.milvus_db,
            prefix=settings.milvus_prefix,
            poll_s=settings.milvus_poll_s,
        )

    def __repr__(self) -> str:
        return f"MilvusIndexStore({self.uri!r}, prefix={self.prefix!r})"

    def describe(self) -> str:
        db = f", database {self._db_name}" if self._db_name else ""
        return f"Milvus {self.uri}{db} (collections {self.prefix}_v_*, alias {self.alias})"

    @property
    def client(self) -> MilvusClient:
        """The client, connected on first use (a `.db` path starts embedded milvus-lite)."""
        with self._lock:
            if self._client_obj is None:
                with _reading(f"connect to {self.uri}"):
                    self._client_obj = _connect(self.uri, self._token, self._db_name)
            return self._client_obj

    def close(self) -> None:
        """Drop the connection (the next call connects again)."""
        with self._lock:
            client, self._client_obj = self._client_obj, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ writing

    def choose_factory(self, n: int, dim: int) -> str:
        return milvus_factory(n, dim)

    def training_size(self, factory: str, dim: int) -> int:
        return 0  # Milvus trains IVF indexes on the server

    def create(
        self, version: str, dim: int, factory: str, *, train: npt.ArrayLike | None = None
    ) -> MilvusIndex:
        name = collection_name(self.prefix, version)
        kind, params = parse_factory(factory)
        client = self.client
        if client.has_collection(name):
            raise ValueError(f"Milvus collection {name} exists already: pick a new version id")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name=VECTOR_FIELD, index_type=kind, metric_type=METRIC.upper(), params=params
        )
        client.create_collection(
            name, schema=schema, index_params=index_params, consistency_level="Strong"
        )
        logger.info("created Milvus collection %s (%s, dim %d)", name, factory, dim)
        return MilvusIndex(client, name, dim, factory, ntotal=0)

    def save(self, index: VectorIndex, meta: IndexMeta) -> None:
        name = collection_name(self.prefix, meta.version)
        if not isinstance(index, MilvusIndex) or index.collection != name:
            raise ValueError(f"save expects the MilvusIndex `create` made for {meta.version}")
        check_meta_matches(index, index.factory, meta)
        self.client.flush(name)
        stored = index.count()
        if stored != meta.count:
            raise ValueError(f"collection {name} holds {stored} vectors, metadata {meta.count}")
        payload = {**meta.to_dict(), "format": SIDECAR_FORMAT}
        self.client.alter_collection_properties(
            name, properties={META_PROPERTY: json.dumps(payload, sort_keys=True)}
        )
        logger.info("saved index %s (%d vectors) to Milvus %s", meta.version, meta.count, name)

    def publish(self, version: str) -> None:
        self.read_meta(version)  # IndexNotReady unless saved
        name = collection_name(self.prefix, version)
        client = self.client
        client.load_collection(name)  # loaded before any server is sent to it
        if self.alias in _aliases(client):
            client.alter_alias(name, self.alias)
        else:
            client.create_alias(name, self.alias)
        logger.info("published index version %s (alias %s -> %s)", version, self.alias, name)

    # ------------------------------------------------------------------ reading

    def current(self) -> str | None:
        with _reading(f"read the alias {self.alias}"):
            client = self.client
            if self.alias not in _aliases(client):
                return None
            target = str(client.describe_alias(self.alias)["collection_name"])
        version = version_of(self.prefix, target)
        if version is None:
            logger.warning("alias %s names %s, not a roomlens version", self.alias, target)
        return version

    def read_meta(self, version: str) -> IndexMeta:
        meta, _ = self._describe(version)
        return meta

    def _describe(self, version: str) -> tuple[IndexMeta, int | None]:
        """(metadata, the collection's vector dim) of a saved version."""
        name = collection_name(self.prefix, version)
        with _reading(f"describe {name}"):
            client = self.client
            if not client.has_collection(name):
                raise IndexNotReady(f"no index version {version} in {self.describe()}")
            info = client.describe_collection(name)
        raw = (info.get("properties") or {}).get(META_PROPERTY)
        if raw is None:
            raise IndexNotReady(f"{name} holds no saved index (its build did not finish)")
        try:
            meta = IndexMeta.from_json(raw)
        except ValueError as exc:
            raise IndexNotReady(f"corrupt index metadata on {name} ({exc}); {BUILD_HINT}") from exc
        dims = [
            int(f.get("params", {}).get("dim", 0))
            for f in info.get("fields", [])
            if f.get("name") == VECTOR_FIELD
        ]
        return meta, dims[0] if dims else None

    def load(
        self,
        version: str,
        *,
        expected_embedder: str | None = None,
        expected_dim: int | None = None,
    ) -> tuple[MilvusIndex, IndexMeta]:
        name = collection_name(self.prefix, version)
        meta, dim = self._describe(version)
        check_expected(meta, f"Milvus collection {name}", expected_embedder, expected_dim)
        with _reading(f"load {name}"):
            self.client.load_collection(name)  # idempotent; a restarted server needs it
            index = MilvusIndex(self.client, name, meta.dim, meta.factory, ntotal=0)
            stored = index.count()
        if dim != meta.dim or stored != meta.count:
            raise IndexNotReady(
                f"{name} holds {stored} vectors of dim {dim} but its metadata says "
                f"{meta.count} of dim {meta.dim}; {BUILD_HINT}"
            )
        index._ntotal = stored
        logger.info("loaded index %s (%d vectors) from Milvus %s", meta.version, stored, name)
        return index, meta

    def load_current(
        self, *, expected_embedder: str | None = None, expected_dim: int | None = None
    ) -> tuple[MilvusIndex, IndexMeta]:
        version = self.current()
        if version is None:
            raise IndexNotReady(f"no published index in {self.describe()}; {BUILD_HINT}")
        return self.load(version, expected_embedder=expected_embedder, expected_dim=expected_dim)

    def list_versions(self) -> list[str]:
        return sorted(v for v, saved in self._versions().items() if saved)

    def _versions(self) -> dict[str, bool]:
        """Every version collection under the prefix, and whether it was saved."""
        found: dict[str, bool] = {}
        with _reading(f"list the collections in {self.uri}"):
            client = self.client
            for name in client.list_collections():
                version = version_of(self.prefix, name)
                if version is not None:
                    props = client.describe_collection(name).get("properties") or {}
                    found[version] = META_PROPERTY in props
        return found

    def prune(self, *, keep: int) -> list[str]:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        versions = self._versions()
        complete = sorted(v for v, saved in versions.items() if saved)
        protected = set(complete[-keep:]) | {self.current() or ""}
        newest = complete[-1] if complete else ""
        doomed = sorted(
            v
            for v, saved in versions.items()
            if v not in protected and (saved or (is_generated_version(v) and v < newest))
        )
        for version in doomed:
            self.client.drop_collection(collection_name(self.prefix, version))
            logger.info("dropped old index version %s from Milvus", version)
        return doomed


def _aliases(client: MilvusClient) -> list[str]:
    return list(client.list_aliases().get("aliases", []))


def _connect(uri: str, token: str, db_name: str) -> MilvusClient:
    """A client on `uri`; for a milvus-lite `.db` path, its folder is made first."""
    if uri.endswith(".db") and "://" not in uri:
        Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"uri": uri}
    if token:
        kwargs["token"] = token
    if db_name:
        kwargs["db_name"] = db_name
    return MilvusClient(**kwargs)
