"""Domain results to wire schemas: the one place routes and the CLI turn a `SearchResult`,
a `SceneResult`, a `ProductHit` or the wire's filter fields into what the API sends and takes."""

from __future__ import annotations

from urllib.parse import quote

import cv2
import numpy as np

from api.schemas import (
    ColorPublic,
    FilterFields,
    ImageSize,
    IndexPublic,
    InstancePublic,
    MaskEncodings,
    MaskPublic,
    MaskRLE,
    ProductPublic,
    RelationPublic,
    SceneInstancePublic,
    SearchResponse,
    SegmentResponse,
)
from search.filters import ProductFilter, parse_attributes
from search.masks import encode_rle, mask_to_polygons
from search.scene import SceneInstance
from search.scene_service import SceneResult
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


def to_response(result: SearchResult, masks: MaskEncodings = "both") -> SearchResponse:
    """The `/v1/search` body, each mask encoded as `masks` asks (`SearchForm.masks`)."""
    width, height = result.image_size
    return SearchResponse(
        index=IndexPublic(**vars(result.index)),
        image=ImageSize(width=width, height=height),
        instances=[instance_public(group, masks) for group in result.groups],
        timings_ms=rounded(result.timings_ms),
    )


def rounded(timings: dict[str, float]) -> dict[str, float]:
    return {name: round(ms, 2) for name, ms in timings.items()}


def column_major(mask: np.ndarray) -> np.ndarray:
    """The same (h, w) mask laid out column-major, so COCO RLE reads it without a slow
    transposing copy (OpenCV transposes bytes several times faster than numpy)."""
    flat = np.ascontiguousarray(mask, dtype=np.bool_).view(np.uint8)
    return np.asarray(cv2.transpose(flat)).view(np.bool_).T


def mask_public(mask: np.ndarray, encodings: MaskEncodings = "both") -> MaskPublic:
    """A mask as the API sends it: COCO RLE and/or polygons for drawing."""
    rle = MaskRLE(**encode_rle(column_major(mask))) if encodings in ("both", "rle") else None
    polygons = mask_to_polygons(mask) if encodings in ("both", "polygons") else None
    return MaskPublic(rle=rle, polygons=polygons)


def instance_public(group: InstanceResult, masks: MaskEncodings = "both") -> InstancePublic:
    inst = group.instance
    return InstancePublic(
        label=inst.label,
        score=round(float(inst.score), 4),
        box=[round(v, 1) for v in inst.box.as_list()],
        mask=None if masks == "none" else mask_public(inst.mask, masks),
        products=[product_public(hit) for hit in group.products],
    )


def segment_response(result: SceneResult) -> SegmentResponse:
    """The `/v1/segment` body (and `roomlens segment --json`) of a photo's scene."""
    scene = result.scene
    return SegmentResponse(
        image=ImageSize(width=scene.width, height=scene.height),
        instances=[scene_instance_public(inst) for inst in scene.instances],
        counts=scene.counts,
        counts_by_color=scene.counts_by_color,
        description=scene.description,
        timings_ms=rounded(result.timings_ms),
    )


def scene_instance_public(inst: SceneInstance) -> SceneInstancePublic:
    return SceneInstancePublic(
        id=inst.id,
        label=inst.label,
        score=round(float(inst.score), 4),
        box=[round(v, 1) for v in inst.box.as_list()],
        mask=mask_public(inst.mask),
        area=round(inst.area, 6),
        colors=[ColorPublic(**color.as_dict()) for color in inst.colors],
        relations=[RelationPublic(predicate=r.predicate, object=r.object) for r in inst.relations],
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
