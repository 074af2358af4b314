"""The photo cache: what a search saw comes back exactly, bounded by bytes, by key."""

from __future__ import annotations

import numpy as np

from search.photo_cache import Perceived, PhotoCache, photo_key
from search.types import Box, Instance


def _perceived(seed: int, size: tuple[int, int] = (37, 53), n: int = 3) -> Perceived:
    rng = np.random.default_rng(seed)
    height, width = size
    instances = [
        Instance(Box(1, 2, 30, 20), f"thing{i}", 0.5 + i / 10, rng.random((height, width)) > 0.5)
        for i in range(n)
    ]
    vectors = rng.normal(size=(n + 1, 8)).astype(np.float32)
    return Perceived(instances, 1, vectors)


def test_an_entry_comes_back_exactly() -> None:
    cache = PhotoCache(1 << 20)
    original = _perceived(0)
    key = (photo_key(b"photo"), None, None)
    assert cache.get(key) is None
    cache.put(key, original)
    back = cache.get(key)
    assert back is not None and back.subject == 1
    np.testing.assert_array_equal(back.vectors, original.vectors)
    for a, b in zip(back.instances, original.instances, strict=True):
        assert (a.box, a.label, a.score) == (b.box, b.label, b.score)
        assert a.mask.dtype == bool and np.array_equal(a.mask, b.mask)
    assert not back.vectors.flags.writeable  # nobody changes what later searches read
    assert (cache.hits, cache.misses) == (1, 1)


def test_region_and_text_are_part_of_the_key() -> None:
    cache = PhotoCache(1 << 20)
    photo = photo_key(b"photo")
    cache.put((photo, None, None), _perceived(0))
    assert cache.get((photo, Box(0, 0, 10, 10), None)) is None
    assert cache.get((photo, None, "in green")) is None
    assert cache.get((photo_key(b"other"), None, None)) is None
    assert cache.get((photo, None, None)) is not None


def test_least_recently_used_photos_go_first_and_bytes_stay_bounded() -> None:
    one = PhotoCache(1 << 20)
    one.put(("a", None, None), _perceived(0))
    size = one.nbytes  # bits of 3 masks, 4 vectors and the bookkeeping
    assert size < 3 * 37 * 53  # packed: far less than a byte a pixel
    cache = PhotoCache(size * 2 + size // 2)  # room for two
    cache.put(("a", None, None), _perceived(0))
    cache.put(("b", None, None), _perceived(1))
    assert cache.get(("a", None, None)) is not None  # a is now the most recent
    cache.put(("c", None, None), _perceived(2))
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    assert cache.get(("b", None, None)) is None
    assert cache.get(("a", None, None)) is not None and cache.get(("c", None, None)) is not None


def test_an_entry_bigger_than_the_cache_is_not_kept() -> None:
    cache = PhotoCache(100)
    cache.put(("a", None, None), _perceived(0, size=(400, 400)))
    assert len(cache) == 0 and cache.nbytes == 0


def test_no_instances() -> None:
    cache = PhotoCache(1 << 20)
    cache.put(("a", None, None), Perceived([], None, np.zeros((0, 8), dtype=np.float32)))
    back = cache.get(("a", None, None))
    assert back is not None and back.instances == [] and back.subject is None
