"""SearchService: the one place that composes segmenter, embedder, vector index and catalog."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from search import catalog, subsets
from search.config import ModelSettings
from search.crops import MIN_BOX_SIDE, crop_instance, crop_mask, croppable
from search.errors import InvalidInput
from search.filters import ProductFilter, fetch_schedule
from search.index import VectorIndex
from search.live import LiveIndex, LoadedIndex
from search.masks import box_mask, exclusive
from search.models.base import BoxMasker, Embedder, MaskPoolingEmbedder, Segmenter
from search.photo_cache import Perceived, PhotoCache
from search.segmentation import Segmentation
from search.subsets import Subset, category_subset
from search.timing import Timer
from search.types import (
    Box,
    IndexInfo,
    Instance,
    InstanceResult,
    ProductHit,
    SearchResult,
)

log = logging.getLogger(__name__)

WHOLE_IMAGE_LABEL = "image"
REGION_LABEL = "region"

CategoryPolicy = Callable[[Instance], frozenset[str] | None]
"""Per-instance category restriction: the categories an instance may match, or None for any."""


@dataclass(frozen=True)
class SearchOptions:
    """What to return: `k` products per instance, each scoring at least `min_score`, passing
    `filters`; with `region` (a box in image pixels) only that area is searched."""

    k: int = 10
    min_score: float | None = None
    filters: ProductFilter = field(default_factory=ProductFilter)
    region: Box | None = None
    text: str | None = None  # refine every instance's query by words ("in green")


TEXT_WEIGHT = 0.5  # how far a `text` refinement pulls an image query towards the words
CALIBRATION_POOL = 20  # an instance's best products whose similarities normalise its scores


@dataclass(frozen=True)
class TextResult:
    """Products that match a text query."""

    text: str
    index: IndexInfo
    products: list[ProductHit]
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class SimilarResult:
    """Products that look like a catalog product (itself excluded)."""

    sku: str
    index: IndexInfo
    products: list[ProductHit]
    query_vectors: int  # how many of the product's instance vectors were searched with
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class _Ranked:
    hits: list[ProductHit]
    needs_more: bool  # short of k, and a bigger fetch could still find more


class SearchService:
    """Room photo in, one group of look-alike catalog products per detected instance out.

    `category_policy`, when given, restricts each instance to the categories it returns
    (e.g. a detected couch to sofas and armchairs), on top of the caller's filters.
    """

    def __init__(
        self,
        *,
        segmenter: Segmenter,
        embedder: Embedder,
        live_index: LiveIndex,
        session_factory: Callable[[], Session],
        settings: ModelSettings,
        category_policy: CategoryPolicy | None = None,
        masker: BoxMasker | None = None,
        photo_cache: PhotoCache | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.embedder = embedder
        self.live_index = live_index
        self.session_factory = session_factory
        self.settings = settings
        self.category_policy = category_policy
        self.masker = masker  # masks a drawn region's object; None: the region is its mask
        self.photo_cache = photo_cache  # what searches saw, by photo hash (search.photo_cache)

    def search(
        self, image: Image.Image, options: SearchOptions | None = None, *, photo: str | None = None
    ) -> SearchResult:
        """Segment `image` (or take `options.region`), embed each instance, rank products.

        `photo`: the photo's content hash (`search.photo_cache.photo_key`); with a photo
        cache, a photo searched before with the same region and text is not segmented or
        embedded again (its timings then have no `segment` or `embed` stage)."""
        options = options or SearchOptions()
        timer = Timer()
        loaded = self.live_index.get()
        perceived = self._perceive(image, options, photo, timer)
        instances, subject, vectors = perceived.instances, perceived.subject, perceived.vectors
        filters = [self.filter_for(inst, options.filters) for inst in instances]
        weights = [confidence_weight(inst, self.settings.confidence_power) for inst in instances]
        if subject is not None:
            filters.append(filters[subject])  # the whole photo, searched as its subject
            weights.append(weights[subject])
        ranked = self._rank(loaded.index, vectors, filters, options, timer, weights)
        self._widen_empty(loaded.index, vectors, ranked, filters, options, timer, weights)
        if subject is not None:
            whole = ranked.pop()
            ranked[subject] = merge_best([ranked[subject], whole], options.k)
        groups = [InstanceResult(inst, hits) for inst, hits in zip(instances, ranked, strict=True)]
        return SearchResult(index_info(loaded), image.size, groups, timer.ms)

    def _perceive(
        self, image: Image.Image, options: SearchOptions, photo: str | None, timer: Timer
    ) -> Perceived:
        """The instances, close-up subject and query vectors: from the photo cache, or
        segmented and embedded (and then cached)."""
        cache = self.photo_cache if photo else None
        key = (photo or "", options.region, options.text)
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            return cached
        with timer.stage("segment"):
            instances = self.instances(image, options.region)
        subject = self.closeup_subject(image, instances) if options.region is None else None
        queries = instances if subject is None else [*instances, whole_image_instance(image)]
        with timer.stage("embed"):
            vectors = self.embed_instances(image, queries)
            if options.text is not None:
                vectors = self._refine(vectors, options.text)
        perceived = Perceived(instances, subject, vectors)
        if cache is not None:
            cache.put(key, perceived)
        return perceived

    def closeup_subject(self, image: Image.Image, instances: Sequence[Instance]) -> int | None:
        """The instance `image` is a close-up of, when the close-up rule is on and one is
        (`closeup_subject`); its group also gets the products of the whole photo."""
        if not self.settings.closeup:
            return None
        return closeup_subject(instances, image.size, self.settings.closeup_share)

    def instances(self, image: Image.Image, region: Box | None = None) -> list[Instance]:
        """The region as one instance, else the segmenter's instances (with exclusive masks,
        `search.masks.exclusive`), else the whole photo."""
        if region is not None:
            return [self._region(image, region)]
        return exclusive(self.segmenter.segment(image)) or [whole_image_instance(image)]

    def _region(self, image: Image.Image, region: Box) -> Instance:
        """A drawn region as one instance: its box, and the mask of the object inside it
        (the region itself where the masker finds nothing)."""
        instance = region_instance(image, region)
        (mask,) = self.segmentation.box_masks(image, [instance.box])
        return replace(instance, mask=mask)

    @property
    def segmentation(self) -> Segmentation:
        """The segmenter and box masker alone (`search.segmentation`)."""
        return Segmentation(self.segmenter, self.masker)

    def segment(
        self, image: Image.Image, boxes: Sequence[Box] = (), min_score: float = 0.0
    ) -> list[Instance]:
        """The photo's instances for its scene, with exclusive masks: the segmenter's scoring
        at least `min_score`, or exactly one per box prompt, in order, each labelled as the
        detection it overlaps best or `object` (`search.segmentation.Segmentation.segment`).
        Raises `InvalidBox` for a malformed box or one outside the photo."""
        return self.segmentation.segment(image, boxes, min_score)

    def filter_for(self, instance: Instance, base: ProductFilter) -> ProductFilter:
        """`base` combined with the category policy's choice for this instance."""
        if self.category_policy is None:
            return base
        return base.restricted_to(self.category_policy(instance))

    def embed_instances(self, image: Image.Image, instances: Sequence[Instance]) -> np.ndarray:
        """One vector per instance, from its crop (pooled under its mask with
        `mask_pooling`, where the embedder can)."""
        margin = self.settings.crop_margin
        crops = [
            crop_instance(image, inst, margin=margin, mode=self.settings.crop_mode)
            for inst in instances
        ]
        if self.settings.mask_pooling and isinstance(self.embedder, MaskPoolingEmbedder):
            masks = [crop_mask(image, inst, margin=margin) for inst in instances]
            return self.embedder.embed_weighted(crops, masks)
        return self.embedder.embed(crops)

    def similar(self, sku: str, options: SearchOptions | None = None) -> SimilarResult:
        """Products that look like `sku`, searched with its stored instance vectors.

        Raises `ProductNotFound` for an unknown sku; a product without indexed vectors
        gives no products. Each product appears once, with its best score over the vectors.
        """
        options = options or SearchOptions()
        timer = Timer()
        loaded = self.live_index.get()
        with timer.stage("vectors"):
            vectors = self._product_vectors(sku, loaded.index)
        filters = replace(options.filters, exclude_skus=options.filters.exclude_skus | {sku})
        ranked = self._rank(loaded.index, vectors, [filters] * len(vectors), options, timer)
        merged = merge_best(ranked, options.k)
        return SimilarResult(sku, index_info(loaded), merged, len(vectors), timer.ms)

    def _refine(self, vectors: np.ndarray, text: str) -> np.ndarray:
        """Image query vectors moved towards the text's vector, renormalised."""
        words = self._embed_text(text)
        mixed = vectors + TEXT_WEIGHT * words
        return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)

    def _embed_text(self, text: str) -> np.ndarray:
        """The (1, dim) vector of `text`; `InvalidInput` without a text tower or text."""
        embed_text = getattr(self.embedder, "embed_text", None)
        if embed_text is None:
            raise InvalidInput(
                f"the embedder {self.embedder.name} has no text tower: text search needs a "
                "CLIP embedder (ROOMLENS_MODELS__PROFILE=clip)"
            )
        if not text.strip():
            raise InvalidInput("the text is empty")
        return np.asarray(embed_text([text]), dtype=np.float32)

    def search_text(self, text: str, options: SearchOptions | None = None) -> TextResult:
        """Products that match a text description, through the embedder's text tower.

        Raises `InvalidInput` when the embedder has none (the offline EfficientNet models) or
        the text is blank.
        """
        options = options or SearchOptions()
        timer = Timer()
        loaded = self.live_index.get()
        with timer.stage("embed"):
            vectors = self._embed_text(text)
        ranked = self._rank(loaded.index, vectors, [options.filters], options, timer)
        return TextResult(text, index_info(loaded), ranked[0], timer.ms)

    def _widen_empty(
        self,
        index: VectorIndex,
        vectors: np.ndarray,
        ranked: list[list[ProductHit]],
        filters: Sequence[ProductFilter],
        options: SearchOptions,
        timer: Timer,
        weights: Sequence[float],
    ) -> None:
        """An instance whose compatible categories hold nothing searches every category."""
        empty = [i for i, hits in enumerate(ranked) if not hits and filters[i] != options.filters]
        if not empty:
            return
        wider = self._rank(
            index,
            vectors[empty],
            [options.filters] * len(empty),
            options,
            timer,
            [weights[i] for i in empty],
        )
        for i, hits in zip(empty, wider, strict=True):
            ranked[i] = hits

    def _targets(
        self,
        session: Session,
        index: VectorIndex,
        live: Sequence[int],
        filters: Sequence[ProductFilter],
        timer: Timer,
    ) -> list[tuple[VectorIndex | Subset, list[int]]]:
        """What each query searches: the served vectors of its categories when they are few
        (`search.subsets`), else the whole index; queries grouped by their categories."""
        out: list[tuple[VectorIndex | Subset, list[int]]] = []
        for categories, group in _searched_by_categories(live, filters).items():
            subset = None
            if categories:
                with timer.stage("catalog"):
                    subset = category_subset(
                        session,
                        index,
                        categories,
                        embedder=self.embedder.name,
                        limit=subsets.SUBSET_MAX,
                    )
            out.append((index if subset is None else subset, group))
        return out

    def _page(
        self,
        session: Session,
        searched: VectorIndex | Subset,
        vectors: np.ndarray,
        pending: list[int],
        filters: Sequence[ProductFilter],
        pool: int,
        rows: catalog.HitRows,
        hits: list[list[ProductHit]],
        timer: Timer,
    ) -> None:
        """Fill `hits[i]` for the `pending` queries: fetch more from `searched`, round after
        round, while their filters starve."""
        for fetch in fetch_schedule(pool, self.settings.oversample, searched.ntotal):
            if not pending:
                break
            with timer.stage("search"):
                scores, ids = searched.search(vectors[pending], fetch)
            with timer.stage("catalog"):
                new = {int(i) for i in ids.ravel() if i >= 0 and int(i) not in rows}
                rows.update(catalog.hit_rows(session=session, vector_ids=sorted(new)))
                still = []
                for row, i in enumerate(pending):
                    ranked = rank_products(scores[row], ids[row], rows, filters[i], pool)
                    hits[i] = ranked.hits
                    if ranked.needs_more:
                        still.append(i)
            pending = still

    def _product_vectors(self, sku: str, index: VectorIndex) -> np.ndarray:
        with self.session_factory() as session:
            product = catalog.get_product(session=session, sku=sku)
            rows = catalog.product_vector_rows(
                session=session, product_id=product.id, embedder=self.embedder.name
            )
        return stored_vectors(index, rows, self.embedder.dim)

    def _rank(
        self,
        index: VectorIndex,
        vectors: np.ndarray,
        filters: Sequence[ProductFilter],
        options: SearchOptions,
        timer: Timer,
        weights: Sequence[float] | None = None,
    ) -> list[list[ProductHit]]:
        """Top products per query vector, fetching more from the index while filters starve;
        each query's calibrated scores scaled by its weight (`confidence_weight`; 1 if None)."""
        hits: list[list[ProductHit]] = [[] for _ in range(len(vectors))]
        temperature = self.settings.score_temperature
        pool = max(options.k, CALIBRATION_POOL) if temperature > 0 else options.k
        rows: catalog.HitRows = {}
        # a filter nothing can pass would page through the whole index to find nothing
        live = [i for i in range(len(vectors)) if not filters[i].matches_nothing]
        with self.session_factory() as session:
            for searched, group in self._targets(session, index, live, filters, timer):
                self._page(session, searched, vectors, group, filters, pool, rows, hits, timer)
        weights = [1.0] * len(hits) if weights is None else weights
        return [finish(h, temperature, options, w) for h, w in zip(hits, weights, strict=True)]


