"""SearchService: the one place that composes segmenter, embedder, vector index and catalog."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from search import catalog
from search.config import ModelSettings
from search.crops import crop_instance
from search.live import LiveIndex
from search.models.base import Embedder, Segmenter
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


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    min_score: float | None = None


class SearchService:
    """Room photo in, one group of look-alike catalog products per detected instance out."""

    def __init__(
        self,
        *,
        segmenter: Segmenter,
        embedder: Embedder,
        live_index: LiveIndex,
        session_factory: Callable[[], Session],
        settings: ModelSettings,
    ) -> None:
        self.segmenter = segmenter
        self.embedder = embedder
        self.live_index = live_index
        self.session_factory = session_factory
        self.settings = settings

    def search(self, image: Image.Image, options: SearchOptions | None = None) -> SearchResult:
        options = options or SearchOptions()
        timer = Timer()
        loaded = self.live_index.get()
        with timer.stage("segment"):
            instances = self.segmenter.segment(image) or [whole_image_instance(image)]
        with timer.stage("embed"):
            vectors = self.embed_instances(image, instances)
        with timer.stage("search"):
            fetch = min(max(options.k * self.settings.oversample, options.k), loaded.meta.count)
            scores, ids = loaded.index.search(vectors, max(fetch, 1))
        with timer.stage("catalog"):
            groups = self._groups(instances, scores, ids, options)
        info = IndexInfo(
            version=loaded.meta.version,
            indexed_at=loaded.meta.indexed_at,
            vector_count=loaded.meta.count,
            embedder=loaded.meta.embedder,
        )
        return SearchResult(info, image.size, groups, timer.ms)

    def embed_instances(self, image: Image.Image, instances: Sequence[Instance]) -> np.ndarray:
        """One vector per instance, from its crop."""
        crops = [
            crop_instance(
                image, inst, margin=self.settings.crop_margin, mode=self.settings.crop_mode
            )
            for inst in instances
        ]
        return self.embedder.embed(crops)

    def _groups(
        self,
        instances: Sequence[Instance],
        scores: np.ndarray,
        ids: np.ndarray,
        options: SearchOptions,
    ) -> list[InstanceResult]:
        wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
        with self.session_factory() as session:
            rows = catalog.products_for_vector_ids(session=session, vector_ids=wanted)
            groups = []
            for inst, row_scores, row_ids in zip(instances, scores, ids, strict=True):
                hits = _best_per_product(row_scores, row_ids, rows, options)
                groups.append(InstanceResult(inst, hits))
        return groups


def _best_per_product(
    scores: np.ndarray,
    ids: np.ndarray,
    rows: dict[int, tuple[catalog.InstanceRow, catalog.ProductImage, catalog.Product]],
    options: SearchOptions,
) -> list[ProductHit]:
    """Each product once, with its best-scoring vector, best first, at most k."""
    hits: dict[str, ProductHit] = {}
    for score, vid in zip(scores.tolist(), ids.tolist(), strict=True):
        if vid < 0 or vid not in rows:
            continue
        if options.min_score is not None and score < options.min_score:
            break
        _, image, product = rows[vid]
        if product.sku in hits:
            continue
        hits[product.sku] = product_hit(product, image, score)
        if len(hits) >= options.k:
            break
    return list(hits.values())


def product_hit(product: catalog.Product, image: catalog.ProductImage, score: float) -> ProductHit:
    return ProductHit(
        sku=product.sku,
        title=product.title,
        category=product.category,
        score=float(score),
        image_id=image.id,
        price=float(product.price) if product.price is not None else None,
        currency=product.currency,
        extra=dict(product.extra or {}),
    )


def whole_image_instance(image: Image.Image) -> Instance:
    """The fallback group when nothing is detected: the whole photo as one instance."""
    width, height = image.size
    mask = np.ones((height, width), dtype=bool)
    return Instance(Box(0.0, 0.0, float(width), float(height)), WHOLE_IMAGE_LABEL, 1.0, mask)
