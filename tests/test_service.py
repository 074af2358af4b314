"""SearchService on a real database and a real FAISS index, with fake models whose vectors
the test chooses, checked against a brute-force ranking (filters, over-fetching, the
category policy, regions and look-alike products)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from search import subsets
from search.config import ModelSettings
from search.db import InstanceRow, Product, ProductImage
from search.errors import InvalidInput, ProductNotFound
from search.filters import ProductFilter
from search.index import FaissIndex, IndexMeta, publish_current, save_index, version_dir
from search.live import LiveIndex
from search.masks import box_mask
from search.service import (
    CALIBRATION_POOL,
    REGION_LABEL,
    WHOLE_IMAGE_LABEL,
    SearchOptions,
    SearchService,
    calibrate,
    closeup_subject,
    confidence_weight,
    merge_best,
)
from search.types import Box, Instance, ProductHit, Vectors

DIM = 8
EMBEDDER = "fake-embedder"
RED, BLUE = (255, 0, 0), (0, 0, 255)
N_CHAIRS, N_SOFAS = 30, 10


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


QUERY_RED = _unit(np.eye(DIM)[0])
QUERY_BLUE = _unit(np.array([0.3, 1.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0]))


class FakeSegmenter:
    """Two instances: the left half ("couch") and the right half ("lamp") of the photo."""

    name = "fake-segmenter"

    def segment(self, image: Image.Image) -> list[Instance]:
        w, h = image.size
        left = np.zeros((h, w), dtype=bool)
        left[:, : w // 2] = True
        return [
            Instance(Box(0, 0, w // 2, h), "couch", 0.9, left),
            Instance(Box(w // 2, 0, w, h), "lamp", 0.8, ~left),
        ]

    def segment_product(self, image: Image.Image) -> list[Instance]:
        return self.segment(image)[:1]


class FakeEmbedder:
    """The vector of a crop is chosen by the colour at its centre."""

    name = EMBEDDER
    dim = DIM

    def embed(self, images: Sequence[Image.Image]) -> Vectors:
        table = {RED: QUERY_RED, BLUE: QUERY_BLUE}
        rows = [table[im.convert("RGB").getpixel((im.width // 2, im.height // 2))] for im in images]
        return np.stack(rows).astype(np.float32)


class MaskPoolingFakeEmbedder(FakeEmbedder):
    """As FakeEmbedder, and with mask pooling the colour under the mask's first full pixel."""

    def embed_weighted(
        self, images: Sequence[Image.Image], masks: Sequence[np.ndarray | None] | None
    ) -> Vectors:
        assert masks is not None and len(masks) == len(images)
        table = {RED: QUERY_RED, BLUE: QUERY_BLUE}
        rows = []
        for image, mask in zip(images, masks, strict=True):
            assert mask is not None and mask.shape == (image.height, image.width)
            y, x = np.argwhere(mask >= 1.0)[0]
            rows.append(table[image.convert("RGB").getpixel((int(x), int(y)))])
        return np.stack(rows).astype(np.float32)


def _photo() -> Image.Image:
    image = Image.new("RGB", (200, 100), RED)
    image.paste(BLUE, (100, 0, 200, 100))
    return image


@dataclass(frozen=True)
class Item:
    sku: str
    category: str
    price: float
    vectors: list[np.ndarray]


def _catalog() -> list[Item]:
    """Chairs closest to the red query, then sofas; every product closer than the next.

    Product i's vector makes angle 0.02 * (i + 1) ** 1.1 with the red query, in the plane of
    axes 0 and 2 + (i % 6), so a red search ranks them in order: all chairs before any sofa
    (the exponent keeps the pairwise similarities free of ties).
    """
    rng = np.random.default_rng(7)
    items = []
    for i in range(N_CHAIRS + N_SOFAS):
        angle = 0.02 * (i + 1) ** 1.1
        v = np.zeros(DIM)
        v[0], v[2 + i % 6] = np.cos(angle), np.sin(angle)
        category = "chair" if i < N_CHAIRS else "sofa"
        vectors = [_unit(v)]
        if i == 5:  # a product with a second photo that looks like the blue query
            vectors.append(_unit(np.eye(DIM)[1] + 0.05 * rng.standard_normal(DIM)))
        items.append(Item(f"sku-{i:02d}", category, 10.0 * (i + 1), vectors))
    return items


