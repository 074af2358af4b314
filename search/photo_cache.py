"""What a search saw in a photo, kept for the same photo searched again with other filters.

The page searches again whenever a filter changes (category, price, stock, k), and so does
an API client that pages through results. Segmenting and embedding are nine tenths of a
search. So the instances and their query vectors are kept, keyed by the photo's content
hash and by what changes them: the region and the text refinement. The filters, `k` and
`min_score` only change the ranking, which runs again on every search, against the index
version being served then.

Masks are stored bit-packed (an eighth of their bytes), and the cache holds at most
`max_bytes`, dropping the least recently used photos first. It is shared by the inference
workers and safe to use from several threads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from search.types import Box, Instance


def photo_key(data: bytes) -> str:
    """The content hash a photo is cached under (sha256 of its encoded bytes)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Perceived:
    """What segmenting and embedding found: the instances, the close-up subject (an
    instance's index, or None) and one query vector per query (instances, then the whole
    photo when there is a subject)."""

    instances: list[Instance]
    subject: int | None
    vectors: npt.NDArray[np.float32]


@dataclass(frozen=True)
class _Packed:
    instances: list[tuple[Instance, npt.NDArray[np.uint8]]]  # masks replaced by their bits
    shape: tuple[int, int]
    subject: int | None
    vectors: npt.NDArray[np.float32]

    @property
    def nbytes(self) -> int:
        return self.vectors.nbytes + sum(bits.nbytes for _, bits in self.instances) + 512


CacheKey = tuple[str, Box | None, str | None]


class PhotoCache:
    """An LRU of `Perceived` by (photo hash, region, text), bounded by `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, _Packed] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: CacheKey) -> Perceived | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return _unpack(entry)

    def put(self, key: CacheKey, perceived: Perceived) -> None:
        entry = _pack(perceived)
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes


def _pack(perceived: Perceived) -> _Packed:
    shape = perceived.instances[0].mask.shape if perceived.instances else (0, 0)
    packed = [
        (replace(inst, mask=np.zeros((0, 0), dtype=bool)), np.packbits(inst.mask, axis=None))
        for inst in perceived.instances
    ]
    vectors = np.array(perceived.vectors, dtype=np.float32, copy=True)
    vectors.setflags(write=False)
    return _Packed(packed, (int(shape[0]), int(shape[1])), perceived.subject, vectors)


def _unpack(entry: _Packed) -> Perceived:
    count = entry.shape[0] * entry.shape[1]
    instances = [
        replace(inst, mask=np.unpackbits(bits, count=count).astype(bool).reshape(entry.shape))
        for inst, bits in entry.instances
    ]
    return Perceived(instances, entry.subject, entry.vectors)
