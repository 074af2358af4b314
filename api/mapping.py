"""Domain results to wire schemas: the one place routes and the CLI turn a `SearchResult`,
a `ProductHit` or the wire's filter fields into what the API sends and takes."""

from __future__ import annotations

from urllib.parse import quote

import cv2
import numpy as np

from api.schemas import (
    FilterFields,
    ImageSize,
    IndexPublic,
    InstancePublic,
    MaskPublic,
    MaskRLE,
    ProductPublic,
    SearchResponse,
)
from search.filters import ProductFilter, parse_attributes
from search.masks import encode_rle, mask_to_polygons
from search.types import InstanceResult, ProductHit, SearchResult


def product_filter(fields: FilterFields) -> ProductFilter:
    """The core's filter for the wire's filter fields."""
    return ProductFilter(
        categories=frozenset(fields.category) if fields.category else None,
        min_price=fields.min_price,
        max_price=fields.max_price,
        in_stock=fields.in_stock,
        merchants=frozenset(fields.merchant) if fields.merchant else None,
        attributes=parse_attributes(fields.attribute),
    )


def to_response(result: SearchResult) -> SearchResponse:
    width, height = result.image_size
    return SearchResponse(
        index=IndexPublic(**vars(result.index)),
        image=ImageSize(width=width, height=height),
        instances=[instance_public(group) for group in result.groups],
        timings_ms=rounded(result.timings_ms),
    )


def rounded(timings: dict[str, float]) -> dict[str, float]:
    return {name: round(ms, 2) for name, ms in timings.items()}


def column_major(mask: np.ndarray) -> np.ndarray:
    """The same (h, w) mask laid out column-major, so COCO RLE reads it without a slow
    transposing copy (OpenCV transposes bytes several times faster than numpy)."""
    flat = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8)
    return np.asarray(cv2.transpose(flat)).view(np.bool_).T


def instance_public(group: InstanceResult) -> InstancePublic:
    inst = group.instance
    rle = encode_rle(column_major(inst.mask))
    return InstancePublic(
        label=inst.label,
        score=round(float(inst.score), 4),
        box=[round(v, 1) for v in inst.box.as_list()],
        mask=MaskPublic(rle=MaskRLE(**rle), polygons=mask_to_polygons(inst.mask)),
        products=[product_public(hit) for hit in group.products],
    )


def product_public(hit: ProductHit) -> ProductPublic:
    return ProductPublic(
        sku=hit.sku,
        title=hit.title,
        category=hit.category,
        score=round(hit.score, 4),
        similarity=round(hit.similarity, 4) if hit.similarity is not None else None,
        image_url=f"/v1/images/{hit.image_id}" if hit.image_id is not None else None,
        price=hit.price,
        currency=hit.currency,
        url=product_url(hit.sku),
    )


def product_url(sku: str) -> str:
    return f"/v1/products/{quote(sku, safe='')}"
