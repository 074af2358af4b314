"""The vector indexes against the numpy reference (FAISS, and Milvus on milvus-lite), then
the FAISS files: persistence, versions and atomicity (tests/test_index_store.py runs the
version store tests on both backends)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from search import index as index_mod
from search.errors import IndexNotReady, ModelMismatch
from search.index import (
    FaissIndex,
    IndexMeta,
    VectorIndex,
    brute_force_search,
    choose_factory,
    current_version_dir,
    l2_normalize,
    list_versions,
    load_current,
    load_index,
    new_version_id,
    publish_current,
    save_index,
    utc_now_iso,
)
from search.milvus_index import MilvusIndex, MilvusIndexStore
from tests.milvus_server import lite_store

DIM = 32

#: the same kind of index on each backend (factory strings as each store records them)
FACTORIES = {
    "faiss": {"exact": "Flat", "hnsw": "HNSW32,Flat", "ivf16": "IVF16,Flat"},
    "milvus": {
        "exact": "FLAT",
        "hnsw": "HNSW,M=32,efConstruction=80",
        "ivf16": "IVF_FLAT,nlist=16",
    },
}

NewIndex = Callable[..., VectorIndex]


@pytest.fixture(scope="module")
def milvus_store(milvus_uri: str) -> Iterator[MilvusIndexStore]:
    """One store on the session's milvus-lite server for the module, one prefix."""
    store = lite_store(milvus_uri)
    yield store
    store.close()


@pytest.fixture(params=["faiss", "milvus"])
def new_index(request: pytest.FixtureRequest) -> NewIndex:
    """`new_index(kind="exact", dim=DIM, train=None)`: an empty index of that kind on the
    backend under test (a FaissIndex, or a MilvusIndex over a fresh collection)."""
    backend: str = request.param

    def make(
        kind: str = "exact", dim: int = DIM, train: npt.ArrayLike | None = None
    ) -> VectorIndex:
        factory = FACTORIES[backend][kind]
        if backend == "faiss":
            return FaissIndex.create(dim, factory, train=train)
        store: MilvusIndexStore = request.getfixturevalue("milvus_store")
        return store.create(new_version_id(), dim, factory)

    return make


def random_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)))


def build(
    n: int, factory: str = "Flat", seed: int = 0
) -> tuple[FaissIndex, np.ndarray, np.ndarray]:
    vectors = random_vectors(n, seed=seed)
    ids = np.arange(n, dtype=np.int64) * 7 + 1000
    idx = FaissIndex.create(DIM, factory)
    idx.add(ids, vectors)
    return idx, ids, vectors


def build_on(
    new_index: NewIndex, n: int, kind: str = "exact", seed: int = 0
) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """`build` on the backend under test."""
    vectors = random_vectors(n, seed=seed)
    ids = np.arange(n, dtype=np.int64) * 7 + 1000
    idx = new_index(kind)
    idx.add(ids, vectors)
    return idx, ids, vectors


def meta_for(
    idx: FaissIndex, embedder: str = "efficientnet-lite0", version: str = "v1"
) -> IndexMeta:
    return IndexMeta(
        embedder=embedder,
        dim=idx.dim,
        metric="ip",
        count=idx.ntotal,
        factory=idx.factory,
        version=version,
        indexed_at=utc_now_iso(),
        extra={"feed": "sample.jsonl"},
    )


def assert_same_results(
    got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]
) -> None:
    """Ids equal except where neighbouring scores tie; scores allclose."""
    (gs, gi), (ws, wi) = got, want
    assert gs.dtype == np.float32 and gi.dtype == np.int64
    assert gs.shape == ws.shape and gi.shape == wi.shape
    np.testing.assert_allclose(gs, ws, rtol=1e-5, atol=1e-5)
    differ = gi != wi
    assert np.all(np.isclose(gs[differ], ws[differ], atol=1e-6))


# --------------------------------------------------------------------------- search


def test_indexes_satisfy_the_protocol(new_index: NewIndex) -> None:
    assert isinstance(new_index(dim=8), VectorIndex)