def _searched_by_categories(
    live: Sequence[int], filters: Sequence[ProductFilter]
) -> dict[frozenset[str] | None, list[int]]:
    groups: dict[frozenset[str] | None, list[int]] = {}
    for i in live:
        groups.setdefault(filters[i].categories, []).append(i)
    return groups


def rank_products(
    scores: np.ndarray, ids: np.ndarray, rows: catalog.HitRows, filters: ProductFilter, k: int
) -> _Ranked:
    """Each product once, with its best-scoring vector, best first, at most k, filtered."""
    hits: dict[str, ProductHit] = {}
    for score, vid in zip(scores.tolist(), ids.tolist(), strict=True):
        if vid < 0:
            return _Ranked(list(hits.values()), needs_more=False)  # the index ran out
        row = rows.get(vid)
        if row is None:
            continue
        image_id, product = row
        if product.sku in hits or not filters.matches(product):
            continue
        hits[product.sku] = product_hit(product, image_id, score)
        if len(hits) >= k:
            return _Ranked(list(hits.values()), needs_more=False)
    return _Ranked(list(hits.values()), needs_more=True)


def confidence_weight(instance: Instance, power: float) -> float:
    """How much an instance's products count against the other instances' in one photo: its
    detector confidence raised to `power`, so that a product's score reads as the chance
    that the object is really there times the chance it is this product. NanoDet's scores
    are over-confident low down: on the 100 COCO photos of docs/MASKS.md the chance that a
    furniture detection is right is close to score² (the maximum-likelihood power over its
    detections from 0.05 up is 2.0; docs/QUALITY.md, round 4). A drawn region and the
    whole-photo fallback have confidence 1; the whole photo searched for a close-up's subject
    takes the subject's weight (`SearchService.search`). `power` 0 weighs every instance
    alike."""
    if power <= 0:
        return 1.0
    return float(min(max(instance.score, 0.0), 1.0) ** power)