def _store(session: Session, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    """Products, one image per vector, one instance per image; returns (ids, vectors)."""
    ids, vectors = [], []
    next_id = 1
    for item in items:
        product = Product(
            sku=item.sku,
            title=f"{item.category} {item.sku}",
            category=item.category.upper() if item.sku == "sku-35" else item.category,
            price=item.price,
            currency="EUR",
            merchant="shop-a" if int(item.sku[-2:]) % 2 == 0 else "shop-b",
            in_stock=int(item.sku[-2:]) % 3 != 0,
            extra={"material": ["oak", "wool"] if item.sku == "sku-31" else "pine"},
        )
        session.add(product)
        session.flush()
        for position, vector in enumerate(item.vectors):
            image = ProductImage(
                product_id=product.id,
                position=position,
                source=f"/nowhere/{item.sku}-{position}.jpg",
                resolved=f"/nowhere/{item.sku}-{position}.jpg",
                status="ok",
            )
            session.add(image)
            session.flush()
            session.add(
                InstanceRow(
                    image_id=image.id,
                    label="thing",
                    score=1.0,
                    x0=0.0,
                    y0=0.0,
                    x1=1.0,
                    y1=1.0,
                    mask_rle={"size": [1, 1], "counts": "01"},
                    mask_area=1,
                    vector_id=next_id,
                    embedder=EMBEDDER,
                    vector=vector.tobytes(),
                )
            )
            ids.append(next_id)
            vectors.append(vector)
            next_id += 1
    session.commit()
    return np.asarray(ids, dtype=np.int64), np.stack(vectors)


@dataclass(frozen=True)
class World:
    service: SearchService
    items: list[Item]
    ids: np.ndarray
    vectors: np.ndarray
    skus_by_id: dict[int, str]


def _publish(root: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    index = FaissIndex.create(DIM)
    index.add(ids, vectors)
    meta = IndexMeta(EMBEDDER, DIM, "ip", len(ids), "Flat", "v1", "2025-01-01T00:00:00+00:00")
    save_index(index, version_dir(root, "v1"), meta)
    publish_current(root, "v1")


def _service(
    root: Path,
    session_factory: sessionmaker[Session],
    *,
    oversample: int = 1,
    temperature: float = 0.0,
    **kwargs: object,
) -> SearchService:
    """A service over the fake models; scores are raw cosines unless `temperature` > 0."""
    settings = ModelSettings(oversample=oversample, crop_margin=0.0, score_temperature=temperature)
    return SearchService(
        segmenter=FakeSegmenter(),
        embedder=FakeEmbedder(),
        live_index=LiveIndex(root, embedder=EMBEDDER, dim=DIM),
        session_factory=session_factory,
        settings=settings,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def world(tmp_path: Path, session_factory: sessionmaker[Session]) -> Iterator[World]:
    items = _catalog()
    with session_factory() as session:
        ids, vectors = _store(session, items)
    _publish(tmp_path / "index", ids, vectors)
    skus = [item.sku for item in items for _ in item.vectors]
    yield World(
        _service(tmp_path / "index", session_factory),
        items,
        ids,
        vectors,
        dict(zip(ids.tolist(), skus, strict=True)),
    )


def _brute_force(
    world: World, query: np.ndarray, keep: set[str], k: int, exclude: str = ""
) -> list[tuple[str, float]]:
    """Each kept product once with its best score, best first: the reference ranking."""
    best: dict[str, float] = {}
    for vid, score in zip(world.ids.tolist(), (world.vectors @ query).tolist(), strict=True):
        sku = world.skus_by_id[vid]
        if sku in keep and sku != exclude:
            best[sku] = max(best.get(sku, -2.0), score)
    return sorted(best.items(), key=lambda kv: -kv[1])[:k]


def _ranking(hits: Sequence[object]) -> list[tuple[str, float]]:
    return [(h.sku, round(h.score, 5)) for h in hits]  # type: ignore[attr-defined]


def _rounded(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return [(sku, round(score, 5)) for sku, score in pairs]


def _vectors_of(world: World, sku: str) -> list[np.ndarray]:
    return [
        v
        for vid, v in zip(world.ids.tolist(), world.vectors, strict=True)
        if world.skus_by_id[vid] == sku
    ]


def _skus(world: World, category: str) -> set[str]:
    return {item.sku for item in world.items if item.category == category}


def test_unfiltered_search_ranks_like_brute_force(world: World) -> None:
    result = world.service.search(_photo(), SearchOptions(k=5))
    assert [g.instance.label for g in result.groups] == ["couch", "lamp"]
    every = {item.sku for item in world.items}
    red, blue = result.groups
    assert _ranking(red.products) == _rounded(_brute_force(world, QUERY_RED, every, 5))
    assert _ranking(blue.products) == _rounded(_brute_force(world, QUERY_BLUE, every, 5))
    assert result.index.version == "v1" and result.index.vector_count == len(world.ids)


def test_product_with_two_photos_appears_once_with_its_best_score(world: World) -> None:
    blue = world.service.search(_photo(), SearchOptions(k=40)).groups[1]
    skus = [h.sku for h in blue.products]
    assert len(skus) == len(set(skus)) == 40
    assert skus[0] == "sku-05"  # its second photo is the blue one
    assert blue.products[0].score > 0.9


def test_a_narrow_filter_fetches_more_until_k_products_pass(world: World) -> None:
    # With oversample 1 the first fetch (k = 3 vectors) holds only chairs: the sofas rank
    # 31st and below, so the service must keep doubling its fetch to find them.
    options = SearchOptions(k=3, filters=ProductFilter(categories=frozenset({"Sofa"})))
    red = world.service.search(_photo(), options).groups[0]
    expected = _brute_force(world, QUERY_RED, _skus(world, "sofa"), 3)
    assert _ranking(red.products) == _rounded(expected)
    assert [h.sku for h in red.products] == ["sku-30", "sku-31", "sku-32"]


def test_filters_combine_and_match_brute_force(world: World) -> None:
    filters = ProductFilter(
        min_price=100.0, max_price=300.0, in_stock=True, merchants=frozenset({"SHOP-A"})
    )
    red = world.service.search(_photo(), SearchOptions(k=10, filters=filters)).groups[0]
    keep = {
        item.sku
        for item in world.items
        if 100 <= item.price <= 300 and int(item.sku[-2:]) % 3 != 0 and int(item.sku[-2:]) % 2 == 0
    }
    assert keep and _ranking(red.products) == _rounded(_brute_force(world, QUERY_RED, keep, 10))
    for hit in red.products:
        assert hit.price is not None and 100 <= hit.price <= 300


def test_attribute_filter_reads_extra_fields_and_lists(world: World) -> None:
    filters = ProductFilter(attributes=(("material", frozenset({"wool"})),))
    red = world.service.search(_photo(), SearchOptions(k=5, filters=filters)).groups[0]
    assert [h.sku for h in red.products] == ["sku-31"]
    assert red.products[0].extra == {"material": ["oak", "wool"]}


def test_a_filter_nothing_passes_exhausts_the_index_and_returns_nothing(world: World) -> None:
    options = SearchOptions(k=3, filters=ProductFilter(categories=frozenset({"bed"})))
    result = world.service.search(_photo(), options)
    assert [g.products for g in result.groups] == [[], []]


def test_a_policy_and_a_filter_that_exclude_each_other_skip_the_index(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    """A couch restricted to sofas, under a caller's filter for chairs, can match nothing:
    it goes straight to the caller's filter alone, without paging through the index."""

    def policy(instance: Instance) -> frozenset[str] | None:
        return frozenset({"sofa"})

    service = _service(tmp_path / "index", session_factory, category_policy=policy)
    calls = _counting(service)
    options = SearchOptions(k=3, filters=ProductFilter(categories=frozenset({"chair"})))
    couch, lamp = service.search(_photo(), options).groups
    chairs = _skus(world, "chair")
    assert _ranking(couch.products) == _rounded(_brute_force(world, QUERY_RED, chairs, 3))
    assert _ranking(lamp.products) == _rounded(_brute_force(world, QUERY_BLUE, chairs, 3))
    assert calls == []  # nothing for the sofa filter; the chairs' own vectors, widened
    assert ProductFilter(categories=frozenset()).matches_nothing
    assert not ProductFilter(min_price=4, max_price=4).matches_nothing


def _counting(service: SearchService) -> list[int]:
    """The index searches `service` makes from now on: the number of queries of each."""
    calls: list[int] = []
    index = service.live_index.get().index
    search = index.search

    def counted(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(queries))
        return search(queries, k)

    index.search = counted  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("limit", [0, 1, 2048])
def test_a_category_filter_ranks_like_brute_force_paged_or_as_a_subset(
    world: World, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Categories holding at most SUBSET_MAX vectors are scored exactly from their own
    vectors, without searching the index; more than that, the index is paged. The ranking
    is the same either way."""
    monkeypatch.setattr(subsets, "SUBSET_MAX", limit)
    calls = _counting(world.service)
    options = SearchOptions(k=4, filters=ProductFilter(categories=frozenset({"Sofa "})))
    red, blue = world.service.search(_photo(), options).groups
    sofas = _skus(world, "sofa")
    assert _ranking(red.products) == _rounded(_brute_force(world, QUERY_RED, sofas, 4))
    assert _ranking(blue.products) == _rounded(_brute_force(world, QUERY_BLUE, sofas, 4))
    assert (calls == []) == (limit >= len(_vectors_of_category(world, "sofa")))


def _vectors_of_category(world: World, category: str) -> list[np.ndarray]:
    return [v for sku in _skus(world, category) for v in _vectors_of(world, sku)]


def test_min_score_cuts_the_list(world: World) -> None:
    every = {item.sku for item in world.items}
    full = _brute_force(world, QUERY_RED, every, 40)
    cut = full[9][1]
    red = world.service.search(_photo(), SearchOptions(k=40, min_score=cut)).groups[0]
    assert _ranking(red.products) == _rounded([p for p in full if p[1] >= cut])
    assert len(red.products) == 10


def test_category_policy_restricts_each_instance(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    def policy(instance: Instance) -> frozenset[str] | None:
        return frozenset({"sofa"}) if instance.label == "couch" else None

    service = _service(tmp_path / "index", session_factory, category_policy=policy)
    couch, lamp = service.search(_photo(), SearchOptions(k=4)).groups
    assert {h.category for h in couch.products} == {"sofa"}
    every = {item.sku for item in world.items}
    assert _ranking(couch.products) == _rounded(
        _brute_force(world, QUERY_RED, _skus(world, "sofa"), 4)
    )
    assert _ranking(lamp.products) == _rounded(_brute_force(world, QUERY_BLUE, every, 4))
    # combined with the shopper's filter: both must hold; when nothing can (a couch among
    # chairs only), the instance falls back to the shopper's filter alone
    chairs_only = SearchOptions(k=4, filters=ProductFilter(categories=frozenset({"chair"})))
    couch, lamp = service.search(_photo(), chairs_only).groups
    assert {h.category for h in couch.products} == {"chair"}
    assert _ranking(couch.products) == _rounded(
        _brute_force(world, QUERY_RED, _skus(world, "chair"), 4)
    )
    assert {h.category for h in lamp.products} == {"chair"}


def test_category_policy_with_no_such_products_searches_everything(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    def policy(instance: Instance) -> frozenset[str] | None:
        return frozenset({"no-such-category"})

    service = _service(tmp_path / "index", session_factory, category_policy=policy)
    couch, _ = service.search(_photo(), SearchOptions(k=4)).groups
    every = {item.sku for item in world.items}
    assert _ranking(couch.products) == _rounded(_brute_force(world, QUERY_RED, every, 4))


def test_region_is_searched_as_one_instance(world: World) -> None:
    region = Box(120.0, -10.0, 400.0, 80.0)  # partly outside the 200x100 photo: clipped
    result = world.service.search(_photo(), SearchOptions(k=3, region=region))
    assert len(result.groups) == 1
    inst = result.groups[0].instance
    assert inst.label == REGION_LABEL
    assert inst.box == Box(120.0, 0.0, 200.0, 80.0)
    assert inst.mask.sum() == 80 * 80 and inst.mask[:80, 120:].all()
    every = {item.sku for item in world.items}
    assert _ranking(result.groups[0].products) == _rounded(
        _brute_force(world, QUERY_BLUE, every, 3)
    )


def test_region_outside_the_photo_is_invalid(world: World) -> None:
    with pytest.raises(InvalidInput):
        world.service.search(_photo(), SearchOptions(region=Box(300.0, 0.0, 400.0, 50.0)))


def test_similar_products_exclude_the_product_itself(world: World) -> None:
    result = world.service.similar("sku-10", SearchOptions(k=5))
    assert result.query_vectors == 1
    every = {item.sku for item in world.items}
    query = _vectors_of(world, "sku-10")[0]
    expected = _brute_force(world, query, every, 5, exclude="sku-10")
    assert _ranking(result.products) == _rounded(expected)


def test_similar_uses_every_photo_of_the_product(world: World) -> None:
    result = world.service.similar("sku-05", SearchOptions(k=4))
    assert result.query_vectors == 2
    every = {item.sku for item in world.items}
    first, second = _vectors_of(world, "sku-05")
    per_photo = [_brute_force(world, q, every, 4, exclude="sku-05") for q in (first, second)]
    best: dict[str, float] = {}
    for sku, score in per_photo[0] + per_photo[1]:
        best[sku] = max(best.get(sku, -2.0), score)
    expected = sorted(best.items(), key=lambda kv: -kv[1])[:4]
    assert _ranking(result.products) == _rounded(expected)


def test_similar_falls_back_to_stored_vectors_when_the_index_lacks_them(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    # Publish an index without sku-10's vector: its bytes in the database serve instead.
    keep = np.array([world.skus_by_id[vid] != "sku-10" for vid in world.ids.tolist()])
    root = tmp_path / "partial"
    _publish(root, world.ids[keep], world.vectors[keep])
    service = _service(root, session_factory)
    result = service.similar("sku-10", SearchOptions(k=3))
    assert result.query_vectors == 1
    every = {item.sku for item in world.items}
    expected = _brute_force(world, _vectors_of(world, "sku-10")[0], every, 3, exclude="sku-10")
    assert _ranking(result.products) == _rounded(expected)


def test_similar_unknown_sku_is_not_found(world: World) -> None:
    with pytest.raises(ProductNotFound):
        world.service.similar("no-such-sku")


def test_merge_best_keeps_each_product_once_with_its_best_score() -> None:
    a = [ProductHit("x", "X", None, 0.9), ProductHit("y", "Y", None, 0.5)]
    b = [ProductHit("y", "Y", None, 0.95), ProductHit("z", "Z", None, 0.1)]
    merged = merge_best([a, b], k=2)
    assert [(h.sku, h.score) for h in merged] == [("y", 0.95), ("x", 0.9)]


class FakeTextEmbedder(FakeEmbedder):
    """A text tower that maps 'red' and 'blue' to the colours' query vectors."""

    def embed_text(self, texts: Sequence[str]) -> Vectors:
        return np.stack([QUERY_RED if "red" in t else QUERY_BLUE for t in texts]).astype(np.float32)


def test_text_search_ranks_like_brute_force(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    service = _service(tmp_path / "index", session_factory)
    service.embedder = FakeTextEmbedder()
    result = service.search_text("a red sofa", SearchOptions(k=5))
    every = {item.sku for item in world.items}
    assert result.text == "a red sofa"
    assert _ranking(result.products) == _rounded(_brute_force(world, QUERY_RED, every, 5))
    with pytest.raises(InvalidInput, match="empty"):
        service.search_text("  ")


def test_text_search_without_a_text_tower_is_invalid(world: World) -> None:
    with pytest.raises(InvalidInput, match="text tower"):
        world.service.search_text("a red sofa")


def test_text_refines_an_image_query(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    from search.service import TEXT_WEIGHT

    service = _service(tmp_path / "index", session_factory)
    service.embedder = FakeTextEmbedder()
    region = Box(0, 0, 100, 100)  # the red half
    refined = service.search(_photo(), SearchOptions(k=5, region=region, text="but blue"))
    mixed = QUERY_RED + TEXT_WEIGHT * QUERY_BLUE
    mixed = (mixed / np.linalg.norm(mixed)).astype(np.float32)
    every = {item.sku for item in world.items}
    (group,) = refined.groups
    assert _ranking(group.products) == _rounded(_brute_force(world, mixed, every, 5))
    plain = service.search(_photo(), SearchOptions(k=5, region=region)).groups[0]
    assert _ranking(plain.products) != _ranking(group.products)
    with pytest.raises(InvalidInput, match="text tower"):
        world.service.search(_photo(), SearchOptions(region=region, text="blue"))


def test_calibrated_scores_are_match_probabilities(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    """With a temperature, each product's score is its share of a softmax over the instance's
    best CALIBRATION_POOL similarities: same order as the cosines, independent of k."""
    service = _service(tmp_path / "index", session_factory, temperature=0.05)
    every = {item.sku for item in world.items}
    reference = _brute_force(world, QUERY_RED, every, 30)
    sims = np.array([score for _, score in reference])
    weights = np.exp((sims - sims[0]) / 0.05)
    red = service.search(_photo(), SearchOptions(k=30)).groups[0]
    confidence = red.instance.score**2  # models.confidence_power: 2 by default
    expected = weights / weights[:CALIBRATION_POOL].sum() * confidence
    assert [h.sku for h in red.products] == [sku for sku, _ in reference]
    np.testing.assert_allclose([h.score for h in red.products], expected, rtol=1e-4)
    np.testing.assert_allclose([h.similarity for h in red.products], sims, atol=1e-5)
    assert sum(h.score for h in red.products[:CALIBRATION_POOL]) == pytest.approx(confidence)
    top3 = service.search(_photo(), SearchOptions(k=3)).groups[0].products
    assert [(h.sku, h.score) for h in top3] == [(h.sku, h.score) for h in red.products[:3]]
    cut = red.products[4].score
    kept = service.search(_photo(), SearchOptions(k=30, min_score=cut)).groups[0].products
    assert [h.sku for h in kept] == [h.sku for h in red.products[:5]]


def test_confidence_weights_scores_across_instances(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    """Each instance's calibrated scores are scaled by its detector confidence to
    `confidence_power` (0: off), so a less confident instance's products rank lower across
    the photo; the order within an instance, the similarities and `min_score` follow."""
    service = _service(tmp_path / "index", session_factory, temperature=0.05)
    flat = service.search(_photo(), SearchOptions(k=10))
    assert [g.instance.score for g in flat.groups] == [0.9, 0.8]
    for power in (0.0, 1.0, 4.0):
        service.settings = service.settings.model_copy(update={"confidence_power": power})
        got = service.search(_photo(), SearchOptions(k=10))
        for plain, weighted in zip(flat.groups, got.groups, strict=True):
            weight = weighted.instance.score**power
            assert [h.sku for h in weighted.products] == [h.sku for h in plain.products]
            assert [h.similarity for h in weighted.products] == [
                h.similarity for h in plain.products
            ]
            unweighted = [h.score / plain.instance.score**2 for h in plain.products]
            np.testing.assert_allclose(
                [h.score for h in weighted.products], np.array(unweighted) * weight, rtol=1e-6
            )
    service.settings = service.settings.model_copy(update={"confidence_power": 0.0})
    plain = service.search(_photo(), SearchOptions(k=CALIBRATION_POOL)).groups
    assert sum(h.score for h in plain[0].products[:CALIBRATION_POOL]) == pytest.approx(1.0)
    # the region a shopper draws is certain: confidence 1, its scores are the plain shares
    service.settings = service.settings.model_copy(update={"confidence_power": 2.0})
    drawn = SearchOptions(k=CALIBRATION_POOL, region=Box(0, 0, 100, 100))
    (region,) = service.search(_photo(), drawn).groups
    assert region.instance.score == 1.0
    assert sum(h.score for h in region.products[:CALIBRATION_POOL]) == pytest.approx(1.0)


def test_confidence_weight_by_hand() -> None:
    inst = Instance(Box(0, 0, 4, 4), "chair", 0.5, np.ones((4, 4), dtype=bool))
    assert confidence_weight(inst, 2.0) == 0.25
    assert confidence_weight(inst, 0.0) == 1.0
    assert confidence_weight(replace(inst, score=1.7), 2.0) == 1.0


def test_calibrate_by_hand() -> None:
    hits = [ProductHit(f"s{i}", "t", None, score) for i, score in enumerate((0.9, 0.8, 0.8))]
    assert [h.score for h in calibrate(hits, 0.0)] == [0.9, 0.8, 0.8]
    scored = calibrate(hits, 0.1)
    e = np.exp(-1.0)
    assert [h.score for h in scored] == pytest.approx(
        [1 / (1 + 2 * e), e / (1 + 2 * e)] + [e / (1 + 2 * e)]
    )
    assert [h.similarity for h in scored] == [0.9, 0.8, 0.8]
    assert calibrate([], 0.1) == []


class DiscMasker:
    """A box masker that finds a disc in every box, or nothing in boxes wider than 100 px."""

    name = "disc"

    def masks(self, image: Image.Image, boxes: Sequence[Box]) -> list[np.ndarray]:
        out = []
        for box in boxes:
            mask = np.zeros((image.height, image.width), dtype=bool)
            if box.width <= 100:
                yy, xx = np.mgrid[: image.height, : image.width]
                cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (min(box.width, box.height) / 2) ** 2
            out.append(mask)
        return out


def test_a_drawn_region_returns_the_object_inside_it(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    service = _service(tmp_path / "index", session_factory, masker=DiscMasker())
    region = Box(120.0, 0.0, 200.0, 80.0)
    (group,) = service.search(_photo(), SearchOptions(k=3, region=region)).groups
    assert group.instance.box == region and group.instance.label == REGION_LABEL
    disc = DiscMasker().masks(_photo(), [region])[0]
    assert (group.instance.mask == disc).all() and disc.sum() < 80 * 80
    wide = Box(0.0, 0.0, 150.0, 80.0)  # the masker finds nothing: the region is the mask
    (group,) = service.search(_photo(), SearchOptions(k=3, region=wide)).groups
    assert group.instance.mask.sum() == 150 * 80


def _instance(box: Box, label: str = "couch") -> Instance:
    return Instance(box, label, 0.9, np.zeros((1, 1), dtype=bool))


def test_closeup_subject_is_the_object_that_fills_most_of_the_photo() -> None:
    size = (200, 100)  # 20,000 px
    room = [_instance(Box(0, 0, 100, 60)), _instance(Box(120, 10, 190, 90), "lamp")]
    assert closeup_subject(room, size, 0.5) is None  # 30% and 28%: a photo of several things
    closeup = [_instance(Box(10, 40, 60, 90), "lamp"), _instance(Box(20, 0, 180, 100))]
    assert closeup_subject(closeup, size, 0.5) == 1  # 80% of the photo, wherever it is listed
    assert closeup_subject(closeup, size, 0.85) is None
    half = [_instance(Box(0, 0, 100, 100))]
    assert closeup_subject(half, size, 0.5) is None  # exactly half is not "most"
    outside = [_instance(Box(-500, -500, 60, 500))]  # clipped to the photo: 30%
    assert closeup_subject(outside, size, 0.5) is None
    whole = [_instance(Box(0, 0, 200, 100), WHOLE_IMAGE_LABEL)]
    assert closeup_subject(whole, size, 0.5) is None  # the fallback is the whole photo already
    assert closeup_subject([], size, 0.5) is None


class CloseupSegmenter:
    """A close-up: one couch whose box covers the right 80% of the photo."""

    name = "closeup-segmenter"

    def segment(self, image: Image.Image) -> list[Instance]:
        w, h = image.size
        box = Box(0.2 * w, 0, w, h)
        return [Instance(box, "couch", 0.9, box_mask(box, w, h))]

    def segment_product(self, image: Image.Image) -> list[Instance]:
        return self.segment(image)


def _closeup_photo() -> Image.Image:
    """Red, blue from x = 110: the couch's crop (x 40-200) is blue at its centre, the whole
    photo red."""
    image = Image.new("RGB", (200, 100), RED)
    image.paste(BLUE, (110, 0, 200, 100))
    return image


def test_a_closeup_is_also_searched_whole_as_its_object(
    world: World, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    def policy(instance: Instance) -> frozenset[str] | None:
        return frozenset({"chair"}) if instance.label == "couch" else None

    service = _service(tmp_path / "index", session_factory, category_policy=policy)
    service.segmenter = CloseupSegmenter()
    photo = _closeup_photo()
    (group,) = service.search(photo, SearchOptions(k=6)).groups
    assert group.instance.label == "couch" and group.instance.box == Box(40, 0, 200, 100)
    assert {h.category for h in group.products} == {"chair"}  # the whole photo too
    chairs = _skus(world, "chair")
    box_hits = _brute_force(world, QUERY_BLUE, chairs, 6)
    whole_hits = _brute_force(world, QUERY_RED, chairs, 6)  # searched as the couch it is
    best: dict[str, float] = {}
    for sku, score in box_hits + whole_hits:
        best[sku] = max(best.get(sku, -2.0), score)
    merged = sorted(best.items(), key=lambda kv: -kv[1])[:6]
    assert _ranking(group.products) == _rounded(merged) != _rounded(box_hits)
    # with the rule off, or for a drawn region, only the box is searched
    service.settings = service.settings.model_copy(update={"closeup": False})
    (group,) = service.search(photo, SearchOptions(k=6)).groups
    assert _ranking(group.products) == _rounded(box_hits)
    service.settings = service.settings.model_copy(update={"closeup": True})
    region = Box(40, 0, 200, 100)
    (group,) = service.search(photo, SearchOptions(k=6, region=region)).groups
    every = {item.sku for item in world.items}
    assert _ranking(group.products) == _rounded(_brute_force(world, QUERY_BLUE, every, 6))


def test_a_photo_of_several_things_is_not_a_closeup(world: World) -> None:
    # the fake room: a couch and a lamp, each exactly half of the photo
    on = world.service.search(_photo(), SearchOptions(k=5))
    world.service.settings = world.service.settings.model_copy(update={"closeup": False})
    off = world.service.search(_photo(), SearchOptions(k=5))
    assert [_ranking(g.products) for g in on.groups] == [_ranking(g.products) for g in off.groups]


@pytest.mark.parametrize("pooling", [False, True])
def test_mask_pooling_embeds_each_instance_under_its_mask(
    world: World, pooling: bool, tmp_path: Path
) -> None:
    """A box that spans red and blue, masked on the blue part: box pooling sees the crop's
    centre (red); mask pooling gets the crop-aligned mask and sees blue."""
    photo = Image.new("RGB", (200, 100), RED)
    photo.paste(BLUE, (150, 0, 200, 100))
    mask = np.zeros((100, 200), dtype=bool)
    mask[:, 160:190] = True
    instance = Instance(Box(20, 0, 200, 100), "couch", 0.9, mask)
    service = SearchService(
        segmenter=FakeSegmenter(),
        embedder=MaskPoolingFakeEmbedder(),
        live_index=world.service.live_index,
        session_factory=world.service.session_factory,
        settings=ModelSettings(crop_margin=0.1, mask_pooling=pooling),
    )
    (vector,) = service.embed_instances(photo, [instance])
    np.testing.assert_allclose(vector, QUERY_BLUE if pooling else QUERY_RED)