def test_choose_factory() -> None:
    assert choose_factory(0, 512) == "Flat"
    assert choose_factory(300_000, 512) == "Flat"
    assert choose_factory(300_001, 512) == "IVF512,Flat"
    assert choose_factory(1_000_000, 1280) == "IVF1024,Flat"
    assert choose_factory(1_600_000, 1280) == "IVF1024,Flat"  # 7.6 GiB of raw vectors
    # beyond 8 GiB of raw vectors: compressed codes, re-ranked from disk (tests/test_ann.py)
    assert choose_factory(10**9, 1280) == "PCAR512,IVF32768,PQ256x4fs,Refine(SQfp16)"
    with pytest.raises(ValueError):
        choose_factory(10, 0)


def test_flat_matches_brute_force(new_index: NewIndex) -> None:
    idx, ids, vectors = build_on(new_index, 2000)
    queries = random_vectors(50, seed=1)
    for k in (1, 10, 37):
        assert_same_results(idx.search(queries, k), brute_force_search(vectors, ids, queries, k))
    # a stored vector finds itself first with score ~1
    scores, found = idx.search(vectors[5], 3)
    assert found[0, 0] == ids[5] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_hnsw_recall_against_brute_force(new_index: NewIndex) -> None:
    n, k = 5000, 10
    idx, ids, vectors = build_on(new_index, n, "hnsw")
    assert not isinstance(idx, FaissIndex) or idx.is_hnsw
    queries = random_vectors(200, seed=2)
    _, got = idx.search(queries, k)
    _, want = brute_force_search(vectors, ids, queries, k)
    recall = np.mean([len(set(g) & set(w)) / k for g, w in zip(got, want, strict=True)])
    assert recall >= 0.95, recall


def test_padding_when_k_exceeds_ntotal(new_index: NewIndex) -> None:
    idx, ids, vectors = build_on(new_index, 3)
    scores, found = idx.search(random_vectors(2, seed=3), 5)
    assert scores.shape == found.shape == (2, 5)
    assert np.all(found[:, 3:] == -1) and np.all(np.isneginf(scores[:, 3:]))
    assert set(found[0, :3]) == set(ids)
    assert_same_results(
        (scores, found), brute_force_search(vectors, ids, random_vectors(2, seed=3), 5)
    )
    empty = new_index()
    scores, found = empty.search(random_vectors(4, seed=4), 2)
    assert found.shape == (4, 2) and np.all(found == -1) and np.all(np.isneginf(scores))


def test_add_remove_readd_flat_and_hnsw(new_index: NewIndex) -> None:
    for kind in ("exact", "hnsw"):
        idx, ids, vectors = build_on(new_index, 300, kind)
        gone = ids[[0, 10, 20]]
        assert idx.remove(np.concatenate([gone, [999_999_999]])) == 3
        assert idx.remove(gone) == 0
        assert idx.ntotal == 297
        assert not np.isin(gone, idx.ids()).any()
        _, found = idx.search(vectors[[0, 10, 20]], 5)
        assert not np.isin(gone, found).any()
        # the remaining vectors are unchanged and still searchable
        keep = ~np.isin(ids, gone)
        np.testing.assert_array_equal(idx.reconstruct(ids[keep][:5]), vectors[keep][:5])
        queries = random_vectors(20, seed=5)
        if kind == "exact":
            assert_same_results(
                idx.search(queries, 10), brute_force_search(vectors[keep], ids[keep], queries, 10)
            )
        idx.add(gone, vectors[[0, 10, 20]])
        assert idx.ntotal == 300
        _, found = idx.search(vectors[[0, 10, 20]], 1)
        np.testing.assert_array_equal(found[:, 0], gone)
        assert int(gone[0]) in idx


def test_reconstruct(new_index: NewIndex) -> None:
    idx, ids, vectors = build_on(new_index, 50)
    np.testing.assert_array_equal(idx.reconstruct(ids[[3, 1, 40]]), vectors[[3, 1, 40]])
    assert idx.reconstruct(np.array([], dtype=np.int64)).shape == (0, DIM)
    with pytest.raises(ValueError, match="not in the index"):
        idx.reconstruct([ids[0], 5])
    # which of many ids are stored, in one lookup: sorted, each once
    asked = [int(ids[7]), 5, int(ids[2]), int(ids[7]), -3]
    np.testing.assert_array_equal(idx.present(asked), np.sort(ids[[2, 7]]))
    assert idx.present([]).size == 0