def calibrate(hits: Sequence[ProductHit], temperature: float) -> list[ProductHit]:
    """Scores made comparable between instances: each product's share of its instance's match
    probability, a softmax of the similarities (at `temperature`) over the instance's best
    `CALIBRATION_POOL` products. Raw cosines are not comparable between crops (a plain sofa
    matches everything at 0.8, a lamp on a busy wall nothing above 0.5); this is what ranks
    products across a photo's instances. Measured on the dev rooms: docs/QUALITY.md.
    `temperature` 0 keeps the cosine as the score."""
    if temperature <= 0 or not hits:
        return [replace(h, similarity=h.score) for h in hits]
    sims = np.array([h.score for h in hits], dtype=np.float64)
    weights = np.exp((sims - sims.max()) / temperature)
    total = weights[:CALIBRATION_POOL].sum()
    return [
        replace(h, score=float(w / total), similarity=h.score)
        for h, w in zip(hits, weights, strict=True)
    ]


def finish(
    hits: Sequence[ProductHit], temperature: float, options: SearchOptions, weight: float = 1.0
) -> list[ProductHit]:
    """Calibrated, scaled by the query's `weight` (calibrated scores only), cut at
    `options.min_score` and at `options.k`."""
    scored = calibrate(hits, temperature)
    if temperature > 0 and weight != 1.0:
        scored = [replace(h, score=h.score * weight) for h in scored]
    if options.min_score is not None:
        scored = [h for h in scored if h.score >= options.min_score]
    return scored[: options.k]


