"""LiveIndex, on the FAISS file store and on Milvus (milvus-lite): follows the published
version, swaps without blocking searches, survives a broken version or an unreachable store."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search.errors import IndexNotReady, ModelMismatch
from search.index import CURRENT_FILE, VECTORS_FILE, IndexMeta, l2_normalize, utc_now_iso
from search.index_store import FileIndexStore, IndexStore
from search.live import LiveIndex
from search.milvus_index import META_PROPERTY, MilvusIndexStore, collection_name
from tests.milvus_server import lite_server, lite_store

DIM = 8
EMBEDDER = "emb"


@pytest.fixture(params=["faiss", "milvus"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexStore]:
    made: IndexStore = (
        FileIndexStore(tmp_path)
        if request.param == "faiss"
        else lite_store(request.getfixturevalue("milvus_uri"))
    )
    yield made
    made.close()


def publish(store: IndexStore, version: str, n: int, *, embedder: str = EMBEDDER) -> None:
    vectors = l2_normalize(np.random.default_rng(n).standard_normal((n, DIM)))
    factory = store.choose_factory(n, DIM)
    index = store.create(version, DIM, factory)
    index.add(np.arange(1, n + 1), vectors)
    store.save(index, IndexMeta(embedder, DIM, "ip", n, factory, version, utc_now_iso()))
    store.publish(version)


def unpublish(store: IndexStore) -> None:
    """Remove the pointer (the CURRENT file, the alias) behind the servers' back."""
    if isinstance(store, FileIndexStore):
        (store.root / CURRENT_FILE).unlink()
    else:
        assert isinstance(store, MilvusIndexStore)
        store.client.drop_alias(store.alias)


def break_version(store: IndexStore, version: str) -> None:
    """Damage a published version: truncate its vectors file, or corrupt its metadata."""
    if isinstance(store, FileIndexStore):
        vectors = store.root / version / VECTORS_FILE
        vectors.write_bytes(vectors.read_bytes()[:50])
    else:
        assert isinstance(store, MilvusIndexStore)
        meta = json.loads(store.read_meta(version).to_json())
        meta["count"] += 1  # the collection no longer matches its metadata
        name = collection_name(store.prefix, version)
        store.client.alter_collection_properties(name, {META_PROPERTY: json.dumps(meta)})


def live(store: IndexStore, **kwargs: Any) -> LiveIndex:
    return LiveIndex(store, embedder=EMBEDDER, dim=DIM, **kwargs)


def test_follows_the_current_pointer(store: IndexStore) -> None:
    index = live(store)
    with pytest.raises(IndexNotReady):
        index.get()
    assert index.peek() is None
    publish(store, "v1", 3)
    first = index.get()
    assert (first.meta.version, first.index.ntotal) == ("v1", 3)
    assert index.get() is first, "the same version is not loaded twice"
    publish(store, "v2", 5)
    assert index.get().meta.version == "v2"
    unpublish(store)
    assert index.get().meta.version == "v2", "a vanished pointer keeps the loaded version"


def test_a_root_folder_is_a_file_store(tmp_path: Path) -> None:
    publish(FileIndexStore(tmp_path), "v1", 3)
    assert LiveIndex(tmp_path, embedder=EMBEDDER, dim=DIM).get().meta.version == "v1"


def test_a_broken_new_version_keeps_the_old_one_in_service(store: IndexStore) -> None:
    index = live(store, retry_s=60)
    publish(store, "v1", 3)
    assert index.get().meta.version == "v1"
    publish(store, "v2", 4)
    break_version(store, "v2")  # after publishing
    assert index.get().meta.version == "v1"
    assert index.get().meta.version == "v1", "not retried before retry_s"
    publish(store, "v3", 6)
    assert index.get().meta.version == "v3"


def test_another_embedder_is_refused_on_first_load(store: IndexStore) -> None:
    publish(store, "v1", 3, embedder="other")
    with pytest.raises(ModelMismatch):
        live(store).get()


def test_searches_keep_the_old_version_while_the_new_one_loads(
    store: IndexStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = live(store)
    publish(store, "v1", 3)
    old = index.get()
    loading, release = threading.Event(), threading.Event()
    real_load = store.load

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        loading.set()
        assert release.wait(10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(store, "load", slow_load)
    publish(store, "v2", 5)
    got: list[str] = []
    loader = threading.Thread(target=lambda: got.append(index.get().meta.version))
    loader.start()
    assert loading.wait(10)
    assert index.get() is old, "a search during the load is answered from the old version"
    release.set()
    loader.join(10)
    assert got == ["v2"] and index.get().meta.version == "v2"


def test_the_pointer_is_polled_every_poll_s(store: IndexStore) -> None:
    index = live(store, poll_s=3600)
    publish(store, "v1", 3)
    assert index.get().meta.version == "v1"
    publish(store, "v2", 4)
    assert index.get().meta.version == "v1", "not asked again within poll_s"
    index.poll_s = 0
    assert index.get().meta.version == "v2"


def test_an_unreachable_milvus_keeps_the_loaded_version(tmp_path: Path) -> None:
    with lite_server(tmp_path / "data") as uri:
        store = lite_store(uri)
        publish(store, "v1", 3)
        index = live(store)
        loaded = index.get()
    assert index.get() is loaded, "Milvus went away: the loaded version is still the answer"
    fresh = live(lite_store(uri))
    with pytest.raises(IndexNotReady):
        fresh.get()
    store.close()