def test_input_validation(new_index: NewIndex) -> None:
    idx, ids, vectors = build_on(new_index, 10)
    with pytest.raises(ValueError, match="shape"):
        idx.add([1], np.zeros((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        bad = random_vectors(1, seed=9)
        bad[0, 3] = np.nan
        idx.add([1], bad)
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(ids[:2], vectors[:2])
    with pytest.raises(ValueError, match="duplicate ids in batch"):
        idx.add([1, 1], random_vectors(2, seed=9))
    with pytest.raises(ValueError, match="ids for"):
        idx.add([1, 2], random_vectors(3, seed=9))
    with pytest.raises(ValueError, match=">= 0"):
        idx.add([-1], random_vectors(1, seed=9))
    with pytest.raises(ValueError, match="integers"):
        idx.add(np.array([1.5]), random_vectors(1, seed=9))
    with pytest.raises(ValueError, match="k must be"):
        idx.search(vectors[:1], 0)
    with pytest.raises(ValueError, match="shape"):
        idx.search(np.zeros((1, 3), np.float32), 1)
    assert idx.ntotal == 10
    # float64 input is converted
    idx.add(np.array([1], dtype=np.int32), random_vectors(1, seed=9).astype(np.float64))
    assert idx.ntotal == 11


def test_to_gpu_without_gpu_is_a_no_op() -> None:
    idx, ids, vectors = build(20)
    moved = idx.to_gpu()
    assert moved == idx.on_gpu
    if not moved:
        _, found = idx.search(vectors[:1], 1)
        assert found[0, 0] == ids[0]


def test_brute_force_search_reference() -> None:
    db = np.eye(4, dtype=np.float32)
    scores, ids = brute_force_search(db, [10, 11, 12, 13], np.array([[0, 1, 0.5, 0]]), 6)
    assert ids.tolist() == [[11, 12, 10, 13, -1, -1]]
    assert scores[0, :2].tolist() == [1.0, 0.5] and np.isneginf(scores[0, 4:]).all()


# --------------------------------------------------------------------------- persistence


def test_meta_json_round_trip() -> None:
    meta = meta_for(FaissIndex.create(DIM))
    assert IndexMeta.from_json(meta.to_json()) == meta
    with pytest.raises(ValueError):
        IndexMeta.from_json('{"embedder": "x"}')
    with pytest.raises(ValueError):
        IndexMeta.from_json("not json")


@pytest.mark.parametrize("factory", ["Flat", "HNSW32,Flat"])
def test_save_load_round_trip(tmp_path: Path, factory: str) -> None:
    idx, _, _ = build(500, factory)
    meta = meta_for(idx)
    save_index(idx, tmp_path / "v1", meta)
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["index.json", "vectors.faiss"]
    loaded, loaded_meta = load_index(
        tmp_path / "v1", expected_embedder="efficientnet-lite0", expected_dim=DIM
    )
    assert loaded_meta == meta
    assert loaded.factory == factory and loaded.is_hnsw == idx.is_hnsw
    np.testing.assert_array_equal(loaded.ids(), idx.ids())
    queries = random_vectors(30, seed=6)
    for got, want in zip(loaded.search(queries, 10), idx.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    sidecar = json.loads((tmp_path / "v1" / "index.json").read_text())
    assert sidecar["count"] == 500
    assert sidecar["vectors_bytes"] == (tmp_path / "v1" / "vectors.faiss").stat().st_size


def test_save_refuses_meta_that_does_not_match(tmp_path: Path) -> None:
    idx, _, _ = build(10)
    meta = meta_for(idx)
    for bad in (
        IndexMeta(**{**meta.to_dict(), "count": 11}),
        IndexMeta(**{**meta.to_dict(), "dim": 8}),
        IndexMeta(**{**meta.to_dict(), "metric": "l2"}),
    ):
        with pytest.raises(ValueError, match="does not match"):
            save_index(idx, tmp_path / "v", bad)
    assert not (tmp_path / "v" / "index.json").exists()


def test_load_refuses_mismatch_before_reading_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx, _, _ = build(10)
    save_index(idx, tmp_path, meta_for(idx))

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("vectors.faiss must not be read on a mismatch")

    monkeypatch.setattr(index_mod.faiss, "read_index", no_read)
    with pytest.raises(ModelMismatch, match="efficientnet-lite0") as exc:
        load_index(tmp_path, expected_embedder="clip-vit-b32")
    assert "clip-vit-b32" in str(exc.value)
    with pytest.raises(ModelMismatch, match="dim 512"):
        load_index(tmp_path, expected_dim=512)


def test_load_missing_or_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(IndexNotReady, match="roomlens index FEED.jsonl"):
        load_index(tmp_path / "nothing")
    idx, _, _ = build(10)
    save_index(idx, tmp_path / "a", meta_for(idx))
    (tmp_path / "a" / "vectors.faiss").unlink()
    with pytest.raises(IndexNotReady, match="missing"):
        load_index(tmp_path / "a")

    save_index(idx, tmp_path / "b", meta_for(idx))
    vectors = tmp_path / "b" / "vectors.faiss"
    vectors.write_bytes(vectors.read_bytes()[:100])
    with pytest.raises(IndexNotReady, match="roomlens index FEED.jsonl"):
        load_index(tmp_path / "b")

    save_index(idx, tmp_path / "c", meta_for(idx))
    (tmp_path / "c" / "index.json").write_text("{broken")
    with pytest.raises(IndexNotReady, match="corrupt"):
        load_index(tmp_path / "c")

    save_index(idx, tmp_path / "d", meta_for(idx))
    (tmp_path / "d" / "vectors.faiss").write_bytes(b"garbage")
    sidecar = json.loads((tmp_path / "d" / "index.json").read_text())
    sidecar["vectors_bytes"] = len(b"garbage")
    (tmp_path / "d" / "index.json").write_text(json.dumps(sidecar))
    with pytest.raises(IndexNotReady, match="cannot read"):
        load_index(tmp_path / "d")


# --------------------------------------------------------------------------- versions


def test_version_ids_sort_by_time() -> None:
    ids = [new_version_id() for _ in range(5)]
    assert len(set(ids)) == 5
    assert [i.split("-")[0] for i in ids] == sorted(i.split("-")[0] for i in ids)


def test_current_pointer_switching(tmp_path: Path) -> None:
    assert current_version_dir(tmp_path) is None
    with pytest.raises(IndexNotReady):
        load_current(tmp_path)
    idx1, _, v1 = build(20, seed=1)
    idx2, _, v2 = build(30, seed=2)
    ver1, ver2 = new_version_id(), new_version_id()
    save_index(idx1, tmp_path / ver1, meta_for(idx1, version=ver1))
    publish_current(tmp_path, ver1)
    assert current_version_dir(tmp_path) == tmp_path / ver1
    assert load_current(tmp_path)[1].version == ver1

    save_index(idx2, tmp_path / ver2, meta_for(idx2, version=ver2))
    assert load_current(tmp_path)[1].version == ver1  # not published yet
    publish_current(tmp_path, ver2)
    loaded, meta = load_current(tmp_path)
    assert meta.version == ver2 and loaded.ntotal == 30
    assert list_versions(tmp_path) == [ver1, ver2]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    publish_current(tmp_path, ver1)  # roll back
    assert current_version_dir(tmp_path) == tmp_path / ver1
    with pytest.raises(IndexNotReady):
        publish_current(tmp_path, "20990101T000000000000Z-000000")
    with pytest.raises(ValueError):
        publish_current(tmp_path, "../elsewhere")


def test_crash_before_sidecar_replace_keeps_old_version_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_idx, _, old_vectors = build(40, seed=1)
    old = new_version_id()
    save_index(old_idx, tmp_path / old, meta_for(old_idx, version=old))
    publish_current(tmp_path, old)

    calls = {"n": 0}
    real_replace = os.replace

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(index_mod.os, "replace", flaky_replace)
    new_idx, _, _ = build(50, seed=2)
    new = new_version_id()
    with pytest.raises(OSError, match="simulated crash"):
        save_index(new_idx, tmp_path / new, meta_for(new_idx, version=new))
    monkeypatch.setattr(index_mod.os, "replace", real_replace)

    assert not [p for p in (tmp_path / new).iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(IndexNotReady):  # vectors without a sidecar are never loaded
        load_index(tmp_path / new)
    loaded, meta = load_current(tmp_path)
    assert meta.version == old and loaded.ntotal == 40
    _, found = loaded.search(old_vectors[:1], 1)
    assert found[0, 0] == old_idx.ids()[0]
    assert list_versions(tmp_path) == [old]


def test_crash_while_overwriting_in_place_never_mixes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_idx, _, _ = build(40, seed=1)
    save_index(old_idx, tmp_path, meta_for(old_idx))
    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(index_mod.os, "replace", flaky_replace)
    new_idx, _, _ = build(50, seed=2)
    with pytest.raises(OSError):
        save_index(new_idx, tmp_path, meta_for(new_idx, version="v2"))
    monkeypatch.setattr(index_mod.os, "replace", real_replace)
    with pytest.raises(IndexNotReady):  # "not ready", never old sidecar + new vectors
        load_index(tmp_path)


def test_ivf_needs_training_and_finds_the_nearest_vectors() -> None:
    assert index_mod.training_size("IVF16,Flat", DIM) == 16 * index_mod.IVF_TRAIN_PER_LIST
    assert index_mod.training_size("Flat", DIM) == 0
    with pytest.raises(ValueError, match="needs training"):
        FaissIndex.create(DIM, "IVF16,Flat")


def test_ivf_finds_the_nearest_vectors(new_index: NewIndex) -> None:
    vectors = random_vectors(4000, seed=3)
    ids = np.arange(4000, dtype=np.int64) + 10
    idx = new_index("ivf16", train=vectors[:1000])  # Milvus trains on the server
    assert isinstance(idx, FaissIndex | MilvusIndex)
    idx.add(ids, vectors)
    queries = random_vectors(50, seed=4)
    idx.nprobe = 16  # every list: exact
    assert_same_results(idx.search(queries, 5), brute_force_search(vectors, ids, queries, 5))
    idx.nprobe = 4
    _, found = idx.search(queries, 10)
    _, truth = brute_force_search(vectors, ids, queries, 10)
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    assert hits / truth.size > 0.5
    assert idx.remove(ids[:100]) == 100 and idx.ntotal == 3900
    # the kept vectors keep their ids, and reconstruct (the subset search's, `similar`'s)
    idx.nprobe = 16
    kept_v, kept_ids = vectors[100:], ids[100:]
    assert_same_results(idx.search(queries, 5), brute_force_search(kept_v, kept_ids, queries, 5))
    np.testing.assert_allclose(idx.reconstruct(ids[[100, 2000]]), vectors[[100, 2000]], atol=1e-6)
    assert ids[0] not in idx and ids[100] in idx


def test_an_ivf_index_saved_and_loaded_still_reconstructs_and_removes(tmp_path: Path) -> None:
    vectors = random_vectors(2000, seed=5)
    ids = np.arange(2000, dtype=np.int64) + 7
    idx = FaissIndex.create(DIM, "IVF16,Flat", train=vectors[:1000])
    idx.add(ids, vectors)
    save_index(idx, tmp_path / "v", meta_for(idx, version="v"))
    loaded, _ = load_index(tmp_path / "v")
    np.testing.assert_allclose(loaded.reconstruct(ids[:3]), vectors[:3], atol=1e-6)
    assert loaded.remove(ids[:10]) == 10
    loaded.nprobe = 16
    queries = vectors[10:20]
    assert_same_results(
        loaded.search(queries, 3), brute_force_search(vectors[10:], ids[10:], queries, 3)
    )


def test_prune_versions_keeps_the_newest_and_the_published(tmp_path: Path) -> None:
    idx, _, _ = build(3)
    versions = [new_version_id() for _ in range(4)]
    for version in versions:
        save_index(idx, tmp_path / version, meta_for(idx, version=version))
    publish_current(tmp_path, versions[0])  # an old version still published: kept
    crashed = tmp_path / new_version_id()
    crashed.mkdir()  # a run died while writing it (no sidecar) ...
    newest = new_version_id()
    save_index(idx, tmp_path / newest, meta_for(idx, version=newest))  # ... before this one
    (tmp_path / "notes").mkdir()  # not ours
    deleted = index_mod.prune_versions(tmp_path, keep=2)
    assert deleted == sorted([versions[1], versions[2], crashed.name])
    assert list_versions(tmp_path) == [versions[0], versions[3], newest]
    assert (tmp_path / "notes").is_dir()
    with pytest.raises(ValueError):
        index_mod.prune_versions(tmp_path, keep=0)
