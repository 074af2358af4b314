"""The compressed index (search.ann): size-based choice, recall against brute force,
add/remove, and the save/load round trip of its memory-mapped vectors file."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

from search.ann import REFINE_FILE, REFINE_IDS_FILE, RefinedIndex, split_refine
from search.errors import IndexNotReady
from search.index import (
    FaissIndex,
    brute_force_search,
    choose_factory,
    l2_normalize,
    load_index,
    save_index,
    training_size,
)
from tests.test_index import meta_for

DIM, N = 64, 20_000
#: thresholds scaled down so 20k vectors of 64-d get the compressed index
SMALL = {"flat_max": 1_000, "ivf_flat_max_bytes": 1_000_000}


def clustered(n: int, seed: int, centres: int = 200) -> np.ndarray:
    """Unit vectors around `centres` random centres (denser than uniform, like embeddings)."""
    rng = np.random.default_rng(seed)
    centre = np.random.default_rng(99).standard_normal((centres, DIM))
    return l2_normalize(centre[rng.integers(0, centres, n)] + rng.standard_normal((n, DIM)))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, queries)."""
    return np.arange(N, dtype=np.int64) * 3 + 5, clustered(N, 0), clustered(100, 1)


@pytest.fixture()
def built(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> tuple[FaissIndex, np.ndarray, np.ndarray]:
    ids, vectors, _ = data
    factory = choose_factory(N, DIM, **SMALL)
    sample = vectors[np.random.default_rng(2).choice(N, training_size(factory, DIM), False)]
    idx = FaissIndex.create(DIM, factory, train=sample, workdir=tmp_path / "work")
    idx.add(ids, vectors)
    return idx, ids, vectors


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


def test_the_index_type_follows_the_size() -> None:
    assert choose_factory(2_187, 2560) == "Flat"  # the demo catalog stays exact
    assert choose_factory(300_000, 2560) == "Flat"
    assert choose_factory(500_000, 2560) == "IVF512,Flat"  # 5.1 GB of raw vectors
    assert choose_factory(1_000_000, 1280) == "IVF1024,Flat"
    compressed = choose_factory(1_000_000, 2560)  # 10.2 GB raw: over 8 GiB
    assert compressed == "PCAR512,IVF1024,PQ256x4fs,Refine(SQfp16)"
    assert choose_factory(10_000_000, 2560) == "PCAR512,IVF4096,PQ256x4fs,Refine(SQfp16)"
    assert split_refine(compressed) == ("PCAR512,IVF1024,PQ256x4fs", "float16")
    assert training_size(compressed, 2560) == 1024 * 40
    assert choose_factory(N, DIM, **SMALL) == "PCAR64,IVF256,PQ32x4fs,Refine(SQfp16)"
    with pytest.raises(ValueError):
        split_refine("IVF16,Flat,Refine(SQ4)")


def test_recall_and_exact_scores_against_brute_force(
    built: tuple[FaissIndex, np.ndarray, np.ndarray], data: tuple[np.ndarray, ...]
) -> None:
    idx, ids, vectors = built
    queries = data[2]
    assert isinstance(idx, RefinedIndex) and idx.ntotal == N
    scores, found = idx.search(queries, 10)
    _, truth = brute_force_search(vectors, ids, queries, 10)
    assert recall(found, truth) >= 0.9
    # re-ranked scores are the exact inner products of the returned ids (float16 vectors)
    pos = (found - 5) // 3
    exact = np.einsum("qkd,qd->qk", vectors[pos], queries)
    np.testing.assert_allclose(scores, exact, atol=2e-3)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    single_scores, single = idx.search(queries[0], 3)
    assert single.shape == (1, 3) and single_scores.dtype == np.float32


def test_add_remove_and_reconstruct(built: tuple[FaissIndex, np.ndarray, np.ndarray]) -> None:
    idx, ids, vectors = built
    np.testing.assert_allclose(idx.reconstruct(ids[[0, 7, 9]]), vectors[[0, 7, 9]], atol=1e-3)
    _, found = idx.search(vectors[:20], 1)
    assert (found[:, 0] == ids[:20]).mean() >= 0.9  # each vector finds itself
    assert idx.remove(np.concatenate([ids[:20], [10**9]])) == 20
    assert idx.ntotal == N - 20 and ids[0] not in idx and ids[20] in idx
    _, found = idx.search(vectors[:20], 10)
    assert not np.isin(found, ids[:20]).any()
    with pytest.raises(ValueError, match="not in the index"):
        idx.reconstruct(ids[:1])
    with pytest.raises(ValueError, match="already in the index"):
        idx.add(ids[20:21], vectors[20:21])
    idx.add(ids[:20], vectors[:20])  # re-add what was removed
    _, found = idx.search(vectors[:20], 1)
    assert (found[:, 0] == ids[:20]).mean() >= 0.9
    assert sorted(idx.ids().tolist()) == sorted(ids.tolist())
    assert idx.to_gpu() is False
    assert isinstance(idx, RefinedIndex) and idx.dead_codes == 20


def test_save_load_round_trip_with_a_memory_mapped_store(
    built: tuple[FaissIndex, np.ndarray, np.ndarray],
    data: tuple[np.ndarray, ...],
    tmp_path: Path,
) -> None:
    idx, ids, vectors = built
    queries = data[2]
    before = idx.search(queries, 10)
    v1 = tmp_path / "v1"
    save_index(idx, v1, meta_for(idx, version="v1"))
    assert not list((tmp_path / "work").iterdir())  # the build's file was moved, not copied
    sidecar = json.loads((v1 / "index.json").read_text())
    assert sidecar["factory"] == "PCAR64,IVF256,PQ32x4fs,Refine(SQfp16)"
    assert sidecar["training"]["vectors"] == 256 * 40 and len(sidecar["training"]["sha256"]) == 16
    refine = sidecar["refine"]
    assert refine["rows"] == N and refine["dtype"] == "float16"
    assert refine["bytes"] == N * DIM * 2 == (v1 / REFINE_FILE).stat().st_size
    loaded, meta = load_index(v1)
    assert isinstance(loaded, RefinedIndex) and meta.count == N
    assert loaded.store.path == v1 / REFINE_FILE and loaded.training == sidecar["training"]
    for got, want in zip(loaded.search(queries, 10), before, strict=True):
        np.testing.assert_array_equal(got, want)

    # mutate the loaded index and save a second version: only live rows are written
    loaded.remove(ids[:100])
    extra = clustered(50, 7)
    loaded.add(np.arange(50) + 10**6, extra)
    save_index(loaded, tmp_path / "v2", meta_for(loaded, version="v2"))
    again, _ = load_index(tmp_path / "v2")
    assert again.ntotal == N - 50 and (10**6 + 3) in again and ids[0] not in again
    assert isinstance(again, RefinedIndex) and again.dead_codes == 0
    assert (tmp_path / "v2" / REFINE_FILE).stat().st_size == (N - 50) * DIM * 2
    np.testing.assert_allclose(again.reconstruct([10**6 + 3]), extra[3:4], atol=1e-3)
    _, found = again.search(extra, 1)
    assert (found[:, 0] == np.arange(50) + 10**6).mean() >= 0.9
    first, _ = load_index(v1)  # the first version is untouched
    assert first.ntotal == N and ids[0] in first


def test_load_refuses_missing_or_truncated_store(
    built: tuple[FaissIndex, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    idx = built[0]
    target = tmp_path / "v"
    save_index(idx, target, meta_for(idx, version="v"))
    with open(target / REFINE_FILE, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(IndexNotReady, match="size"):
        load_index(target)
    (target / REFINE_IDS_FILE).unlink()
    with pytest.raises(IndexNotReady, match="missing"):
        load_index(target)


def test_an_unsaved_build_leaves_no_file(tmp_path: Path) -> None:
    vectors = clustered(12_000, 3)
    factory = choose_factory(12_000, DIM, **SMALL)
    idx = FaissIndex.create(DIM, factory, train=vectors[:10_240], workdir=tmp_path)
    idx.add(np.arange(12_000), vectors)
    assert len(list(tmp_path.iterdir())) == 1
    del idx
    gc.collect()
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="needs training"):
        FaissIndex.create(DIM, factory)


def test_a_move_across_file_systems_copies_then_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from search import ann_store

    source, target = tmp_path / "pending.tmp", tmp_path / "v1" / "refine.vectors"
    target.parent.mkdir()
    source.write_bytes(b"vectors")
    real = os.replace
    calls: list[str] = []

    def replace(src: object, dst: object) -> None:
        calls.append(str(src))
        if len(calls) == 1:  # the first, direct rename crosses file systems
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(ann_store.os, "replace", replace)
    ann_store._move(source, target)
    assert target.read_bytes() == b"vectors" and not source.exists()
    assert len(calls) == 2 and not list(target.parent.glob(".*"))


def test_a_new_build_removes_the_vectors_file_of_one_that_died(tmp_path: Path) -> None:
    """A compressed build that dies before saving leaves its vectors file (up to the whole
    catalog) in the index root; the next build, which runs under the indexer lock, removes
    it and builds its own beside the versions."""
    from search.index_store import FileIndexStore

    root = tmp_path / "index"
    root.mkdir()
    stale = root / ".refine-abc123.tmp"
    stale.write_bytes(b"\0" * 4096)
    keep = root / "notes.txt"  # not ours
    keep.write_text("x")
    vectors = clustered(12_000, 4)
    factory = choose_factory(12_000, DIM, **SMALL)
    store = FileIndexStore(root)
    idx = store.create("20261201T000000000000Z-aaaaaa", DIM, factory, train=vectors[:10_240])
    assert not stale.exists() and keep.exists()
    idx.add(np.arange(12_000), vectors)
    pending = sorted(root.glob(".refine-*.tmp"))
    assert len(pending) == 1  # this build's own, on the versions' file system
