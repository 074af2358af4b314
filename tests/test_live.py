"""LiveIndex: follows CURRENT, swaps without blocking searches, survives a broken version."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import search.live
from search.errors import IndexNotReady, ModelMismatch
from search.index import (
    CURRENT_FILE,
    VECTORS_FILE,
    FaissIndex,
    IndexMeta,
    l2_normalize,
    publish_current,
    save_index,
    utc_now_iso,
    version_dir,
)
from search.live import LiveIndex

DIM = 8
EMBEDDER = "emb"


def publish(root: Path, version: str, n: int, *, embedder: str = EMBEDDER) -> None:
    vectors = l2_normalize(np.random.default_rng(n).standard_normal((n, DIM)))
    index = FaissIndex.create(DIM)
    index.add(np.arange(1, n + 1), vectors)
    meta = IndexMeta(embedder, DIM, "ip", n, "Flat", version, utc_now_iso())
    save_index(index, version_dir(root, version), meta)
    publish_current(root, version)


def live(root: Path, **kwargs: Any) -> LiveIndex:
    return LiveIndex(root, embedder=EMBEDDER, dim=DIM, **kwargs)


def test_follows_the_current_pointer(tmp_path: Path) -> None:
    index = live(tmp_path)
    with pytest.raises(IndexNotReady):
        index.get()
    assert index.peek() is None
    publish(tmp_path, "v1", 3)
    first = index.get()
    assert (first.meta.version, first.index.ntotal) == ("v1", 3)
    assert index.get() is first, "the same version is not loaded twice"
    publish(tmp_path, "v2", 5)
    assert index.get().meta.version == "v2"
    (tmp_path / CURRENT_FILE).unlink()
    assert index.get().meta.version == "v2", "a vanished pointer keeps the loaded version"


def test_a_broken_new_version_keeps_the_old_one_in_service(tmp_path: Path) -> None:
    index = live(tmp_path, retry_s=60)
    publish(tmp_path, "v1", 3)
    assert index.get().meta.version == "v1"
    publish(tmp_path, "v2", 4)
    vectors = version_dir(tmp_path, "v2") / VECTORS_FILE
    vectors.write_bytes(vectors.read_bytes()[:50])  # truncated after publishing
    assert index.get().meta.version == "v1"
    assert index.get().meta.version == "v1", "not retried before retry_s"
    publish(tmp_path, "v3", 6)
    assert index.get().meta.version == "v3"


def test_another_embedder_is_refused_on_first_load(tmp_path: Path) -> None:
    publish(tmp_path, "v1", 3, embedder="other")
    with pytest.raises(ModelMismatch):
        live(tmp_path).get()


def test_searches_keep_the_old_version_while_the_new_one_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = live(tmp_path)
    publish(tmp_path, "v1", 3)
    old = index.get()
    loading, release = threading.Event(), threading.Event()
    real_load = search.live.load_index

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        loading.set()
        assert release.wait(10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(search.live, "load_index", slow_load)
    publish(tmp_path, "v2", 5)
    got: list[str] = []
    loader = threading.Thread(target=lambda: got.append(index.get().meta.version))
    loader.start()
    assert loading.wait(10)
    assert index.get() is old, "a search during the load is answered from the old version"
    release.set()
    loader.join(10)
    assert got == ["v2"] and index.get().meta.version == "v2"
