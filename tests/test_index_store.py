"""The index stores (FAISS files, and Milvus on milvus-lite): save, load, publish, roll back,
list and prune versions; unfinished builds are never served; the settings pick the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from search.config import IndexSettings, Settings
from search.errors import IndexNotReady, ModelMismatch
from search.index import IndexMeta, brute_force_search, l2_normalize, new_version_id, utc_now_iso
from search.index_store import FileIndexStore, IndexStore, open_index_store
from search.milvus_index import (
    MilvusIndexStore,
    collection_name,
    milvus_factory,
    parse_factory,
    version_of,
)
from tests.milvus_server import lite_server, lite_store, unique_prefix

DIM = 16
EMBEDDER = "emb"


@pytest.fixture(params=["faiss", "milvus"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexStore]:
    made: IndexStore = (
        FileIndexStore(tmp_path / "index")
        if request.param == "faiss"
        else lite_store(request.getfixturevalue("milvus_uri"))
    )
    yield made
    made.close()


def vectors(n: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, DIM)))


def save_version(
    store: IndexStore, n: int, *, seed: int = 0, embedder: str = EMBEDDER, version: str = ""
) -> tuple[str, np.ndarray]:
    """A saved (not published) version of `n` vectors with ids 1..n."""
    version = version or new_version_id()
    factory = store.choose_factory(n, DIM)
    index = store.create(version, DIM, factory)
    data = vectors(n, seed)
    index.add(np.arange(1, n + 1), data)
    meta = IndexMeta(embedder, DIM, "ip", n, factory, version, utc_now_iso(), {"run_id": 1})
    store.save(index, meta)
    return version, data


def test_stores_satisfy_the_protocol(store: IndexStore) -> None:
    assert isinstance(store, IndexStore)


def test_save_load_round_trip(store: IndexStore) -> None:
    version, data = save_version(store, 40)
    meta = store.read_meta(version)
    assert (meta.version, meta.count, meta.dim, meta.extra) == (version, 40, DIM, {"run_id": 1})
    index, loaded = store.load(version, expected_embedder=EMBEDDER, expected_dim=DIM)
    assert loaded == meta and index.ntotal == 40
    assert sorted(index.ids().tolist()) == list(range(1, 41))
    queries = vectors(5, seed=9)
    got_scores, got_ids = index.search(queries, 7)
    want_scores, want_ids = brute_force_search(data, np.arange(1, 41), queries, 7)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert (got_ids == want_ids).mean() > 0.95  # equal up to ties
    np.testing.assert_allclose(index.reconstruct([3, 1]), data[[2, 0]], atol=1e-6)


def test_load_refuses_another_embedder_or_dim(store: IndexStore) -> None:
    version, _ = save_version(store, 5, embedder="other")
    with pytest.raises(ModelMismatch, match="'other'"):
        store.load(version, expected_embedder=EMBEDDER)
    with pytest.raises(ModelMismatch, match="dim 512"):
        store.load(version, expected_dim=512)


def test_save_refuses_metadata_that_does_not_match(store: IndexStore) -> None:
    version = new_version_id()
    index = store.create(version, DIM, store.choose_factory(3, DIM))
    index.add(np.arange(3), vectors(3, seed=1))
    good = IndexMeta(EMBEDDER, DIM, "ip", 3, store.choose_factory(3, DIM), version, utc_now_iso())
    for bad in (
        IndexMeta(**{**good.to_dict(), "count": 4}),
        IndexMeta(**{**good.to_dict(), "metric": "l2"}),
    ):
        with pytest.raises(ValueError, match="does not match"):
            store.save(index, bad)
    assert store.list_versions() == []
    with pytest.raises(IndexNotReady):
        store.publish(version)


def test_an_unfinished_build_is_never_listed_loaded_or_published(store: IndexStore) -> None:
    served, _ = save_version(store, 4, seed=1)
    store.publish(served)
    crashed = new_version_id()
    index = store.create(crashed, DIM, store.choose_factory(10, DIM))
    index.add(np.arange(10), vectors(10, seed=2))  # ... and the writer dies before `save`
    with pytest.raises(IndexNotReady):
        store.load(crashed)
    with pytest.raises(IndexNotReady):
        store.publish(crashed)
    assert store.list_versions() == [served]
    assert store.current() == served
    index, meta = store.load_current()
    assert (meta.version, index.ntotal) == (served, 4)


def test_publish_switches_and_rolls_back(store: IndexStore) -> None:
    assert store.current() is None
    with pytest.raises(IndexNotReady, match="no published index"):
        store.load_current()
    first, _ = save_version(store, 20, seed=1)
    store.publish(first)
    assert store.current() == first
    second, data = save_version(store, 30, seed=2)
    assert store.load_current()[1].version == first, "saved is not published"
    store.publish(second)
    index, meta = store.load_current(expected_embedder=EMBEDDER, expected_dim=DIM)
    assert (meta.version, index.ntotal) == (second, 30)
    _, found = index.search(data[:1], 1)
    assert found[0, 0] == 1
    assert store.list_versions() == [first, second]
    store.publish(first)  # roll back
    assert store.current() == first
    with pytest.raises(IndexNotReady):
        store.publish("20990101T000000000000Z-000000")
    with pytest.raises(ValueError):
        store.publish("../elsewhere")


def test_prune_keeps_the_newest_and_the_published(store: IndexStore) -> None:
    versions = [save_version(store, 3)[0] for _ in range(4)]
    store.publish(versions[0])  # an old version still published: kept
    crashed = new_version_id()
    store.create(crashed, DIM, store.choose_factory(3, DIM))  # a writer died (never saved) ...
    if isinstance(store, FileIndexStore):  # ... in `save`, before the sidecar (faiss writes
        (store.root / crashed).mkdir()  # nothing before `save`; Milvus a collection)
    newest, _ = save_version(store, 3)  # ... before this one was made
    deleted = store.prune(keep=2)
    assert deleted == sorted([versions[1], versions[2], crashed])
    assert store.list_versions() == [versions[0], versions[3], newest]
    assert store.current() == versions[0]
    with pytest.raises(ValueError):
        store.prune(keep=0)


# --------------------------------------------------------------------------- settings


def test_settings_pick_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_index_store(IndexSettings(dir=tmp_path)), FileIndexStore)
    monkeypatch.setenv("ROOMLENS_INDEX__BACKEND", "milvus")
    monkeypatch.setenv("ROOMLENS_INDEX__MILVUS_URI", "http://milvus.internal:19530")
    monkeypatch.setenv("ROOMLENS_INDEX__MILVUS_TOKEN", "root:Milvus")
    monkeypatch.setenv("ROOMLENS_INDEX__MILVUS_PREFIX", "shop1")
    store = open_index_store(Settings().index)
    assert isinstance(store, MilvusIndexStore)
    assert (store.uri, store.prefix, store.alias) == (
        "http://milvus.internal:19530",
        "shop1",
        "shop1_current",
    )
    assert "Milvus" not in repr(Settings().index.milvus_token) and "root" not in store.describe()
    lite = open_index_store(IndexSettings(dir=tmp_path, backend="milvus"))
    assert isinstance(lite, MilvusIndexStore) and lite.uri == str(tmp_path / "milvus.db")


def test_embedded_milvus_lite_from_a_db_path(tmp_path: Path) -> None:
    """The default Milvus URI, DIR/milvus.db, starts milvus-lite inside the process."""
    settings = IndexSettings(dir=tmp_path / "index", backend="milvus")
    store = open_index_store(settings)
    version, _ = save_version(store, 6)
    store.publish(version)
    store.close()
    again = open_index_store(settings)
    assert again.load_current()[1].version == version
    again.close()


def test_a_restarted_server_serves_the_published_version(tmp_path: Path) -> None:
    prefix = unique_prefix()
    with lite_server(tmp_path / "data") as uri:
        store = MilvusIndexStore(uri, prefix=prefix)
        version, data = save_version(store, 12)
        store.publish(version)
        store.close()
    with lite_server(tmp_path / "data") as uri:  # collections come back released
        store = MilvusIndexStore(uri, prefix=prefix)
        index, meta = store.load_current()
        _, found = index.search(data[4], 1)
        assert (meta.version, found[0, 0]) == (version, 5)
        store.close()


def test_an_unreachable_server_is_not_ready() -> None:
    store = MilvusIndexStore("http://127.0.0.1:9", prefix="x")
    with pytest.raises(IndexNotReady, match="Milvus"):
        store.current()


def test_names_and_factories() -> None:
    version = "20250101T120000123456Z-3fa9c1"
    name = collection_name("roomlens", version)
    assert name == "roomlens_v_20250101T120000123456Z_3fa9c1"
    assert version_of("roomlens", name) == version
    assert (
        version_of("roomlens", "other_v_x") is None
        and version_of("roomlens", "roomlens_v_") is None
    )
    with pytest.raises(ValueError):
        collection_name("roomlens", "v_1")  # "_" would not map back
    assert milvus_factory(300_000, 512) == "FLAT"
    assert milvus_factory(1_000_000, 1280) == "IVF_FLAT,nlist=1024"
    assert parse_factory("HNSW,M=32,efConstruction=80") == ("HNSW", {"M": 32, "efConstruction": 80})
    with pytest.raises(ValueError):
        parse_factory("Flat")  # a FAISS factory string is not a Milvus index type
