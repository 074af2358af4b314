"""The eval runner's pieces that need no models: the crop memo and the close-up pass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

from search.evaluation.closeups import CloseupFraming, closeup_recall
from search.evaluation.runner import CloseupPass, EvalQuery, MemoEmbedder
from search.service import SearchOptions, SearchService, closeup_subject
from search.types import Box, IndexInfo, Instance, InstanceResult, ProductHit, SearchResult


class CountingEmbedder:
    name = "counting"
    dim = 2

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.embedded += len(images)
        return np.array([[im.getpixel((0, 0))[0] / 255.0, 1.0] for im in images], np.float32)


def test_memo_embedder_embeds_each_distinct_crop_once() -> None:
    inner = CountingEmbedder()
    memo = MemoEmbedder(inner, size=3)
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    first = memo.embed([red, blue, red.copy()])
    assert inner.embedded == 2 and first.shape == (3, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first[0], first[2])
    again = memo.embed([blue, red])
    assert inner.embedded == 2
    np.testing.assert_array_equal(again, first[[1, 0]])
    memo.embed([Image.new("RGB", (4, 4), (9, 9, 9)), Image.new("RGB", (4, 5), (9, 9, 9))])
    assert inner.embedded == 4  # over its size: forgets, embeds the new ones
    assert memo.embed([]).shape == (0, 2)


class PoolingCountingEmbedder(CountingEmbedder):
    """Its pooled vector's first value is the mask's mean: different masks, other vectors."""

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[np.ndarray | None] | None
    ) -> np.ndarray:
        assert masks is not None
        self.embedded += len(images)
        return np.array([[float(np.mean(m)), 1.0] for m in masks], np.float32)


def test_memo_embedder_pools_by_mask_and_keys_by_crop_and_mask() -> None:
    inner = PoolingCountingEmbedder()
    memo = MemoEmbedder(inner)
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    half, full = np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)
    half[:, :2] = 1.0
    out = memo.embed_weighted([red, red, red], [half, full, half])
    assert inner.embedded == 2
    np.testing.assert_allclose(out[:, 0], [0.5, 1.0, 0.5])
    plain = memo.embed([red])  # no mask: its own key, the plain vector
    assert inner.embedded == 3 and plain[0, 0] == 1.0
    counting = CountingEmbedder()  # an inner embedder that cannot pool embeds as usual
    np.testing.assert_allclose(MemoEmbedder(counting).embed_weighted([red], [half]), [[1.0, 1.0]])


class FakeService:
    """Finds one couch filling 80% of whatever photo it gets, with `products`."""

    def __init__(self, products: tuple[str, ...]) -> None:
        self.products = products
        self.photos: list[tuple[int, int]] = []

    def search(self, image: Image.Image, options: SearchOptions) -> SearchResult:
        self.photos.append(image.size)
        w, h = image.size
        couch = Instance(Box(0, 0, 0.8 * w, h), "couch", 0.9, np.zeros((1, 1), dtype=bool))
        hits = [ProductHit(sku, sku, None, 1.0 - i / 10) for i, sku in enumerate(self.products)]
        return SearchResult(
            IndexInfo("v", None, 1, "e"), image.size, [InstanceResult(couch, hits)], {}
        )

    def closeup_subject(self, image: Image.Image, instances: Sequence[Instance]) -> int | None:
        return closeup_subject(instances, image.size, 0.5)


def test_closeup_pass_searches_each_closeup_with_every_method() -> None:
    room = Image.new("RGB", (1000, 800), (120, 120, 120))
    couch = Instance(Box(100, 300, 700, 700), "couch", 0.9, np.zeros((1, 1), dtype=bool))
    chair = Instance(Box(800, 400, 900, 600), "chair", 0.8, np.zeros((1, 1), dtype=bool))
    query = EvalQuery(Path("room.jpg"), {"S": "sofa", "L": "lamp"})
    finds, misses = FakeService(("x", "S")), FakeService(("y",))
    methods = cast(dict[str, SearchService], {"finds": finds, "misses": misses})
    closeup = CloseupPass(methods, CloseupFraming())
    closeup.run(room, [couch, chair], query)
    # the couch's close-up is searched by both; the chair's has no right product (no chair
    # in the room), so it is skipped
    assert len(finds.photos) == len(misses.photos) == 1
    assert finds.photos[0][0] > finds.photos[0][1]  # a wide object: a landscape crop
    assert [o.expected for o in closeup.outcomes["finds"]] == [{"S": "sofa"}]
    assert closeup.rooms_fired == 0  # the room's couch covers 30% of it
    assert closeup.crops_fired == 1  # the fake's couch fills 80% of the crop
    assert closeup_recall(closeup.outcomes["finds"], ks=(1, 2)).recall_at == {1: 0.0, 2: 1.0}
    assert closeup_recall(closeup.outcomes["misses"]).recall_at[10] == 0.0