def closeup_subject(
    instances: Sequence[Instance], size: tuple[int, int], share: float
) -> int | None:
    """The index of the instance a photo is a close-up of: the largest, when its box covers
    more than `share` of the photo (one object fills most of it). None for a photo of several
    things (a room: on the 105 dev rooms the largest box covers a median 15% of the photo and
    more than half in 2 of them) and for the whole-photo fallback, which is the whole photo
    already. `SearchService.search` also searches such a photo whole, as that object, so a
    box that cuts the object or misses part of it loses nothing (docs/QUALITY.md, "Round 2:
    close-ups")."""
    width, height = size
    areas = [inst.box.clip(width, height).area for inst in instances]
    if not areas:
        return None
    best = max(range(len(areas)), key=areas.__getitem__)
    if instances[best].label == WHOLE_IMAGE_LABEL or areas[best] <= share * width * height:
        return None
    return best


def merge_best(lists: Sequence[Sequence[ProductHit]], k: int) -> list[ProductHit]:
    """Hits of several queries merged: each product once with its best score, best first."""
    best: dict[str, ProductHit] = {}
    for hits in lists:
        for hit in hits:
            if hit.sku not in best or hit.score > best[hit.sku].score:
                best[hit.sku] = hit
    return sorted(best.values(), key=lambda h: -h.score)[:k]


def stored_vectors(
    index: VectorIndex, rows: Sequence[tuple[int | None, bytes | None]], dim: int
) -> np.ndarray:
    """The vectors of (vector id, stored bytes) rows, as the live index holds them; when it
    holds none of them (a product newer than the served version), the bytes the database
    keeps. Rows with neither are skipped."""
    served = index.present([vid for vid, _ in rows if vid is not None])
    if served.size:
        return index.reconstruct(served)
    stored = [
        np.frombuffer(raw, dtype=np.float32) for _, raw in rows if raw and len(raw) == dim * 4
    ]
    if not stored:
        return np.empty((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.stack(stored), dtype=np.float32)


def product_hit(
    product: catalog.HitProduct | catalog.Product, image_id: int | None, score: float
) -> ProductHit:
    return ProductHit(
        sku=product.sku,
        title=product.title,
        category=product.category,
        score=float(score),
        image_id=image_id,
        price=float(product.price) if product.price is not None else None,
        currency=product.currency,
        extra=dict(product.extra or {}),
    )


def index_info(loaded: LoadedIndex) -> IndexInfo:
    meta = loaded.meta
    return IndexInfo(
        version=meta.version,
        indexed_at=meta.indexed_at,
        vector_count=meta.count,
        embedder=meta.embedder,
    )


def whole_image_instance(image: Image.Image) -> Instance:
    """The fallback group when nothing is detected: the whole photo as one instance."""
    width, height = image.size
    mask = np.ones((height, width), dtype=bool)
    return Instance(Box(0.0, 0.0, float(width), float(height)), WHOLE_IMAGE_LABEL, 1.0, mask)


def region_instance(image: Image.Image, region: Box) -> Instance:
    """A box the shopper drew, clipped to the photo, as one instance (box and mask = region).

    Raises `InvalidInput` when less than MIN_BOX_SIDE px each way of it lies inside the photo
    (or the photo's whole side, for a thinner photo).
    """
    width, height = image.size
    box = region.clip(width, height)
    if not croppable(region, width, height):
        side = f"{MIN_BOX_SIDE:g}"
        raise InvalidInput(
            f"region {region.as_list()} covers less than {side}x{side} pixels "
            f"of the {width}x{height} photo"
        )
    return Instance(box, REGION_LABEL, 1.0, box_mask(box, width, height))
